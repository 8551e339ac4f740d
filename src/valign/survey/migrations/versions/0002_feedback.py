"""Once: the served-model feedback tables. Now an empty marker revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

This revision used to create ``served_completions`` and ``feedback``. Those tables
belong to the feedback store now (`valign.feedback`), which migrates them with its own
chain and version table (``feedback_alembic_version``); its first revision adopts the
tables this one made in existing databases.

It stays, empty, because databases are stamped ``0002`` (survey and feedback databases
alike) and Alembic must find every revision a database is at. It must not drop the
tables either, on upgrade or downgrade: in a database the survey shares with the
feedback store they hold people's feedback, which the survey chain does not own.
"""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
