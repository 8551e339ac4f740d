"""The feedback store's tables: the answers a served model gave and people's verdicts on them.

Created only by the feedback store's own Alembic chain (``migrations/``, version table
``feedback_alembic_version``); see `valign.feedback.store.migrate_feedback`. They can
share a database with the survey's tables or have one of their own.

Example:
    >>> sorted(FeedbackBase.metadata.tables)
    ['feedback', 'served_completions']
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from valign.web.database import UTCDateTime, utcnow

__all__ = ["FeedbackBase", "ServedCompletion", "Feedback", "FEEDBACK_TABLES", "FEEDBACK_VERSION_TABLE"]

FEEDBACK_TABLES = ("served_completions", "feedback")
FEEDBACK_VERSION_TABLE = "feedback_alembic_version"  # the survey's chain keeps Alembic's default, alembic_version


class FeedbackBase(DeclarativeBase):
    """Declarative base of the feedback store's tables (apart from the survey's `Base`)."""


class ServedCompletion(FeedbackBase):
    """An answer a served model gave: the chat completion's ``id``, the model, the conversation."""

    __tablename__ = "served_completions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(300))
    messages: Mapped[str] = mapped_column(Text)  # JSON: the conversation the answer replied to
    completion: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Feedback(FeedbackBase):
    """Someone's verdict on one served answer: at most one per answer; a new one replaces it."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("served_completions.id", ondelete="CASCADE"), unique=True)
    rating: Mapped[str] = mapped_column(String(4))  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
