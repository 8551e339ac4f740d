"""`Signer`: small JSON payloads signed with HMAC-SHA256.

A signed value is ``<base64 payload>.<base64 HMAC>``: the client can read it but can
neither alter nor forge it. Cookies, the chat page's conversation field and the time a
survey page was shown all travel this way.

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
import time
from typing import Any

__all__ = ["Signer", "b64encode", "b64decode"]


def b64encode(data: bytes) -> str:
    """URL-safe base64 without padding (what goes into cookies and form fields).

    Example:
        >>> b64encode(b"hi"), b64decode("aGk")
        ('aGk', b'hi')
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    """The inverse of `b64encode` (the padding is put back)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs JSON payloads; ``purpose`` separates keys, so a value signed for one use is
    refused by a signer for another.

    Example:
        >>> Signer("secret-key-of-enough-length-000").unsign("forged.value") is None
        True
    """

    def __init__(self, secret: str, purpose: str = "") -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must have at least 16 characters")
        self._key = hashlib.sha256(f"{purpose}:{secret}".encode()).digest()

    def _mac(self, body: str) -> str:
        return b64encode(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, payload: dict[str, Any]) -> str:
        body = b64encode(json.dumps({**payload, "_t": int(time.time())}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def unsign(self, value: object, max_age: float | None = None) -> dict[str, Any] | None:
        """The payload, or None when the value is missing, altered, forged or older than ``max_age`` seconds."""
        if not isinstance(value, str) or not value.isascii() or value.count(".") != 1:
            return None  # signed values are ASCII; anything else (a file, "é") was never one
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            payload = json.loads(b64decode(body))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        if max_age is not None and time.time() - payload.get("_t", 0) > max_age:
            return None
        payload.pop("_t", None)
        return payload

    def derive(self, text: str) -> str:
        """A keyed hash of ``text`` (e.g. a session's CSRF token).

        Example:
            >>> Signer("k" * 32).derive("a") == Signer("k" * 32).derive("a") != Signer("k" * 32, "other").derive("a")
            True
        """
        return b64encode(hmac.new(self._key, text.encode(), hashlib.sha256).digest())
