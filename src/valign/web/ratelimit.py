"""`RateLimiter`: token buckets per session, per client address or per anything, kept
in this process's memory (`MemoryBuckets`) or in a database every worker process
shares (`SqlBuckets`).

In memory, client addresses are never written anywhere. In the database, a bucket's
key is stored only as an HMAC of the key under the server's secret (so no address is
stored), and buckets idle for ten minutes are deleted.

Example:
    >>> rl = RateLimiter(per_minute=60, burst=2)
    >>> [rl.allow("k", now=0.0) for _ in range(3)]
    [True, True, False]
    >>> from valign.web.database import make_engine
    >>> shared = SqlBuckets(make_engine("sqlite:///:memory:"), secret="s" * 32)
    >>> a, b = RateLimiter(60, burst=2, store=shared), RateLimiter(60, burst=2, store=shared)
    >>> [a.allow("k", now=0.0), b.allow("k", now=0.0), a.allow("k", now=0.0)]  # two workers, one bucket
    [True, True, False]
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from starlette.requests import Request

__all__ = ["RateLimiter", "BucketStore", "MemoryBuckets", "SqlBuckets", "RATE_LIMIT_TABLE", "ensure_bucket_table", "client_address"]

RATE_LIMIT_TABLE = "rate_limit_buckets"
IDLE_SECONDS = 600.0  # a bucket untouched this long is full again, so it is dropped


def client_address(request: Request) -> str:
    """The address a rate limit counts a request under (``"unknown"`` when the server has none).

    Forwarded-for headers count only where the server trusts the proxy that sent them
    (uvicorn's ``forwarded_allow_ips``), which rewrites ``request.client`` itself.
    """
    return request.client.host if request.client else "unknown"


class BucketStore(Protocol):
    """Where buckets live: ``take`` refills ``key``'s bucket to ``now`` and takes one
    request from it when ``consume`` (and one is there); True when one was there."""

    def take(self, key: str, per_minute: float, burst: int, now: float, consume: bool = True) -> bool: ...


def _refill(tokens: float, last: float, per_minute: float, burst: int, now: float) -> float:
    return min(float(burst), tokens + max(0.0, now - last) * per_minute / 60.0)


@dataclass
class MemoryBuckets:
    """Buckets in this process's memory: fast, and private to one worker process."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sweep: float = 0.0

    def take(self, key: str, per_minute: float, burst: int, now: float, consume: bool = True) -> bool:
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = _refill(tokens, last, per_minute, burst, now)
            ok = tokens >= 1.0
            if not consume:
                return ok
            self._buckets[key] = (tokens - 1.0 if ok else tokens, max(now, last))
            if now - self._last_sweep > IDLE_SECONDS:
                self._last_sweep = now
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < IDLE_SECONDS}
        return ok


class SqlBuckets:
    """Buckets in a SQL table (SQLite or PostgreSQL), shared by every process on the database.

    One statement per request: an ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` that
    refills, takes and answers atomically, so concurrent workers never both take the
    last request. Times are wall-clock seconds (``time.time()``), the same in every
    process. The table is a cache (losing it only refills every bucket), so it is
    created here if missing rather than by a migration chain.
    """

    def __init__(self, engine: Engine, secret: str) -> None:
        self.engine = engine
        self._key = hashlib.sha256(("rate-limit:" + secret).encode()).digest()
        self._last_sweep = 0.0
        # PostgreSQL: the one statement is atomic on its own, so it runs in autocommit,
        # one round trip instead of three (BEGIN, the statement, COMMIT).
        self._writer = engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
        ensure_bucket_table(engine)

    def hashed(self, key: str) -> str:
        return hmac.new(self._key, key.encode(), hashlib.sha256).hexdigest()

    def take(self, key: str, per_minute: float, burst: int, now: float, consume: bool = True) -> bool:
        from sqlalchemy import text

        params = {"key": self.hashed(key), "rate": per_minute / 60.0, "burst": float(burst), "now": now}
        if not consume:
            with self.engine.connect() as conn:
                row = conn.execute(text(f"SELECT tokens, updated FROM {RATE_LIMIT_TABLE} WHERE key = :key"), params).first()
            return row is None or _refill(row[0], row[1], per_minute, burst, now) >= 1.0
        with self._writer.connect() as conn:
            conn.execution_options(valign_write=True)  # SQLite: BEGIN IMMEDIATE (see valign.web.database)
            with conn.begin():
                ok = conn.execute(_take_statement(), params).scalar_one()
                if now - self._last_sweep > IDLE_SECONDS:
                    self._last_sweep = now
                    conn.execute(text(f"DELETE FROM {RATE_LIMIT_TABLE} WHERE updated < :cutoff"), {"cutoff": now - IDLE_SECONDS})
        return bool(ok)


def ensure_bucket_table(engine: Engine) -> None:
    """Create the buckets table when it is missing (several processes may race; one wins)."""
    from sqlalchemy.exc import DBAPIError

    ddl = f"CREATE TABLE IF NOT EXISTS {RATE_LIMIT_TABLE} (key VARCHAR(64) PRIMARY KEY, tokens FLOAT NOT NULL, updated FLOAT NOT NULL, ok BOOLEAN NOT NULL)"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(ddl)
    except DBAPIError:  # PostgreSQL: a concurrent CREATE won (unique violation on pg_type)
        import sqlalchemy

        if not sqlalchemy.inspect(engine).has_table(RATE_LIMIT_TABLE):
            raise


@functools.cache
def _take_statement():  # noqa: ANN202
    """Built on first use: SQLAlchemy is imported only where a server runs."""
    from sqlalchemy import text

    t = RATE_LIMIT_TABLE
    # The refilled count; SET sees the row as it was, on SQLite and PostgreSQL alike.
    elapsed = f"(CASE WHEN :now > {t}.updated THEN :now - {t}.updated ELSE 0.0 END)"
    refilled = f"(CASE WHEN {t}.tokens + {elapsed} * :rate > :burst THEN :burst ELSE {t}.tokens + {elapsed} * :rate END)"
    return text(
        f"INSERT INTO {t} (key, tokens, updated, ok) VALUES (:key, :burst - 1.0, :now, TRUE) "
        f"ON CONFLICT (key) DO UPDATE SET "
        f"tokens = CASE WHEN {refilled} >= 1.0 THEN {refilled} - 1.0 ELSE {refilled} END, "
        f"updated = CASE WHEN :now > {t}.updated THEN :now ELSE {t}.updated END, "
        f"ok = {refilled} >= 1.0 "
        f"RETURNING ok"
    )


@dataclass
class RateLimiter:
    """``per_minute`` requests per key on average, bursts up to ``burst``.

    ``per_minute`` 0 turns the limiter off. ``store`` is where the buckets live: this
    process's memory by default, or a `SqlBuckets` that several worker processes share.
    """

    per_minute: float
    burst: int = 20
    store: BucketStore = field(default_factory=MemoryBuckets)

    def exhausted(self, key: str, now: float | None = None) -> bool:
        """True when ``key`` has no request left right now (nothing is consumed)."""
        if self.per_minute <= 0:
            return False
        return not self.store.take(key, self.per_minute, self.burst, time.time() if now is None else now, consume=False)

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take one request from ``key``'s bucket; False when it is empty."""
        if self.per_minute <= 0:
            return True
        return self.store.take(key, self.per_minute, self.burst, time.time() if now is None else now)
