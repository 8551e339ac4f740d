"""CSRF tokens without server state (the synchronizer pattern, keyed by the session).

Each browser session has a random id inside a signed, HttpOnly, SameSite cookie
(`valign.web.cookies.SignedCookie`); every form carries
``csrf = HMAC(secret, "csrf:" + id)`` and every POST must present it.

Example:
    >>> s = Signer("x" * 32)
    >>> check_csrf(s, "sid1", csrf_token(s, "sid1")), check_csrf(s, "sid2", csrf_token(s, "sid1"))
    (True, False)
"""

from __future__ import annotations

import hmac

from valign.web.signing import Signer

__all__ = ["csrf_token", "check_csrf"]


def csrf_token(signer: Signer, session_id: str) -> str:
    """The CSRF token of a session: every form of that session carries it."""
    return signer.derive(f"csrf:{session_id}")


def check_csrf(signer: Signer, session_id: str | None, token: object) -> bool:
    """True when ``token`` is the session's CSRF token (constant-time comparison).

    Anything else a client can send in its place — nothing, a file, a number, text
    that is not ASCII — is simply not the token.

    Example:
        >>> s = Signer("x" * 32)
        >>> check_csrf(s, "sid1", None), check_csrf(s, "sid1", 42), check_csrf(s, "sid1", "\\ud800")
        (False, False, False)
    """
    if not session_id or not isinstance(token, str) or not token or not token.isascii():
        return False
    return hmac.compare_digest(token.encode(), csrf_token(signer, session_id).encode())
