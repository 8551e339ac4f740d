"""The databases behind the web pages: engines, sessions, UTC timestamps, migrations.

The survey (`valign.survey.db`) and the feedback store (`valign.feedback`) each own
their tables and their own Alembic chain with its own version table, so one database
can hold both, or each its own; this module is what they share.

SQLite runs in WAL mode (readers never block the writer) with ``synchronous=NORMAL``
(durable at every checkpoint, safe against crashes of the app) and a 30-second busy
timeout; write transactions start with ``BEGIN IMMEDIATE`` (see `SqlDatabase.write`),
so concurrent writers queue instead of failing. PostgreSQL gets a pool of
``pool_size`` (+ as many again on demand) connections, recycled every half hour.

Example:
    >>> db = SqlDatabase(make_engine("sqlite:///:memory:"))
    >>> with db.read() as s:
    ...     s.execute(sqlalchemy.text("select 1")).scalar()
    1
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy
from sqlalchemy import DateTime, TypeDecorator, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from valign.errors import ValignError

__all__ = ["utcnow", "UTCDateTime", "database_url", "make_engine", "SqlDatabase", "run_migrations", "migration_revision", "has_tables"]


def utcnow() -> datetime:
    """The current time in UTC (timezone-aware).

    Example:
        >>> utcnow().tzinfo
        datetime.timezone.utc
    """
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps stored without zone (SQLite has none) and always read back as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


def database_url(url: str) -> str:
    """A database URL; a bare path becomes a SQLite URL.

    Example:
        >>> database_url("data/s.db"), database_url("postgresql+psycopg://u@h/db")
        ('sqlite:///data/s.db', 'postgresql+psycopg://u@h/db')
    """
    return url if "://" in url else f"sqlite:///{Path(url)}"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for a SQLite path/URL or a PostgreSQL URL, tuned as the module says.

``sqlite:///:memory:`` is one in-memory database for the engine's life (for examples
and tests).

    Example:
        >>> make_engine("sqlite:///:memory:").dialect.name
        'sqlite'
    """
    url = database_url(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
    if url in ("sqlite://", "sqlite:///:memory:"):
        # One connection shared by every thread: each new one would open another, empty database.
        from sqlalchemy.pool import StaticPool

        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    elif url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=pool_size, max_overflow=pool_size)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages (erasure)
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


class SqlDatabase:
    """An engine plus sessions: ``read()`` for pages, ``write()`` for one transaction per submit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # PostgreSQL: a read that needs no snapshot across its statements runs in
        # autocommit, saving the BEGIN and ROLLBACK round trips a transaction costs.
        glance_engine = engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
        self._glances = sessionmaker(glance_engine, expire_on_commit=False)

    @contextmanager
    def read(self, snapshot: bool = True) -> Iterator[Session]:
        """A session for reading. ``snapshot=False``: each statement may see a newer
        database than the one before it (fine for showing a page; two round trips fewer
        on PostgreSQL)."""
        with (self._sessions if snapshot else self._glances)() as s:
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


def run_migrations(engine: Engine, script_location: str, *, revision: str = "head", what: str = "database") -> None:
    """Upgrade one Alembic chain (its ``env.py`` names its version table) to ``revision``.

    ``what`` names the database in the error a failed connection raises (e.g.
    ``"survey database"``).
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import OperationalError

    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as e:
        raise ValignError(f"cannot reach the {what} {engine.url.render_as_string(hide_password=True)}: {e.orig}; check the URL and that the server runs.") from None


def migration_revision(engine: Engine, version_table: str = "alembic_version") -> str | None:
    """The revision a chain (named by its version table) is at; None before its first migration.

    Example:
        >>> migration_revision(make_engine("sqlite:///:memory:")) is None
        True
    """
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()


def has_tables(engine: Engine, *names: str) -> bool:
    """Whether every table in ``names`` exists.

    Example:
        >>> has_tables(make_engine("sqlite:///:memory:"), "feedback")
        False
    """
    inspector = sqlalchemy.inspect(engine)
    return all(inspector.has_table(n) for n in names)
