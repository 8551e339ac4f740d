"""The survey's defences: signed cookies, CSRF tokens, the admin token, rate limits, headers.

* `Signer` signs small JSON payloads with HMAC-SHA256 (cookies, the time a page was
  shown). A payload is readable by the client but cannot be altered or forged.
* CSRF (synchronizer pattern without server state): each browser session has a
  random id inside a signed, HttpOnly, SameSite=Lax cookie; every form carries
  ``csrf = HMAC(secret, "csrf:" + id)`` and every POST must present it.
* `AdminAuth`: ``Authorization: Bearer <VALIGN_ADMIN_TOKEN>`` compared in constant
  time, or a signed admin cookie set by the login form. No token configured → 403.
* `RateLimiter`: token buckets in memory, per session and per client address; the
  addresses live only in this process's memory and are never written anywhere.
* `SECURITY_HEADERS`: a Content-Security-Policy with no inline anything (the pages use
  no script and one static stylesheet), no framing, no referrer (so a resume link in
  the address bar never leaks), no MIME sniffing.

Example:
    >>> s = Signer("k" * 32)
    >>> s.unsign(s.sign({"sid": "abc"}))
    {'sid': 'abc'}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Signer", "csrf_token", "check_csrf", "AdminAuth", "RateLimiter", "SECURITY_HEADERS"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs JSON payloads: ``<base64 payload>.<base64 HMAC>``; ``max_age`` in seconds.

    Example:
        >>> Signer("secret-key-of-enough-length-000").unsign("forged.value") is None
        True
    """

    def __init__(self, secret: str, purpose: str = "") -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must have at least 16 characters")
        self._key = hashlib.sha256(f"{purpose}:{secret}".encode()).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps({**payload, "_t": int(time.time())}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def unsign(self, value: str | None, max_age: float | None = None) -> dict[str, Any] | None:
        """The payload, or None when the value is missing, altered, forged or too old."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        if max_age is not None and time.time() - payload.get("_t", 0) > max_age:
            return None
        payload.pop("_t", None)
        return payload

    def derive(self, text: str) -> str:
        """A keyed hash of ``text`` (e.g. a session's CSRF token)."""
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())


def csrf_token(signer: Signer, session_id: str) -> str:
    """The CSRF token of a session: every form of that session carries it.

    Example:
        >>> s = Signer("x" * 32); check_csrf(s, "sid1", csrf_token(s, "sid1"))
        True
    """
    return signer.derive(f"csrf:{session_id}")


def check_csrf(signer: Signer, session_id: str | None, token: str | None) -> bool:
    """True when ``token`` is the session's CSRF token (constant-time comparison)."""
    if not session_id or not token:
        return False
    return hmac.compare_digest(token.encode(), csrf_token(signer, session_id).encode())


@dataclass
class AdminAuth:
    """Checks admin credentials. ``token`` None means admin is disabled (every request → 403).

    Example:
        >>> AdminAuth("t0ken").check_bearer("Bearer t0ken")
        True
    """

    token: str | None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def check_bearer(self, header: str | None) -> bool:
        if not self.token or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def check_token(self, value: str | None) -> bool:
        return bool(self.token and value) and hmac.compare_digest(value.encode(), self.token.encode())  # type: ignore[union-attr]

    def cookie_marker(self, signer: Signer) -> str:
        """Bound to the token: changing VALIGN_ADMIN_TOKEN logs every admin session out."""
        return signer.derive(f"admin:{self.token}")


@dataclass
class RateLimiter:
    """Token buckets: ``per_minute`` requests per key on average, bursts up to ``burst``.

    ``per_minute`` 0 turns the limiter off. Keys are dropped after ten idle minutes.

    Example:
        >>> rl = RateLimiter(per_minute=60, burst=2)
        >>> [rl.allow("k", now=0.0) for _ in range(3)]
        [True, True, False]
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
