"""Erasing respondents: withdrawal, an admin's erasure by id, and the retention rule.

Every erasure deletes, in one transaction, every row tied to the respondents — their
answers, page events, their proposed statement (with the answers others gave to it:
a vote on a statement whose text is gone cannot be read or used), every other table
with a foreign key to ``respondents`` (found from the models, so a table added later
is covered without changing this module), the respondent rows and their invitations
(an invitation opens one response only, so a withdrawn one must not open a fresh one).
An erased statement is also removed from the lists of statements other respondents
are shown, so no page is built with its text again.

The same transaction adds one ``erasure_log`` row: when, why (``withdrawn``,
``admin``, ``retention``) and how many rows of each table went — never an id or an
answer. That log is the only trace: the counts of withdrawals the admin pages show
come from it. Exports, weighting and analysis read the tables, so erased data is gone
from them at once (earlier export files are the researcher's to delete).

On SQLite the bytes go too: connections run with ``secure_delete`` (deleted content is
overwritten with zeros) and each erasure ends with a WAL checkpoint, so the database
files no longer hold the erased text. PostgreSQL keeps dead rows until VACUUM reuses
their space (autovacuum does); backups of either keep what they hold.

Example:
    >>> from valign.survey.db import Database, Respondent, make_engine, migrate
    >>> engine = make_engine("sqlite:///:memory:"); migrate(engine); db = Database(engine)
    >>> with db.write() as s:
    ...     s.add(Respondent(public_id="r1", resume_hash="h", instrument_id="demo", instrument_fingerprint="f", seed=1))
    >>> erase_respondent(db, "r1", "admin").rows["respondents"]
    1
    >>> erase_respondent(db, "r1", "admin") is None
    True
    >>> erasure_counts(db)
    {'withdrawn': 0, 'admin': 1, 'retention': 0}
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Literal

from sqlalchemy import Column, Table, delete, exists, func, select, update

from valign.errors import ValignError
from valign.survey.db import Answer, Base, Database, ErasureLog, Invitation, PageEvent, Proposal, Respondent
from valign.web.database import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "ErasureReason",
    "REASONS",
    "Erasure",
    "erase_respondents",
    "erase_respondent",
    "purge_incomplete",
    "erasure_counts",
    "retention_lifespan",
    "PROPOSAL_VOTES",
    "RETENTION_CHECK_SECONDS",
]

ErasureReason = Literal["withdrawn", "admin", "retention"]
REASONS: tuple[ErasureReason, ...] = ("withdrawn", "admin", "retention")
PROPOSAL_VOTES = "proposal_votes"  # the row count of others' answers to an erased statement
RETENTION_CHECK_SECONDS = 3600.0  # how often a server with a retention rule applies it
PURGE_BATCH = 500  # respondents per purge transaction: short write locks, small IN lists

log = logging.getLogger("valign.survey")


@dataclass(frozen=True)
class Erasure:
    """What one erasure removed: ``rows`` per table (``respondents`` among them) and the
    ids of the statements it deleted (a cache of pages may still hold their text).

    Example:
        >>> Erasure("admin", {"respondents": 1, "answers": 30}).total
        31
    """

    reason: ErasureReason
    rows: dict[str, int] = field(default_factory=dict)
    proposals: tuple[int, ...] = ()

    @property
    def respondents(self) -> int:
        return self.rows.get("respondents", 0)

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def merged(self, other: Erasure) -> Erasure:
        rows = dict(self.rows)
        for k, v in other.rows.items():
            rows[k] = rows.get(k, 0) + v
        return Erasure(self.reason, rows, self.proposals + other.proposals)


def _respondent_tables() -> list[tuple[Table, Column]]:
    """Every table with a foreign key to ``respondents.id``, and that key's column."""
    out = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table.name == Respondent.__tablename__ and fk.column.name == "id" and table.name != Respondent.__tablename__:
                out.append((table, fk.parent))
    return out


def _erase(s: Session, pks: list[int], reason: ErasureReason) -> Erasure:
    """Delete the respondents with these primary keys and everything tied to them; log it."""
    # Lock the respondent rows first (PostgreSQL; SQLite's write transaction holds the whole
    # database): a page being saved for them finishes before this reads their rows, or
    # fails after it — so nothing is added after the count, nor cascaded uncounted.
    pks = list(s.scalars(select(Respondent.id).where(Respondent.id.in_(pks)).with_for_update())) if pks else []
    if not pks:
        return Erasure(reason)
    rows: dict[str, int] = {}
    proposals = list(s.scalars(select(Proposal).where(Proposal.respondent_id.in_(pks))))
    proposal_ids = tuple(p.id for p in proposals)
    if proposals:
        rows[PROPOSAL_VOTES] = s.execute(delete(Answer).where(Answer.item_id.in_([p.item_id for p in proposals]))).rowcount
        _unshow(s, set(proposal_ids))
    invitations = [i for i in s.scalars(select(Respondent.invitation_id).where(Respondent.id.in_(pks))) if i is not None]
    for table, column in _respondent_tables():
        rows[table.name] = rows.get(table.name, 0) + s.execute(table.delete().where(column.in_(pks))).rowcount
    rows["respondents"] = s.execute(delete(Respondent).where(Respondent.id.in_(pks))).rowcount
    if invitations:
        rows[Invitation.__tablename__] = s.execute(delete(Invitation).where(Invitation.id.in_(invitations))).rowcount
    rows = {k: v for k, v in rows.items() if v}
    if rows.get("respondents"):
        s.add(ErasureLog(erased_at=utcnow(), reason=reason, respondents=rows["respondents"], row_counts=json.dumps(rows, sort_keys=True)))
    return Erasure(reason, rows, proposal_ids)


def _unshow(s: Session, gone: set[int]) -> None:
    """Take erased statements out of the lists frozen at other respondents' consent."""
    changed = []
    for rid, shown in s.execute(select(Respondent.id, Respondent.shown_proposals).where(Respondent.shown_proposals != "[]")).all():
        ids = json.loads(shown or "[]")
        keep = [i for i in ids if i not in gone]
        if len(keep) != len(ids):
            changed.append({"id": rid, "shown_proposals": json.dumps(keep)})
    if changed:  # one statement for them all (an UPDATE by primary key, executed with many rows)
        s.execute(update(Respondent), changed)


def _scrub(db: Database) -> None:
    """SQLite: copy the zeroed pages from the WAL into the database file now, and empty the
    WAL, instead of at the next automatic checkpoint (best effort: a reader can delay it)."""
    if db.engine.dialect.name == "sqlite":
        with db.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def erase_respondents(db: Database, pks: list[int], reason: ErasureReason) -> Erasure:
    """Erase respondents by primary key, in one transaction with its log row."""
    if reason not in REASONS:
        raise ValignError(f"erasure reason '{reason}' is not one of {', '.join(REASONS)}.")
    with db.write() as s:
        done = _erase(s, list(pks), reason)
    _scrub(db)
    return done


def erase_respondent(db: Database, public_id: str, reason: ErasureReason = "admin") -> Erasure | None:
    """Erase one respondent by the id exports and the thank-you page show; None if there is none."""
    with db.write() as s:
        pk = s.scalar(select(Respondent.id).where(Respondent.public_id == public_id))
        if pk is None:
            return None
        done = _erase(s, [pk], reason)
    _scrub(db)
    return done


def purge_incomplete(db: Database, retention_days: float, *, now: datetime | None = None) -> Erasure:
    """Erase every incomplete response untouched for ``retention_days``: started before
    the cutoff and no page submitted since. Completed responses are never touched.

    Example:
        >>> from valign.survey.db import make_engine, migrate
        >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
        >>> purge_incomplete(Database(engine), 30).respondents
        0
    """
    if not retention_days > 0:
        raise ValignError(f"the retention period must be more than 0 days, not {retention_days}; give the days after which incomplete responses are deleted.")
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    recent = exists().where(PageEvent.respondent_id == Respondent.id, PageEvent.submitted_at >= cutoff)
    stale = select(Respondent.id).where(Respondent.completed.is_(False), Respondent.started_at < cutoff, ~recent).order_by(Respondent.id).limit(PURGE_BATCH)
    total = Erasure("retention")
    while True:
        with db.write() as s:
            pks = list(s.scalars(stale))
            done = _erase(s, pks, "retention")
        total = total.merged(done)
        if len(pks) < PURGE_BATCH:
            if total.respondents:
                _scrub(db)
            return total


def erasure_counts(db: Database) -> dict[str, int]:
    """Respondents erased so far, per reason (from the erasure log)."""
    with db.read() as s:
        found = dict(s.execute(select(ErasureLog.reason, func.sum(ErasureLog.respondents)).group_by(ErasureLog.reason)).all())
    return {r: int(found.get(r) or 0) for r in REASONS}


def retention_lifespan(db: Database, retention_days: float, *, every_seconds: float = RETENTION_CHECK_SECONDS, on_erased: Callable[[Erasure], None] | None = None) -> Callable[[Any], Any]:
    """A FastAPI ``lifespan`` that applies the retention rule when the app starts and
    every ``every_seconds`` while it runs (a failed pass is logged and retried next time;
    it never stops the server). ``on_erased`` hears of every pass that deleted something.
    """
    if not retention_days > 0:
        raise ValignError(f"--retention-days must be more than 0, not {retention_days}.")

    async def loop() -> None:
        while True:
            try:
                done = await asyncio.to_thread(purge_incomplete, db, retention_days)
                if done.respondents and on_erased is not None:
                    on_erased(done)
            except Exception as e:  # noqa: BLE001 - a database hiccup must not end the server
                log.warning("the retention purge failed (%s: %s); it runs again in %.0f s", type(e).__name__, e, every_seconds)
            await asyncio.sleep(every_seconds)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    return lifespan
