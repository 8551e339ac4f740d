"""The survey's database: typed ORM models, engines, and the `SurveyFrames` it yields.

Tables (created only by the Alembic migrations in ``migrations/``; see `migrate`):

* ``respondents`` — one per consent: an opaque ``public_id`` (the ``respondent_id``
  of `SurveyFrames`), the sha-256 of the private resume token (never the token), the
  seed of the respondent's item order, the proposals shown to them, timestamps.
* ``answers`` — one row per (respondent, question), enforced by a unique constraint:
  re-submitting a page updates the row, it never adds one.
* ``invitations`` — sha-256 of each invitation token; at most one respondent each.
* ``proposals`` — principle statements respondents proposed: pending, approved or
  rejected. Approved ones are asked of later respondents as items ``prop-<n>``.
* ``page_events`` — one per page submission, with the server-measured seconds
  between showing the page and receiving it (for the speeding check).
* ``settings`` — key/value: the generated cookie-signing secret, the decline counter.
* ``served_completions`` and ``feedback`` — answers a served model gave
  (``valign serve --feedback-db``) and people's 👍/👎 and corrections on them, for
  continual learning (`valign.feedback`); they can share the survey's database or
  have their own.

No IP address, user agent or other client data is stored anywhere.

Example:
    >>> engine = make_engine("sqlite:///survey.db")
    >>> migrate(engine)
    >>> frames = load_frames(engine, load_instrument("demo"))
"""

from __future__ import annotations

import hashlib
import json
import secrets
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from valign.errors import ValignError

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
    "ServedCompletion",
    "Feedback",
    "make_engine",
    "migrate",
    "schema_revision",
    "resolve_db_url",
    "Database",
    "load_frames",
    "token_hash",
    "new_token",
    "utcnow",
    "DEFAULT_DB_URL",
    "PROPOSAL_ITEM",
]

DEFAULT_DB_URL = "sqlite:///survey.db"
PROPOSAL_ITEM = "proposal"  # the item id of a respondent's proposed statement in `answers`


def utcnow() -> datetime:
    """The current time in UTC (timezone-aware).

    Example:
        >>> utcnow().tzinfo
        datetime.timezone.utc
    """
    return datetime.now(timezone.utc)


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


class _UTC(TypeDecorator):
    """Timestamps stored without zone (SQLite has none) and always read back as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    """Declarative base of the survey's tables."""


class Invitation(Base):
    """An invitation: one token, at most one response (``respondents.invitation_id`` is unique)."""

    __tablename__ = "invitations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)  # made for `valign survey simulate`
    created_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)


class Respondent(Base):
    """Someone who consented. ``public_id`` is the id every export and frame uses."""

    __tablename__ = "respondents"
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
    started_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(_UTC(), nullable=True)

    def proposal_ids(self) -> list[int]:
        return [int(i) for i in json.loads(self.shown_proposals or "[]")]


class Answer(Base):
    """One answered question. ``choice`` is an option code (see `Instrument.options`)."""

    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("respondent_id", "item_id", name="uq_answers_respondent_item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    choice: Mapped[str] = mapped_column(String(100))
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    answered_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)


class Proposal(Base):
    """A principle statement a respondent proposed; others see it only once approved."""

    __tablename__ = "proposals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    respondent_id: Mapped[int | None] = mapped_column(ForeignKey("respondents.id", ondelete="SET NULL"), nullable=True, unique=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="pending", index=True)  # pending | approved | rejected
    created_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)
    moderated_at: Mapped[datetime | None] = mapped_column(_UTC(), nullable=True)

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
    submitted_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)


class Setting(Base):
    """A key/value setting the app keeps in its own database."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ServedCompletion(Base):
    """An answer a served model gave: the chat completion's ``id``, the model, the conversation."""

    __tablename__ = "served_completions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(300))
    messages: Mapped[str] = mapped_column(Text)  # JSON: the conversation the answer replied to
    completion: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)


class Feedback(Base):
    """Someone's verdict on one served answer: at most one per answer; a new one replaces it."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("served_completions.id", ondelete="CASCADE"), unique=True)
    rating: Mapped[str] = mapped_column(String(4))  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_UTC(), default=utcnow)


# -- engines -----------------------------------------------------------------------------


def make_engine(url: str = DEFAULT_DB_URL, *, pool_size: int = 10) -> Engine:
    """An engine for a SQLite path/URL or a PostgreSQL URL, tuned for the survey.

    SQLite runs in WAL mode (readers never block the writer) with ``synchronous=NORMAL``
    (durable at every checkpoint, safe against crashes of the app) and a 30-second busy
    timeout; write transactions start with ``BEGIN IMMEDIATE`` (see `Database.write`),
    so concurrent writers queue instead of failing. PostgreSQL gets a pool of
    ``pool_size`` (+ as many again on demand) connections, recycled every half hour.

    Example:
        >>> make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/survey")
    """
    if "://" not in url:  # a bare path
        url = f"sqlite:///{url}"
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=pool_size, max_overflow=pool_size)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            # A deferred transaction that reads and then writes can fail at once with
            # SQLITE_BUSY when another writer got in between; IMMEDIATE takes the write
            # lock up front, so writers wait their turn (busy_timeout) instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("valign_write") else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        # No pre-ping (a round trip per checkout); connections are recycled before servers drop idle ones.
        return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_recycle=1800, pool_timeout=30)
    raise ValignError(f"database URL '{url.split('://')[0]}://…' is not supported; use sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB.")


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("valign.survey") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` with the shipped Alembic migrations.

    The only way the survey's tables are created; safe to run on every start.

    Example:
        >>> migrate(make_engine("sqlite:///survey.db"))
    """
    from alembic import command
    from sqlalchemy.exc import OperationalError

    cfg = _alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as e:
        raise ValignError(f"cannot reach the survey database {engine.url.render_as_string(hide_password=True)}: {e.orig}; check the URL and that the server runs.") from None


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration).

    Example:
        >>> schema_revision(make_engine("sqlite:///survey.db"))
        '0001'
    """
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# -- the data access the app needs ----------------------------------------------------------


class Database:
    """An engine plus sessions: ``read()`` for pages, ``write()`` for one transaction per submit.

    Example:
        >>> db = Database(make_engine("sqlite:///survey.db"))
        >>> with db.write() as s:
        ...     s.add(Setting(key="k", value="v"))
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits at the end of the block (or rolls back)."""
        with self._sessions() as s:
            s.connection(execution_options={"valign_write": True})
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def setting(self, key: str) -> str | None:
        with self.read() as s:
            row = s.get(Setting, key)
            return row.value if row else None

    def ensure_setting(self, key: str, make: "callable[[], str]") -> str:  # type: ignore[valid-type]
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

    Example:
        >>> frames = load_frames("sqlite:///survey.db", load_instrument("demo"))
        >>> frames.respondents[["completed", "synthetic"]].sum()
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
            synthetic=bool(r.synthetic),
            started_at=r.started_at,
            finished_at=r.finished_at,
            seconds=float(seconds.get(r.id) or 0.0),
        )
        rows.append(row)
    resp = pd.DataFrame(rows, columns=list(margins.values()) + RESPONDENT_COLUMNS, index=pd.Index([r.public_id for r in respondents], name="respondent_id", dtype=object))
    for col in ("started_at", "finished_at"):
        resp[col] = pd.to_datetime(resp[col], utc=True).astype("datetime64[us, UTC]")
    resp["completed"] = resp["completed"].astype(bool)
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
    import os

    url = url or os.environ.get("VALIGN_SURVEY_DB") or DEFAULT_DB_URL
    if "://" not in url:
        url = f"sqlite:///{Path(url)}"
    return url
