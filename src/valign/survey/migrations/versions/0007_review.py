"""Expert review of key-case answer pairs (`valign.review`): the pairs, the reviewers, their grades.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

``review_pairs`` holds each case's prompt and the two answers (X, the one scored — the
tuned model's — and Y), with the models' names, which reviewers never see.
``reviewers`` holds a pseudonymous ``public_id`` per invitation, the sha-256 of the
invitation token (never the token) and the seed of the reviewer's random case order
and answer sides. ``review_grades`` holds one grade per (reviewer, pair): the level as
shown (``A>>B`` … ``B>>A``), which answer was shown as A (``x_first``), the score for
X that follows (−2 … +2), refusals marked for X and Y, and a note.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_pairs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.String(200), nullable=False, unique=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("answer_x", sa.Text(), nullable=False),
        sa.Column("answer_y", sa.Text(), nullable=False),
        sa.Column("model_x", sa.String(300), nullable=False),
        sa.Column("model_y", sa.String(300), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "review_grades",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("reviewers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("review_pairs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("x_first", sa.Boolean(), nullable=False),
        sa.Column("score_x", sa.Integer(), nullable=False),
        sa.Column("refused_x", sa.Boolean(), nullable=False),
        sa.Column("refused_y", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("graded_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("reviewer_id", "pair_id", name="uq_review_grades_reviewer_pair"),
    )
    op.create_index("ix_review_grades_pair_id", "review_grades", ["pair_id"])


def downgrade() -> None:
    op.drop_index("ix_review_grades_pair_id", table_name="review_grades")
    op.drop_table("review_grades")
    op.drop_table("reviewers")
    op.drop_table("review_pairs")
