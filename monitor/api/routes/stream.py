"""``GET /v1/alerts/stream``: alert changes as Server-Sent Events, resumable with ``Last-Event-ID``.

The only ``async`` route: it polls the store in a worker thread every ``poll_interval`` seconds and ends after
``duration`` seconds, so a proxy never holds a connection for long; clients then reconnect with the last
event id (EventSource does so by itself) and lose nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from monitor.api.dependencies import READ, READ_ERRORS, QueriesDep, StreamLimitsDep
from monitor.api.errors import bad_param
from monitor.api.paging import from_micros, parse_id, to_micros
from monitor.api.schemas import AlertOut
from storage import AlertRecord
from storage.queries import ReadQueries

__all__ = ["StreamPosition", "router"]

KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps idle proxies from closing the connection
RECONNECT_MS = 2000  # how soon EventSource reconnects after the stream ends

router = APIRouter()


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where an SSE client is: the highest alert id sent as opened, and the last resolution sent.

    Rendered as the event ``id:`` (``<alert id>-<resolved_at µs>-<resolved alert id>``); both parts only
    grow, so a client resuming with ``Last-Event-ID`` gets every later change exactly once.
    """

    opened: int
    resolved: tuple[datetime, int] | None

    def render(self) -> str:
        if self.resolved is None:
            return f"{self.opened}-0-0"
        return f"{self.opened}-{to_micros(self.resolved[0])}-{self.resolved[1]}"

    @classmethod
    def parse(cls, text: str) -> StreamPosition:
        opened, micros, resolved_id = (parse_id(part) for part in text.strip().split("-"))
        if micros == 0 and resolved_id == 0:
            return cls(opened, None)
        return cls(opened, (from_micros(micros), resolved_id))


@router.get(
    "/v1/alerts/stream",
    dependencies=READ,
    tags=["alerts"],
    response_class=StreamingResponse,
    responses={
        **READ_ERRORS,
        200: {
            "description": "an event stream: `event: alert`, `id:` to resume from, JSON `data:`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def stream_alerts(
    request: Request,
    queries: QueriesDep,
    limits: StreamLimitsDep,
    last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``event: alert`` with ``{"status": "firing"|"resolved", "alert": {...}}``.

    Without ``Last-Event-ID`` the stream starts with changes after the request; with it, it resumes
    exactly after that event.
    """
    if last_event_id:
        try:
            position = StreamPosition.parse(last_event_id)
        except (ValueError, OverflowError):
            raise bad_param("header", "last-event-id", "not an event id of this stream") from None
    else:
        position = StreamPosition(
            await anyio.to_thread.run_sync(queries.max_alert_id),
            await anyio.to_thread.run_sync(queries.last_resolution),
        )
    return StreamingResponse(
        _events(request, queries, position, limits.poll_interval, limits.duration),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, queries: ReadQueries, position: StreamPosition, interval: float, duration: float
) -> AsyncIterator[str]:
    """Poll the alerts table every ``interval`` s and send what changed, for at most ``duration`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    keepalive_due = loop.time() + KEEPALIVE_SECONDS
    yield f"retry: {RECONNECT_MS}\n\n"
    while loop.time() < deadline:
        if await request.is_disconnected():
            return
        changes = await anyio.to_thread.run_sync(queries.alert_changes, position.opened, position.resolved)
        # Opened first, then resolutions: an alert that opened and resolved between two polls is sent
        # as firing, then resolved. Each event carries the position after it, so a resume is exact.
        for alert in changes.opened:
            position = StreamPosition(alert.id, position.resolved)
            yield _event("firing", alert, position)
        for alert in changes.resolved:
            assert alert.resolved_at is not None
            position = StreamPosition(position.opened, (alert.resolved_at, alert.id))
            yield _event("resolved", alert, position)
        if loop.time() >= keepalive_due:
            keepalive_due = loop.time() + KEEPALIVE_SECONDS
            yield ": keepalive\n\n"
        await asyncio.sleep(interval)


def _event(status: str, alert: AlertRecord, position: StreamPosition) -> str:
    data = {"status": status, "alert": AlertOut.of(alert).model_dump(mode="json")}
    return f"id: {position.render()}\nevent: alert\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
