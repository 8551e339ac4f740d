"""Quotas: a respondent can be screened out, and answers are found by (question, answer).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``respondents.screened_out`` marks a respondent whose demographic answers put them into
a full quota cell (they saw the closing page; they are not ``completed``), and
``respondents.quota_cell`` names that cell (e.g. ``age_group=65+ & sex=female``). The
index on ``answers (item_id, choice)`` lets the count of completed responses in a cell,
made when a respondent submits their demographics, read only that cell's answers.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A server default fills the column for respondents who answered before quotas existed.
    op.add_column("respondents", sa.Column("screened_out", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("respondents", sa.Column("quota_cell", sa.Text(), nullable=True))
    op.create_index("ix_answers_item_choice", "answers", ["item_id", "choice"])


def downgrade() -> None:
    op.drop_index("ix_answers_item_choice", table_name="answers")
    with op.batch_alter_table("respondents") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("quota_cell")
        batch.drop_column("screened_out")
