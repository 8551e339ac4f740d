"""The survey's database: typed ORM models, engines, and the `SurveyFrames` it yields.

Tables (created only by the Alembic migrations in ``migrations/``; see `migrate`):

* ``respondents`` — one per consent: an opaque ``public_id`` (the ``respondent_id``
  of `SurveyFrames`), the sha-256 of the private resume token (never the token), the
  seed of the respondent's item order, the proposals shown to them, timestamps, and
  whether a full quota cell screened them out (``screened_out``, ``quota_cell``), and
  the language the survey was shown in (``language``, a tag of the instrument's
  ``languages``; null for rows made before languages existed: the base language).
* ``answers`` — one row per (respondent, question), enforced by a unique constraint:
  re-submitting a page updates the row, it never adds one. Indexed by (question,
  answer) too, for counting a quota cell's completed responses.
* ``invitations`` — sha-256 of each invitation token; at most one respondent each;
  optionally the language its survey opens in (``language``).
* ``proposals`` — principle statements respondents proposed: pending, approved or
  rejected. Approved ones are asked of later respondents as items ``prop-<n>``.
* ``page_events`` — one per page submission, with the server-measured seconds
  between showing the page and receiving it (for the speeding check).
* ``settings`` — key/value: the generated cookie-signing secret, the decline counter.
* ``erasure_log`` — one row per erasure (`valign.survey.erasure`): when, why
  (withdrawn, admin, retention) and how many rows of which table went; never whose,
  nor anything they answered.

* ``review_pairs``, ``reviewers``, ``review_grades`` — the expert review of key-case
  answers (revision ``0007``); `valign.review.store` owns their models.

Respondents and proposals carry a ``source``: ``live`` for people who answered this
survey, ``polis:<conversation>`` for participants and comments imported from a Polis
export (`valign.survey.polis`), with their id there in ``external_id``. Live pages
show only live statements, and an instrument's frames hold only its own respondents.

The feedback on a served model's answers is not the survey's: `valign.feedback` owns
those tables and their migrations (its own Alembic chain), and may share this
database. Engines, sessions and the migration runner come from `valign.web.database`.

No IP address, user agent or other client data is stored anywhere.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> engine = make_engine("sqlite:///:memory:")
    >>> migrate(engine)
    >>> schema_revision(engine)
    '0007'
    >>> load_frames(engine, load_instrument("demo")).respondents.empty
    True
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Callable

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from valign.web.database import SqlDatabase, UTCDateTime, database_url, make_engine, migration_revision, run_migrations, utcnow

if TYPE_CHECKING:
    from valign.survey.frames import SurveyFrames
    from valign.survey.instrument import Instrument

__all__ = [
    "Base",
    "Respondent",
    "Answer",
    "Invitation",
    "Proposal",
    "PageEvent",
    "Setting",
    "ErasureLog",
    "make_engine",
    "migrate",
    "schema_revision",
    "head_revision",
    "resolve_db_url",
    "Database",
    "load_frames",
    "token_hash",
    "new_token",
    "DEFAULT_DB_URL",
    "PROPOSAL_ITEM",
    "LIVE_SOURCE",
]

DEFAULT_DB_URL = "sqlite:///survey.db"
PROPOSAL_ITEM = "proposal"  # the item id of a respondent's proposed statement in `answers`
LIVE_SOURCE = "live"  # the ``source`` of respondents and statements of this survey (not imported)


def new_token() -> str:
    """An unguessable URL-safe token (256 bits), for resume links and invitations.

    Example:
        >>> len(new_token())
        43
    """
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token: its sha-256, so a leaked database opens nothing.

    Example:
        >>> len(token_hash("abc"))
        64
    """
    return hashlib.sha256(token.encode()).hexdigest()


class Base(DeclarativeBase):
    """Declarative base of the survey's tables."""


class Invitation(Base):
    """An invitation: one token, at most one response (``respondents.invitation_id`` is unique)."""

    __tablename__ = "invitations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)  # made for `valign survey simulate`
    language: Mapped[str | None] = mapped_column(String(35), nullable=True)  # the survey opens in this language
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Respondent(Base):
    """Someone who consented. ``public_id`` is the id every export and frame uses."""

    __tablename__ = "respondents"
    __table_args__ = (Index("uq_respondents_source_external_id", "source", "external_id", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    resume_hash: Mapped[str] = mapped_column(String(64), unique=True)
    instrument_id: Mapped[str] = mapped_column(String(100))
    instrument_fingerprint: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)  # item order; stable across resume
    shown_proposals: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of approved proposal ids, frozen at consent
    invitation_id: Mapped[int | None] = mapped_column(ForeignKey("invitations.id"), unique=True, nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    screened_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # a full quota cell ended their survey
    quota_cell: Mapped[str | None] = mapped_column(Text, nullable=True)  # that cell's label (`QuotaCell.label`)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    source: Mapped[str] = mapped_column(String(100), default=LIVE_SOURCE, server_default=LIVE_SOURCE)  # live | polis:<conversation>
    external_id: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the id in ``source`` (a Polis participant id)
    language: Mapped[str | None] = mapped_column(String(35), nullable=True)  # the language the survey was shown in


class Answer(Base):
    """One answered question. ``choice`` is an option code (see `Instrument.options`)."""

    __tablename__ = "answers"
    __table_args__ = (
        UniqueConstraint("respondent_id", "item_id", name="uq_answers_respondent_item"),
        Index("ix_answers_item_choice", "item_id", "choice"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    choice: Mapped[str] = mapped_column(String(100))
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Proposal(Base):
    """A principle statement a respondent proposed; others see it only once approved."""

    __tablename__ = "proposals"
    __table_args__ = (Index("uq_proposals_source_external_id", "source", "external_id", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    respondent_id: Mapped[int | None] = mapped_column(ForeignKey("respondents.id", ondelete="SET NULL"), nullable=True, unique=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="pending", index=True)  # pending | approved | rejected
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    moderated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    source: Mapped[str] = mapped_column(String(100), default=LIVE_SOURCE, server_default=LIVE_SOURCE)  # live | polis:<conversation>
    external_id: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the id in ``source`` (a Polis comment id)

    @property
    def item_id(self) -> str:
        return f"prop-{self.id}"


class PageEvent(Base):
    """One page submission and the seconds the respondent spent on it (server clock)."""

    __tablename__ = "page_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id", ondelete="CASCADE"), index=True)
    page: Mapped[str] = mapped_column(String(50))
    items: Mapped[int] = mapped_column(Integer)  # questions answered on this submission
    seconds: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Setting(Base):
    """A key/value setting the app keeps in its own database."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ErasureLog(Base):
    """One erasure: respondents deleted for one reason at one time, and the rows it took.

    Deliberately without the respondents' ids: the log proves that erasures happened and
    what they removed, but does not list who took part (an id that outlived its answers
    would still say that someone with it answered).
    """

    __tablename__ = "erasure_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[str] = mapped_column(String(20), index=True)  # withdrawn | admin | retention
    respondents: Mapped[int] = mapped_column(Integer)
    row_counts: Mapped[str] = mapped_column(Text, default="{}")  # JSON {table: rows deleted}


# -- migrations ----------------------------------------------------------------------------

# `make_engine` (from `valign.web.database`) is part of this module's interface: callers
# that deal only with the survey open its database through here.


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the survey's tables to ``revision`` with the shipped Alembic migrations.

    The only way the survey's tables are created; safe to run on every start. The
    chain keeps Alembic's default version table, ``alembic_version``.
    """
    run_migrations(engine, str(resources.files("valign.survey") / "migrations"), revision=revision, what="survey database")


def schema_revision(engine: Engine) -> str | None:
    """The survey chain's revision in this database (None before its first migration).

    Example:
        >>> schema_revision(make_engine("sqlite:///:memory:")) is None
        True
    """
    return migration_revision(engine)


def head_revision() -> str:
    """The newest revision the shipped migrations bring a database to.

    Example:
        >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
        >>> schema_revision(engine) == head_revision()
        True
    """
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(resources.files("valign.survey") / "migrations")).get_current_head())


# -- the data access the app needs ----------------------------------------------------------


class Database(SqlDatabase):
    """The survey's database: sessions (`SqlDatabase`), settings and answers.

    Example:
        >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
        >>> db = Database(engine)
        >>> db.bump_counter("declined"); db.bump_counter("declined"); db.setting("declined")
        '2'
    """

    def setting(self, key: str) -> str | None:
        with self.read() as s:
            row = s.get(Setting, key)
            return row.value if row else None

    def ensure_setting(self, key: str, make: Callable[[], str]) -> str:
        """The setting's value, created with ``make()`` if absent (first writer wins)."""
        value = self.setting(key)
        if value is not None:
            return value
        try:
            with self.write() as s:
                if s.get(Setting, key) is None:
                    s.add(Setting(key=key, value=make()))
        except Exception:  # another process inserted it first
            pass
        value = self.setting(key)
        assert value is not None
        return value

    def bump_counter(self, key: str) -> None:
        """Add one to an integer setting (e.g. how many declined consent)."""
        with self.write() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value="1"))
            else:
                row.value = str(int(row.value) + 1)

    def upsert_answers(self, s: Session, respondent_id: int, rows: list[dict]) -> None:
        """Insert or update answers of one respondent, keyed by (respondent, item)."""
        if not rows:
            return
        now = utcnow()
        s.execute(self._upsert, [{"respondent_id": respondent_id, "answered_at": now, **r} for r in rows])

    @property
    def _upsert(self):  # noqa: ANN202
        # One statement per engine, executed with many rows: SQLAlchemy compiles it once.
        if self.__dict__.get("_upsert_stmt") is None:
            if self.engine.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(Answer)
            self.__dict__["_upsert_stmt"] = stmt.on_conflict_do_update(
                index_elements=["respondent_id", "item_id"],
                set_={c: getattr(stmt.excluded, c) for c in ("kind", "choice", "strength", "text", "answered_at")},
            )
        return self.__dict__["_upsert_stmt"]

    def delete_answers(self, s: Session, respondent_id: int, item_ids: list[str]) -> None:
        """Remove answers a respondent cleared (e.g. a demographic they now skip)."""
        if item_ids:
            from sqlalchemy import delete

            s.execute(delete(Answer).where(Answer.respondent_id == respondent_id, Answer.item_id.in_(item_ids)))


# -- frames ------------------------------------------------------------------------------------


def load_frames(db: "str | Engine | Database", instrument: "Instrument", *, include_other_instruments: bool = False) -> "SurveyFrames":
    """The respondents and answers tables of `SurveyFrames`, exactly per its column spec.

    Only respondents who answered this instrument (same id) are included, unless
    ``include_other_instruments``. Quality columns are added by `valign.survey.quality`.

    Example (a migrated database, e.g. ``sqlite:///survey.db``)::

        frames = load_frames("sqlite:///survey.db", load_instrument("demo"))
        frames.respondents[["completed", "synthetic"]].sum()
    """
    import pandas as pd

    from valign.survey.frames import ANSWER_COLUMNS, RESPONDENT_COLUMNS, SurveyFrames

    if isinstance(db, Database):
        engine = db.engine
    elif isinstance(db, Engine):
        engine = db
    else:
        engine = make_engine(db)
    margins = {q.id: q.margin for q in instrument.demographics}
    with Session(engine) as s:
        rq = select(Respondent)
        if not include_other_instruments:
            rq = rq.where(Respondent.instrument_id == instrument.id)
        respondents = list(s.scalars(rq.order_by(Respondent.id)))
        by_pk = {r.id: r.public_id for r in respondents}
        seconds = dict(s.execute(select(PageEvent.respondent_id, func.sum(PageEvent.seconds)).group_by(PageEvent.respondent_id)).all())
        answers = [a for a in s.scalars(select(Answer).order_by(Answer.respondent_id, Answer.id)) if a.respondent_id in by_pk]

    demo = {r.public_id: {} for r in respondents}
    for a in answers:
        if a.kind == "demographic" and a.item_id in margins:
            demo[by_pk[a.respondent_id]][margins[a.item_id]] = a.choice
    rows = []
    for r in respondents:
        row = {m: demo[r.public_id].get(m) for m in margins.values()}
        row.update(
            completed=bool(r.completed),
            screened_out=bool(r.screened_out),
            synthetic=bool(r.synthetic),
            language=r.language or instrument.language,
            started_at=r.started_at,
            finished_at=r.finished_at,
            seconds=float(seconds.get(r.id) or 0.0),
        )
        rows.append(row)
    resp = pd.DataFrame(rows, columns=list(margins.values()) + RESPONDENT_COLUMNS, index=pd.Index([r.public_id for r in respondents], name="respondent_id", dtype=object))
    for col in ("started_at", "finished_at"):
        resp[col] = pd.to_datetime(resp[col], utc=True).astype("datetime64[us, UTC]")
    resp["completed"] = resp["completed"].astype(bool)
    resp["screened_out"] = resp["screened_out"].astype(bool)
    resp["synthetic"] = resp["synthetic"].astype(bool)
    resp["seconds"] = resp["seconds"].astype(float)
    for m in margins.values():
        resp[m] = resp[m].astype(object).where(resp[m].notna(), None)

    ans = pd.DataFrame(
        [(by_pk[a.respondent_id], a.item_id, a.kind, a.choice, a.strength, a.text, a.answered_at) for a in answers],
        columns=ANSWER_COLUMNS,
    )
    ans["strength"] = ans["strength"].astype("Int64")
    ans["answered_at"] = pd.to_datetime(ans["answered_at"], utc=True).astype("datetime64[us, UTC]")
    for col in ("respondent_id", "item_id", "kind", "choice", "text"):
        ans[col] = ans[col].astype(object)
    return SurveyFrames(instrument, resp, ans)


def resolve_db_url(url: str | None) -> str:
    """The URL to use: the option, else ``VALIGN_SURVEY_DB``, else ``sqlite:///survey.db``.

    A bare path becomes a SQLite URL.

    Example:
        >>> resolve_db_url("data/s.db")
        'sqlite:///data/s.db'
    """
    return database_url(url or os.environ.get("VALIGN_SURVEY_DB") or DEFAULT_DB_URL)
