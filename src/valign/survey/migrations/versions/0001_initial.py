"""The survey's first schema: invitations, respondents, answers, proposals, page events, settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("synthetic", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_invitations_token_hash"),
    )
    op.create_table(
        "respondents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False),
        sa.Column("resume_hash", sa.String(64), nullable=False),
        sa.Column("instrument_id", sa.String(100), nullable=False),
        sa.Column("instrument_fingerprint", sa.String(16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("shown_proposals", sa.Text(), nullable=False),
        sa.Column("invitation_id", sa.Integer(), sa.ForeignKey("invitations.id", name="fk_respondents_invitation"), nullable=True),
        sa.Column("synthetic", sa.Boolean(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("public_id", name="uq_respondents_public_id"),
        sa.UniqueConstraint("resume_hash", name="uq_respondents_resume_hash"),
        sa.UniqueConstraint("invitation_id", name="uq_respondents_invitation_id"),
    )
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("respondent_id", sa.Integer(), sa.ForeignKey("respondents.id", name="fk_answers_respondent", ondelete="CASCADE"), nullable=False),
        sa.Column("item_id", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("choice", sa.String(100), nullable=False),
        sa.Column("strength", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("answered_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("respondent_id", "item_id", name="uq_answers_respondent_item"),
    )
    op.create_index("ix_answers_respondent_id", "answers", ["respondent_id"])
    op.create_table(
        "proposals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("respondent_id", sa.Integer(), sa.ForeignKey("respondents.id", name="fk_proposals_respondent", ondelete="SET NULL"), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("moderated_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("respondent_id", name="uq_proposals_respondent_id"),
    )
    op.create_index("ix_proposals_status", "proposals", ["status"])
    op.create_table(
        "page_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("respondent_id", sa.Integer(), sa.ForeignKey("respondents.id", name="fk_page_events_respondent", ondelete="CASCADE"), nullable=False),
        sa.Column("page", sa.String(50), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_page_events_respondent_id", "page_events", ["respondent_id"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(50), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("settings", "page_events", "proposals", "answers", "respondents", "invitations"):
        op.drop_table(table)
