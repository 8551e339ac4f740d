"""The language a response was given in, and the language an invitation opens in.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``respondents.language`` is a language tag of the instrument (``en``, ``de``…); rows
from before this revision stay null, which exports read as the instrument's base
language, the only one there was. ``invitations.language`` is set by
``valign survey invite --lang`` (or the admin API's ``language``); null means the
respondent chooses.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("respondents", "invitations")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("language", sa.String(35), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("language")
