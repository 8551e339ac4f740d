"""Feedback on a served model's answers: served_completions and feedback.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("messages", sa.Text(), nullable=False),
        sa.Column("completion", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("completion_id", sa.String(64), sa.ForeignKey("served_completions.id", name="fk_feedback_completion", ondelete="CASCADE"), nullable=False),
        sa.Column("rating", sa.String(4), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("completion_id", name="uq_feedback_completion_id"),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("served_completions")
