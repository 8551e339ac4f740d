"""Feedback on a served model's answers — 👍/👎 and corrections — for continual learning.

Seed 001's last step: people use the aligned model, say where it went wrong, and the
next round learns from that. ``valign serve MODEL --feedback-db URL`` records every
answer it gives (its ``id``, the conversation, the text) and accepts feedback on it at
``POST /v1/feedback`` (and from its chat page): a rating, ``up`` or ``down``, and
optionally a correction — the answer the person would have wanted. One feedback per
answer: sending again replaces it.

The store owns its tables (`valign.feedback.tables`) and their migrations (its own
Alembic chain in ``migrations/``, version table ``feedback_alembic_version``), so a
feedback database needs nothing of the survey's; one database can still hold both,
or each its own. A `kto` stage reads them with ``kto.rows: feedback:<database URL>``
(`kto_rows_from_feedback`): 👍 answers are desirable, 👎 answers undesirable, and a
correction is a desirable answer to the same conversation. `sft_rows_from_feedback` turns corrections into SFT rows. Rows hold the
conversation and the answers only — no user identity is ever stored.

Example:
    >>> store = FeedbackStore("sqlite:///:memory:")
    >>> store.record("chatcmpl-1", "run:runs/pv/07-kto", [{"role": "user", "content": "Hi"}], "Hello!")
    >>> store.rate("chatcmpl-1", "down", correction="Hi! How can I help?")["rating"]
    'down'
    >>> store.counts()
    {'served': 1, 'up': 0, 'down': 1, 'corrections': 1}
"""

from __future__ import annotations

# The package's interface is the store's (`valign.feedback.store.__all__`).
from valign.feedback.store import __all__  # noqa: F401
from valign.feedback.store import (
    MAX_CORRECTION_CHARS,
    FeedbackError,
    FeedbackStore,
    feedback_digest,
    feedback_revision,
    kto_rows_from_feedback,
    migrate_feedback,
    sft_rows_from_feedback,
)
