"""The erasure log: one row per withdrawal, admin erasure or retention purge, without the data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("respondents", sa.Integer(), nullable=False),
        sa.Column("row_counts", sa.Text(), nullable=False),
    )
    op.create_index("ix_erasure_log_reason", "erasure_log", ["reason"])


def downgrade() -> None:
    op.drop_index("ix_erasure_log_reason", table_name="erasure_log")
    op.drop_table("erasure_log")
