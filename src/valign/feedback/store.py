"""The feedback store: served answers, ratings, corrections, and the rows they become."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from valign.control_tokens import neutralise_control_tokens
from valign.errors import ValignError
from valign.feedback.tables import FEEDBACK_TABLES, FEEDBACK_VERSION_TABLE, Feedback, ServedCompletion
from valign.types import Conversation, Row
from valign.web.database import SqlDatabase, database_url, has_tables, make_engine, migration_revision, run_migrations, utcnow

__all__ = [
    "FeedbackStore",
    "FeedbackError",
    "kto_rows_from_feedback",
    "sft_rows_from_feedback",
    "feedback_digest",
    "migrate_feedback",
    "feedback_revision",
    "MAX_CORRECTION_CHARS",
]

MAX_CORRECTION_CHARS = 8000
RATINGS = ("up", "down")


class FeedbackError(ValignError):
    """Feedback that cannot be stored: an unknown answer id, a bad rating, a too-long correction."""


def migrate_feedback(engine: Engine, revision: str = "head") -> None:
    """Bring the feedback tables to ``revision`` with their own Alembic chain; safe on every open.

    Touches nothing of the survey's, whose chain may share the database.
    """
    run_migrations(engine, str(resources.files("valign.feedback") / "migrations"), revision=revision, what="feedback database")


def feedback_revision(engine: Engine) -> str | None:
    """The feedback chain's revision in this database (None before its first migration).

    Example:
        >>> engine = make_engine("sqlite:///:memory:")
        >>> feedback_revision(engine)
        >>> migrate_feedback(engine); feedback_revision(engine)
        'feedback_0001'
    """
    return migration_revision(engine, FEEDBACK_VERSION_TABLE)


class FeedbackStore:
    """Records served answers and the feedback on them (migrating the database on open)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """``create=False`` only reads: a database without the feedback tables is an error."""
        self.url = database_url(url)
        if not create and self.url.startswith("sqlite:///") and not Path(self.url.removeprefix("sqlite:///")).exists():
            raise FeedbackError(f"the feedback database {self.url} does not exist; serve a model with --feedback-db {self.url} first.")
        engine = make_engine(self.url)
        if create:
            migrate_feedback(engine)
        # A reader does not migrate. The tables' schema has not changed since the survey
        # chain made them (revision 0002), so a database from before the feedback chain
        # reads as it is; a later schema change must check `feedback_revision` here.
        elif not has_tables(engine, *FEEDBACK_TABLES):
            raise FeedbackError(f"{self.url} holds no feedback tables; serve a model with --feedback-db {self.url} first.")
        self.db = SqlDatabase(engine)

    def record(self, completion_id: str, model: str, messages: Conversation, text: str) -> None:
        """Keep an answer so feedback can refer to it."""
        with self.db.write() as s:
            s.merge(ServedCompletion(id=completion_id, model=model, messages=json.dumps(messages, ensure_ascii=False), completion=text))

    def rate(self, completion_id: str, rating: str, correction: str | None = None) -> dict[str, Any]:
        """Store (or replace) the feedback on one answer; errors say what to fix."""
        if rating not in RATINGS:
            raise FeedbackError(f"rating must be 'up' or 'down', not {rating!r}.")
        correction = (correction or "").strip() or None
        if correction is not None and len(correction) > MAX_CORRECTION_CHARS:
            raise FeedbackError(f"the correction is {len(correction)} characters; shorten it to at most {MAX_CORRECTION_CHARS}.")
        with self.db.write() as s:
            if s.get(ServedCompletion, completion_id) is None:
                raise FeedbackError(f"no answer with id '{completion_id}' was served here; send the 'id' of a chat completion from this server.")
            row = s.scalar(select(Feedback).where(Feedback.completion_id == completion_id))
            if row is None:
                row = Feedback(completion_id=completion_id, rating=rating, correction=correction)
                s.add(row)
            else:
                row.rating, row.correction, row.updated_at = rating, correction, utcnow()
        return {"completion_id": completion_id, "rating": rating, "correction": correction}

    def counts(self) -> dict[str, int]:
        """Answers served, and feedback by rating."""
        with self.db.read() as s:
            served = s.scalar(select(func.count(ServedCompletion.id))) or 0
            by = dict(s.execute(select(Feedback.rating, func.count(Feedback.id)).group_by(Feedback.rating)).all())
            corrections = s.scalar(select(func.count(Feedback.id)).where(Feedback.correction.is_not(None))) or 0
        return {"served": served, "up": by.get("up", 0), "down": by.get("down", 0), "corrections": corrections}

    def rows(self) -> list[dict[str, Any]]:
        """Every feedback with its answer and conversation, oldest first."""
        with self.db.read() as s:
            q = select(Feedback, ServedCompletion).join(ServedCompletion, Feedback.completion_id == ServedCompletion.id).order_by(Feedback.id)
            return [
                {"completion_id": c.id, "model": c.model, "messages": json.loads(c.messages), "completion": c.completion,
                 "rating": f.rating, "correction": f.correction}
                for f, c in s.execute(q).all()
            ]


def _training_rows(url: str) -> list[dict[str, Any]]:
    """The store's rows with every text a trainer will render made plain text: a user's
    message or correction that spells ``<|im_start|>system`` cannot forge a turn of the
    training conversation (`valign.control_tokens`). The store itself keeps what was written."""
    rows = FeedbackStore(url, create=False).rows()
    for r in rows:
        r["messages"] = [{**m, "content": neutralise_control_tokens(m["content"])} for m in r["messages"]]
        r["completion"] = neutralise_control_tokens(r["completion"])
        r["correction"] = neutralise_control_tokens(r["correction"]) if r["correction"] else r["correction"]
    return rows


def kto_rows_from_feedback(url: str) -> list[Row]:
    """``prompt/completion/label`` rows: 👍 desirable, 👎 undesirable, corrections desirable."""
    out: list[Row] = []
    for r in _training_rows(url):
        prompt = r["messages"]
        out.append({"id": f"fb-{r['completion_id']}", "prompt": prompt, "completion": [{"role": "assistant", "content": r["completion"]}],
                    "label": r["rating"] == "up"})
        if r["correction"]:
            out.append({"id": f"fb-{r['completion_id']}:correction", "prompt": prompt,
                        "completion": [{"role": "assistant", "content": r["correction"]}], "label": True})
    return out


def sft_rows_from_feedback(url: str) -> list[Row]:
    """``prompt/completion`` rows from the corrections people wrote."""
    return [
        {"id": f"fb-{r['completion_id']}:correction", "prompt": r["messages"], "completion": [{"role": "assistant", "content": r["correction"]}]}
        for r in _training_rows(url)
        if r["correction"]
    ]


def feedback_digest(url: str) -> dict[str, Any]:
    """A hash of every rating and correction (answers nobody rated do not count): what a
    KTO round's fingerprint uses, so only new or changed feedback makes a new round."""
    rows = FeedbackStore(url, create=False).rows()
    body = [(r["completion_id"], r["rating"], r["correction"]) for r in rows]
    return {"feedback": len(rows), "sha256": hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()}
