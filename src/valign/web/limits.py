"""`BodyLimitMiddleware`: a request body above a stated size is refused with 413 before
anything parses it.

A declared ``Content-Length`` above the limit is refused at once; a chunked body is
counted as it arrives and refused as soon as it passes the limit, so no handler ever
reads more than ``max_body_bytes``.

Example:
    >>> BodyLimitMiddleware(app=None, max_body_bytes=1024).max_body_bytes
    1024
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.exceptions import HTTPException

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit: an HTTPException, so
    the app's own handler answers it (413) even where a framework wraps body errors."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class BodyLimitMiddleware:
    """ASGI middleware: HTTP bodies of more than ``max_body_bytes`` get 413 and one sentence."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _sentence(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body_bytes:,} bytes; send a smaller one."

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"message": self._sentence(), "type": "invalid_request_error", "param": None, "code": "body_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_body_bytes
        except ValueError:
            too_big = False  # the server itself refuses a malformed Content-Length
        if too_big:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self._sentence())
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)
