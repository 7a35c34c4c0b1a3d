"""Request size limits in front of the API: an oversize query string or body is refused before any handler.

A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware`` (which buffers responses and so would hold
back the Server-Sent Events stream). A body announced too large by ``Content-Length`` is refused at once; a
chunked body is read up to the limit before the handler runs.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "MAX_QUERY_BYTES", "RequestLimits"]

MAX_QUERY_BYTES = 8 * 1024  # every filter of the API fits in far less
MAX_BODY_BYTES = 1024 * 1024  # a subscription or a silence is a few kB


class RequestLimits:
    """Answer 414 for a query string over ``max_query`` bytes and 413 for a body over ``max_body`` bytes."""

    def __init__(
        self, app: ASGIApp, max_query: int = MAX_QUERY_BYTES, max_body: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.max_query = max_query
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query:
            await _refuse(send, 414, f"query string longer than {self.max_query} bytes")
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _refuse(send, 413, f"request body larger than {self.max_body} bytes")
            return
        if declared is not None:
            await self.app(scope, receive, send)  # within the limit, as announced; servers enforce the length
            return
        # No length announced (chunked): read the body up to the limit first, then hand it on. The API's
        # bodies are a few kB, so holding one is cheap; a handler never sees a body it would have to cut.
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                await _refuse(send, 413, f"request body larger than {self.max_body} bytes")
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
