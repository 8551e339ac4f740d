"""`RateLimiter`: token buckets in memory, per session, per client address or per anything.

Client addresses live only in this process's memory and are never written anywhere.

Example:
    >>> rl = RateLimiter(per_minute=60, burst=2)
    >>> [rl.allow("k", now=0.0) for _ in range(3)]
    [True, True, False]
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["RateLimiter", "client_address"]


def client_address(request: Request) -> str:
    """The address a rate limit counts a request under (``"unknown"`` when the server has none)."""
    return request.client.host if request.client else "unknown"


@dataclass
class RateLimiter:
    """``per_minute`` requests per key on average, bursts up to ``burst``.

    ``per_minute`` 0 turns the limiter off. Keys are dropped after ten idle minutes.
    """

    per_minute: float
    burst: int = 20
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_sweep: float = 0.0

    def exhausted(self, key: str, now: float | None = None) -> bool:
        """True when ``key`` has no request left right now (nothing is consumed)."""
        if self.per_minute <= 0:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.per_minute / 60.0) < 1.0

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take one request from ``key``'s bucket; False when it is empty."""
        if self.per_minute <= 0:
            return True
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate)
            ok = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
            if now - self._last_sweep > 600:
                self._last_sweep = now
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
        return ok
