"""`AnonymousAccessLog`: an access log line per request with no client address in it.

uvicorn's own access log starts each line with the client's address and port. A server
that tells its users it keeps no addresses (`valign serve`'s chat page) logs with this
middleware instead, to the ``valign.access`` logger, in uvicorn's format with ``-``
where the address was: ``- "POST /v1/chat/completions HTTP/1.1" 200``.

Example:
    >>> AnonymousAccessLog(app=None).logger.name
    'valign.access'
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["AnonymousAccessLog", "ACCESS_LOGGER"]

ACCESS_LOGGER = "valign.access"


class AnonymousAccessLog:
    """ASGI middleware: logs method, path (without the query), HTTP version and status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def noted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            self.logger.info('- "%s %s HTTP/%s" %d', scope.get("method", "?"), scope.get("path", "?"), scope.get("http_version", "1.1"), status)
