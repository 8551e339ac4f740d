"""`SignedCookie`: an HttpOnly cookie whose value is a signed JSON payload.

The survey's session and admin cookies and the chat page's session cookie are all
one of these; each names its path, lifetime and SameSite policy once.

Example:
    >>> cookie = SignedCookie("valign_s", Signer("k" * 32, "session"))
    >>> cookie.read({"valign_s": cookie.signer.sign({"sid": "abc"})}), cookie.read({})
    ({'sid': 'abc'}, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping

from valign.web.signing import Signer

if TYPE_CHECKING:
    from starlette.responses import Response

__all__ = ["SignedCookie"]


@dataclass(frozen=True)
class SignedCookie:
    """``max_age`` (seconds) bounds both the browser's copy and the oldest signature
    accepted; None makes a session cookie whose signature never expires."""

    name: str
    signer: Signer
    path: str = "/"
    max_age: int | None = None
    samesite: Literal["lax", "strict"] = "lax"
    secure: bool = False

    def read(self, cookies: Mapping[str, str]) -> dict[str, Any] | None:
        """The payload of the request's cookie; None when absent, altered or expired."""
        return self.signer.unsign(cookies.get(self.name), max_age=self.max_age)

    def write(self, response: Response, payload: dict[str, Any]) -> None:
        response.set_cookie(
            self.name, self.signer.sign(payload), max_age=self.max_age, httponly=True, samesite=self.samesite, secure=self.secure, path=self.path
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(self.name, path=self.path)
