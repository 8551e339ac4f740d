"""The feedback store's tables: served_completions and feedback.

Revision ID: feedback_0001
Revises:
Create Date: 2026-12-01

Databases from before the feedback store had its own chain already hold these tables:
the survey chain's revision 0002 made them (in a survey database, and in every
feedback database, which then carried the whole survey schema too). Their schema is
exactly the one below, so this revision adopts them as they are, rows and all, and
creates only what is missing; from then on this chain alone changes them.
"""

import sqlalchemy as sa
from alembic import op

revision = "feedback_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "served_completions" not in existing:
        op.create_table(
            "served_completions",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("model", sa.String(300), nullable=False),
            sa.Column("messages", sa.Text(), nullable=False),
            sa.Column("completion", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    if "feedback" not in existing:
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
