"""Feedback on a served model's answers — 👍/👎 and corrections — for continual learning.

Seed 001's last step: people use the aligned model, say where it went wrong, and the
next round learns from that. ``valign serve MODEL --feedback-db URL`` records every
answer it gives (its ``id``, the conversation, the text) and accepts feedback on it at
``POST /v1/feedback`` (and from its chat page): a rating, ``up`` or ``down``, and
optionally a correction — the answer the person would have wanted. One feedback per
answer: sending again replaces it.

The tables live beside the survey's (same SQLAlchemy models, same Alembic
migrations), so one database can hold both, or each its own. A `kto` stage reads them
with ``kto.rows: feedback:<database URL>`` (`kto_rows_from_feedback`): 👍 answers are
desirable, 👎 answers undesirable, and a correction is a desirable answer to the same
conversation. `sft_rows_from_feedback` turns corrections into SFT rows. Rows hold the
conversation and the answers only — no user identity is ever stored.

Example:
    >>> store = FeedbackStore("sqlite:///feedback.db")
    >>> store.record("chatcmpl-1", "run:runs/pv/07-kto", [{"role": "user", "content": "Hi"}], "Hello!")
    >>> store.rate("chatcmpl-1", "down", correction="Hi! How can I help?")["rating"]
    'down'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from valign.errors import ValignError
from valign.survey.db import Database, Feedback, ServedCompletion, make_engine, migrate, utcnow
from valign.types import Conversation, Row

__all__ = ["FeedbackStore", "FeedbackError", "kto_rows_from_feedback", "sft_rows_from_feedback", "feedback_digest", "MAX_CORRECTION_CHARS"]

MAX_CORRECTION_CHARS = 8000
RATINGS = ("up", "down")


class FeedbackError(ValignError):
    """Feedback that cannot be stored: an unknown answer id, a bad rating, a too-long correction."""


class FeedbackStore:
    """Records served answers and the feedback on them (migrating the database on open)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """``create=False`` only reads: a database without the feedback tables is an error."""
        from valign.survey.db import resolve_db_url, schema_revision

        self.url = resolve_db_url(url)
        if not create and self.url.startswith("sqlite:///") and not Path(self.url.removeprefix("sqlite:///")).exists():
            raise FeedbackError(f"the feedback database {self.url} does not exist; serve a model with --feedback-db {self.url} first.")
        engine = make_engine(self.url)
        if create:
            migrate(engine)
        elif (schema_revision(engine) or "0000") < "0002":
            raise FeedbackError(f"{self.url} holds no feedback tables; serve a model with --feedback-db {self.url} (or run `valign survey migrate`).")
        self.db = Database(engine)

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


def kto_rows_from_feedback(url: str) -> list[Row]:
    """``prompt/completion/label`` rows: 👍 desirable, 👎 undesirable, corrections desirable."""
    out: list[Row] = []
    for r in FeedbackStore(url, create=False).rows():
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
        for r in FeedbackStore(url, create=False).rows()
        if r["correction"]
    ]


def feedback_digest(url: str) -> dict[str, Any]:
    """A hash of every rating and correction (answers nobody rated do not count): what a
    KTO round's fingerprint uses, so only new or changed feedback makes a new round."""
    import hashlib

    rows = FeedbackStore(url, create=False).rows()
    body = [(r["completion_id"], r["rating"], r["correction"]) for r in rows]
    return {"feedback": len(rows), "sha256": hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()}
