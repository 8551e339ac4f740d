"""`BodyLimitMiddleware`: request bodies beyond a stated size are refused before anything parses them.

A request whose ``Content-Length`` names more than ``max_body_bytes`` is answered 413 at
once, its body unread. A body sent without a length (chunked) is counted as it streams
in: the read that crosses the limit raises `BodyTooLarge` (a Starlette
``HTTPException`` with status 413), so the app answers with its own error page while
the parser holds at most one limit's worth; should the app not catch it, the
middleware answers 413 itself. Every 413 closes the connection (``Connection: close``),
so the server does not keep receiving the rest.

Example:
    >>> from starlette.applications import Starlette
    >>> app = BodyLimitMiddleware(Starlette(), max_body_bytes=64 * 1024)
    >>> app.max_body_bytes
    65536
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(HTTPException):
    """A request body over the limit (413), with the sentence that says so.

    Example:
        >>> e = BodyTooLarge(1024); e.status_code, e.detail
        (413, 'The request body is larger than this server accepts (at most 1024 bytes); send less.')
    """

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than this server accepts (at most {max_body_bytes} bytes); send less.", {"Connection": "close"})


class BodyLimitMiddleware:
    """Refuses HTTP request bodies over ``max_body_bytes``: by ``Content-Length`` before
    the app runs, and by counting streamed chunks while the app reads them.

    Use: ``app.add_middleware(BodyLimitMiddleware, max_body_bytes=64 * 1024)``, or wrap an
    ASGI app directly, as the example above does.
    """

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be 0 or more")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lengths = {v.strip() for k, v in scope.get("headers", []) if k.lower() == b"content-length"}
        if lengths:
            if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
                return await _refuse(send, 400, "The Content-Length header is not one whole number of bytes; send the body's length once.")
            if int(lengths.pop()) > self.max_body_bytes:
                return await _refuse(send, 413, BodyTooLarge(self.max_body_bytes).detail)

        received = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def noting_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except BodyTooLarge as exc:
            if started:  # too late for another answer: let the server drop the connection
                raise
            await _refuse(send, 413, exc.detail)


async def _refuse(send: Any, status: int, sentence: str) -> None:
    """A plain-text answer of one sentence, closing the connection."""
    body = (sentence + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
