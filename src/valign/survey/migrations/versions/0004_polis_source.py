"""Where a respondent or a statement came from: ``source`` and ``external_id``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``source`` is ``live`` for people who answered this survey (every existing row) and
``polis:<conversation>`` for participants and comments brought in by
``valign survey import-polis``; ``external_id`` is their id in that source (a Polis
participant or comment id), unique within it, so importing a conversation again
updates rows instead of adding them. Live pages only ever show live statements.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("respondents", "proposals")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("source", sa.String(100), nullable=False, server_default="live"))
        op.add_column(table, sa.Column("external_id", sa.String(100), nullable=True))
        op.create_index(f"uq_{table}_source_external_id", table, ["source", "external_id"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"uq_{table}_source_external_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("external_id")
            batch.drop_column("source")
