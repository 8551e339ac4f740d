"""`AdminAuth`: the admin token, sent as ``Authorization: Bearer <token>`` or typed
into a login form, always compared in constant time. No token configured → disabled.

Example:
    >>> AdminAuth("t0ken").check_bearer("Bearer t0ken"), AdminAuth(None).enabled
    (True, False)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from valign.web.signing import Signer

__all__ = ["AdminAuth"]


@dataclass
class AdminAuth:
    """Checks admin credentials. ``token`` None means admin is disabled (every request → 403)."""

    token: str | None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def check_bearer(self, header: str | None) -> bool:
        if not self.token or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def check_token(self, value: object) -> bool:
        """Whether a typed token (a form field: text, or whatever a client sent) is the admin token."""
        if not self.token or not isinstance(value, str) or not value:
            return False
        return hmac.compare_digest(value.encode("utf-8", "surrogatepass"), self.token.encode())

    def cookie_marker(self, signer: Signer) -> str:
        """What an admin cookie holds; bound to the token, so changing it logs every admin session out."""
        return signer.derive(f"admin:{self.token}")
