"""The HTTP API of contract section 5, as a FastAPI app over the stores.

:func:`create_app` takes the stores and the settings, nothing global, so tests build it on any database and
the daemon serves it with uvicorn. Handlers are plain ``def`` functions: the stores block, so FastAPI runs
them in its thread pool; only the SSE stream is ``async`` (it polls the store in a worker thread).

Every time is RFC 3339 UTC (``Z``) on the way out and must carry an offset on the way in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from monitor.alerting.delivery import WebhookGuard
from monitor.api.auth import Scope, TokenChecker
from monitor.api.dashboard import dashboard_router
from monitor.api.limits import RequestLimits
from storage.queries import ApiQueries
from monitor.api.settings import ApiSettings
from monitor.metrics import HistogramSnapshot
from storage import AlertStore, SilenceIn, StorageError, StorageUnavailable, Store, SubscriptionIn
from storage.alert_store import SEVERITIES
from storage.crypto import SecretKeyError
from storage.records import AlertRecord, WindowResultRecord

__all__ = ["RuntimeStatus", "create_app"]

log = logging.getLogger("sentinel.api")

MAX_LIMIT = 1000
PREVIEW_CHARS = 2000  # of a dead letter's payload shown as text; the full bytes are in raw_base64
DbId = Annotated[int, Path(ge=1, lt=2**63, description="a database id")]
Threat = Literal["drift", "privacy", "confidentiality", "integrity", "robustness", "backdoor"]


# ------------------------------------------------------------------------------------ runtime status


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """What the daemon knows that the database does not: for ``/readyz``, ``/metrics`` and ``/v1/models``.

    ``broker_connected``/``partitions_assigned`` are None when there is no broker (e.g. tests, replay).
    """

    state: str | None = None  # the daemon's run state; ready only while "running"
    broker_connected: bool | None = None
    partitions_assigned: int | None = None
    models_ready: bool = True
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    events_by_model: Mapping[tuple[str, ...], int] = field(default_factory=dict)  # (model, outcome) -> count
    consumer_lag: Mapping[tuple[str, int], int] = field(
        default_factory=dict
    )  # (topic, partition) -> messages
    # metric name -> label value (model or detector id) -> histogram
    histograms: Mapping[str, Mapping[str, HistogramSnapshot]] = field(default_factory=dict)


StatusProvider = Callable[[], RuntimeStatus]


# ------------------------------------------------------------------------------------ response models


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:  # storage returns aware UTC; be safe rather than mislabel a naive time
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


UtcTime = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339, UTC (Z)"}),
]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: report them as null (storage already stores NaN as NULL)."""
    return None if value is None or not math.isfinite(value) else value


FiniteFloat = Annotated[float | None, PlainSerializer(_finite, return_type=float | None)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertOut(_Out):
    """An alert in the contract's shape (section 4)."""

    id: int
    fingerprint: str
    model: str
    detector: str
    threat: str
    severity: Literal["info", "warning", "critical"]
    state: Literal["firing", "resolved"]
    title: str
    summary: str
    window_start: UtcTime | None
    window_end: UtcTime | None
    statistic: FiniteFloat
    threshold: FiniteFloat
    p_value: FiniteFloat
    details: dict[str, Any]
    first_seen: UtcTime
    last_seen: UtcTime
    count: int
    resolved_at: UtcTime | None

    @classmethod
    def of(cls, alert: AlertRecord) -> AlertOut:
        return cls(**alert.as_dict())


class AlertPage(_Out):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as cursor= for the next (older) page; null at the end")


class AttemptOut(_Out):
    id: int
    attempt: int
    started_at: UtcTime
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: str
    worker: str | None


class DeliveryOut(_Out):
    """One notification of the alert to one target; the body and the subscription's secret are not shown."""

    id: int
    uuid: str
    target: str
    channel: str
    subscription_id: int | None
    topic: str | None
    status: str
    reason: str
    severity: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: UtcTime
    created_at: UtcTime
    finished_at: UtcTime | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[AttemptOut]


class AlertDetail(AlertOut):
    deliveries: list[DeliveryOut]


class WindowResultOut(_Out):
    id: int
    window_id: int
    model: str
    detector: str
    threat: str
    status: Literal["ok", "alert", "skipped"]
    statistic: FiniteFloat
    threshold: FiniteFloat
    p_value: FiniteFloat
    n_events: int
    evidence: dict[str, Any]
    reason: str | None
    window_start: UtcTime
    window_end: UtcTime
    created_at: UtcTime
    updated_at: UtcTime

    @classmethod
    def of(cls, r: WindowResultRecord) -> WindowResultOut:
        return cls(**{name: getattr(r, name) for name in WindowResultRecord.__dataclass_fields__})


class WindowPage(_Out):
    items: list[WindowResultOut]
    next_cursor: str | None


class AnomalyOut(_Out):
    id: int
    window_id: int
    model: str
    detector: str
    event_id: str
    score: float
    event_time: UtcTime
    client_id: str | None
    features: dict[str, Any] | None


class AnomalyList(_Out):
    items: list[AnomalyOut]


class ReferenceOut(_Out):
    id: int
    source: str
    content_hash: str
    n_events: int
    created_at: UtcTime


class LastWindowOut(_Out):
    id: int
    start: UtcTime
    end: UtcTime
    n_events: int
    n_late: int
    n_duplicates: int
    n_labelled: int
    closed_at: UtcTime


class ModelOut(_Out):
    name: str
    registered_at: UtcTime
    reference: ReferenceOut | None
    last_window: LastWindowOut | None
    runtime: dict[str, Any] | None = Field(
        description="phase, open windows, ... as the running daemon sees them (null when not loaded)"
    )


class ModelList(_Out):
    items: list[ModelOut]


class SubscriptionCreate(BaseModel):
    """A webhook subscription to create; empty filter lists match everything."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=128, description="default: generated")
    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret: str | None = Field(None, min_length=1, description="HMAC key for X-Sentinel-Signature")
    format: Literal["native", "slack", "alertmanager"] = "native"
    models: list[Annotated[str, Field(min_length=1)]] = []
    detectors: list[Annotated[str, Field(min_length=1)]] = []
    threats: list[Threat] = []
    min_severity: Literal["info", "warning", "critical"] = "info"


class SubscriptionOut(_Out):
    """A subscription; the secret is never returned, ``has_secret`` says whether one is set."""

    id: int
    name: str
    url: str
    format: str
    models: list[str]
    detectors: list[str]
    threats: list[str]
    min_severity: str
    source: Literal["config", "api"]
    has_secret: bool
    created_at: UtcTime
    updated_at: UtcTime


class SubscriptionList(_Out):
    items: list[SubscriptionOut]


class SilenceCreate(BaseModel):
    """Mute the alerts matching every given matcher (at least one) from ``starts_at`` (default now)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [{"required": ["fingerprint"]}, {"required": ["model"]}, {"required": ["detector"]}]
        },
    )

    ends_at: AwareDatetime
    starts_at: AwareDatetime | None = None
    fingerprint: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)
    detector: str | None = Field(None, min_length=1)
    comment: str = Field("", max_length=2000)


class SilenceOut(_Out):
    id: int
    fingerprint: str | None
    model: str | None
    detector: str | None
    starts_at: UtcTime
    ends_at: UtcTime
    comment: str
    created_by: str | None
    created_at: UtcTime


class SilenceList(_Out):
    items: list[SilenceOut]


class DeadLetterOut(_Out):
    id: int
    received_at: UtcTime
    topic: str
    partition: int | None
    offset: int | None
    model: str | None
    reason: str
    size: int = Field(description="the original message size in bytes")
    truncated: bool = Field(description="raw_base64 holds only the first bytes (see size)")
    key_base64: str | None
    raw_base64: str
    preview: str | None = Field(description="the payload as UTF-8 text (cut), null when it is not UTF-8")


class DeadLetterList(_Out):
    items: list[DeadLetterOut]


class Health(_Out):
    status: Literal["ok"]


class Readiness(_Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="each check: 'ok', or why it failed")


class ErrorOut(_Out):
    detail: Any


# ------------------------------------------------------------------------------------ cursors


def _bad_param(where: str, name: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's validation errors, naming the parameter."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": [where, name], "msg": message, "type": "value_error"}],
    )


def _encode(text: str) -> str:
    # Opaque to clients: they must pass it back, not construct it.
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor") from exc


def _alert_cursor(alert_id: int) -> str:
    return _encode(f"a:{alert_id}")


def _parse_alert_cursor(cursor: str) -> int:
    try:
        kind, _, value = _decode(cursor).partition(":")
        if kind != "a":
            raise ValueError("wrong kind")
        return _id(value)
    except ValueError:
        raise _bad_param("query", "cursor", "invalid cursor (pass back a next_cursor unchanged)") from None


def _window_cursor(r: WindowResultRecord) -> str:
    micros = _micros(r.window_start)
    return _encode(f"w:{micros}:{r.id}")


def _parse_window_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        kind, micros, last_id = _decode(cursor).split(":")
        if kind != "w":
            raise ValueError("wrong kind")
        return _from_micros(int(micros)), _id(last_id)
    except (ValueError, OverflowError, OSError):
        raise _bad_param("query", "cursor", "invalid cursor (pass back a next_cursor unchanged)") from None


def _id(text: str) -> int:
    """A database id from a cursor: a 64-bit positive integer (larger ones would fail in SQL, not here)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError("out of range")
    return value


def _micros(value: datetime) -> int:
    """Microseconds since the epoch: exact (a float timestamp would round)."""
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


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
        return f"{self.opened}-{_micros(self.resolved[0])}-{self.resolved[1]}"

    @classmethod
    def parse(cls, text: str) -> StreamPosition:
        opened, micros, resolved_id = (_id(part) for part in text.strip().split("-"))
        if micros == 0 and resolved_id == 0:
            return cls(opened, None)
        return cls(opened, (_from_micros(micros), resolved_id))


# ------------------------------------------------------------------------------------ the app

# Module level, not inside create_app: with postponed annotations FastAPI resolves them in module globals.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
# Names as the contract allows them: a NUL byte or other control characters never reach SQL (PostgreSQL
# refuses NUL in text parameters, which would otherwise be a 500).
ModelFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="a model id")]
DetectorFilter = Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,64}$", description="a detector id")]
Cursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{1,200}$",
        description="opaque: a next_cursor of the previous page, passed back unchanged (422 otherwise)",
    ),
]
Since = Annotated[AwareDatetime | None, Query(description="RFC 3339 with an offset, inclusive")]
Until = Annotated[AwareDatetime | None, Query(description="RFC 3339 with an offset, exclusive")]


def create_app(
    store: Store,
    alert_store: AlertStore,
    settings: ApiSettings,
    *,
    status_provider: StatusProvider | None = None,
    stream_poll_interval: float = 0.5,
    stream_duration: float = 300.0,
    webhook_guard: WebhookGuard | None = None,
) -> FastAPI:
    """The API over ``store``/``alert_store`` (same engine); ``status_provider`` adds the daemon's view.

    An SSE connection ends after ``stream_duration`` seconds; clients reconnect with ``Last-Event-ID``
    (EventSource does so by itself), which bounds how long a proxy holds a connection without losing events.
    """
    queries = ApiQueries(store.engine)
    # Subscriptions to internal addresses are refused here already (and again at each delivery).
    guard = webhook_guard or WebhookGuard()
    checker = TokenChecker(settings)
    read = [Depends(checker.require(Scope.READ))]
    admin = [Depends(checker.require(Scope.ADMIN))]
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "missing or invalid bearer token"},
        422: {"model": ErrorOut, "description": "an invalid parameter (named in detail[].loc)"},
        503: {"model": ErrorOut, "description": "the database is unavailable; retry later"},
    }
    admin_errors: dict[int | str, dict[str, Any]] = {
        **errors,
        403: {"model": ErrorOut, "description": "the token lacks the admin scope"},
    }

    app = FastAPI(
        title="Sentinel",
        version="1",
        description="Monitoring of deployed ML models: alerts, window results, anomalies, subscriptions.",
    )

    app.add_middleware(RequestLimits)

    def runtime() -> RuntimeStatus | None:
        return status_provider() if status_provider is not None else None

    # -------------------------------------------------------------------- errors

    @app.exception_handler(StorageUnavailable)
    async def _unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("database unavailable serving %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503)

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
        log.error("storage error serving %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client: it would leak internals. The log has it.
        log.error("unexpected error serving %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # -------------------------------------------------------------------- probes and metrics

    @app.get("/healthz", response_model=Health, tags=["probes"])
    def healthz() -> Health:
        """Liveness: 200 while the process serves requests."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["probes"],
        responses={503: {"model": Readiness, "description": "a check failed"}},
    )
    def readyz() -> JSONResponse:
        """Readiness: the database answers, the broker is connected with partitions, models are fitted."""
        checks: dict[str, str] = {}
        try:
            store.ping()
            checks["database"] = "ok"
        except StorageError as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        status_now = runtime()
        if status_now is not None:
            if status_now.state is not None:
                checks["daemon"] = "ok" if status_now.state == "running" else status_now.state
            if status_now.broker_connected is not None:
                checks["broker"] = "ok" if status_now.broker_connected else "not connected"
            if status_now.partitions_assigned is not None:
                checks["partitions"] = (
                    "ok" if status_now.partitions_assigned > 0 else "no partitions assigned"
                )
            if status_now.models_ready:
                checks["models"] = "ok"
            else:
                waiting = sorted(name for name, m in status_now.models.items() if m.get("phase") != "ready")
                checks["models"] = "not fitted yet: " + ", ".join(waiting)
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "not_ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["probes"])
    def metrics() -> PlainTextResponse:
        """Prometheus metrics (text exposition format 0.0.4)."""
        return PlainTextResponse(
            _render_metrics(queries, runtime()), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    # -------------------------------------------------------------------- models

    @app.get("/v1/models", response_model=ModelList, dependencies=read, responses=errors, tags=["models"])
    def list_models() -> ModelList:
        """Monitored models: the latest reference, the last stored window and the daemon's runtime view."""
        status_now = runtime()
        items = []
        for row in queries.models():
            last = store.windows(row.name, limit=1)
            reference = (
                None
                if row.reference_id is None
                else ReferenceOut(
                    id=row.reference_id,
                    source=row.reference_source or "",
                    content_hash=row.reference_hash or "",
                    n_events=row.reference_events or 0,
                    created_at=row.reference_created_at or row.created_at,
                )
            )
            live = None if status_now is None else status_now.models.get(row.name)
            items.append(
                ModelOut(
                    name=row.name,
                    registered_at=row.created_at,
                    reference=reference,
                    last_window=None
                    if not last
                    else LastWindowOut(**{k: getattr(last[0], k) for k in LastWindowOut.model_fields}),
                    runtime=None if live is None else dict(live),
                )
            )
        return ModelList(items=items)

    # -------------------------------------------------------------------- alerts

    @app.get("/v1/alerts", response_model=AlertPage, dependencies=read, responses=errors, tags=["alerts"])
    def list_alerts(
        model: ModelFilter = None,
        detector: DetectorFilter = None,
        threat: Threat | None = None,
        severity: Literal["info", "warning", "critical"] | None = None,
        state: Literal["firing", "resolved"] | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> AlertPage:
        """Alerts newest first (by id), ``since <= last_seen < until``; page with ``next_cursor``.

        Pages are keyed on the alert id, which never changes, so alerts opened between two page requests
        appear before the first page and never shift later pages.
        """
        before = None if cursor is None else _parse_alert_cursor(cursor)
        rows = queries.alerts_page(
            model=model,
            detector=detector,
            threat=threat,
            severity=severity,
            state=state,
            since=since,
            until=until,
            before_id=before,
            limit=limit + 1,  # one more tells whether another page exists
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return AlertPage(
            items=[AlertOut.of(a) for a in rows],
            next_cursor=_alert_cursor(rows[-1].id) if more else None,
        )

    @app.get(
        "/v1/alerts/stream",
        dependencies=read,
        tags=["alerts"],
        response_class=StreamingResponse,
        responses={
            **errors,
            200: {
                "description": "an event stream: `event: alert`, `id:` to resume from, JSON `data:`",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
    )
    async def stream_alerts(
        request: Request,
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
                raise _bad_param("header", "last-event-id", "not an event id of this stream") from None
        else:
            position = StreamPosition(
                await anyio.to_thread.run_sync(queries.max_alert_id),
                await anyio.to_thread.run_sync(queries.last_resolution),
            )
        return StreamingResponse(
            _sse(request, queries, position, stream_poll_interval, stream_duration),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/alerts/{alert_id}",
        response_model=AlertDetail,
        dependencies=read,
        responses={**errors, 404: {"model": ErrorOut, "description": "no such alert"}},
        tags=["alerts"],
    )
    def get_alert(alert_id: DbId) -> AlertDetail:
        """One alert with its deliveries and each delivery's attempts."""
        alert = alert_store.alert(alert_id)
        if alert is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert with id {alert_id}")
        attempts: dict[int, list[AttemptOut]] = {}
        for a in alert_store.attempts(alert_id=alert_id):
            attempts.setdefault(a.delivery_id, []).append(
                AttemptOut(**{k: getattr(a, k) for k in AttemptOut.model_fields})
            )
        deliveries = [
            DeliveryOut(
                **{k: getattr(d, k) for k in DeliveryOut.model_fields if k != "attempt_log"},
                attempt_log=attempts.get(d.id, []),
            )
            for d in alert_store.deliveries(alert_id=alert_id, limit=MAX_LIMIT)
        ]
        return AlertDetail(**alert.as_dict(), deliveries=deliveries)

    # -------------------------------------------------------------------- windows, anomalies

    @app.get("/v1/windows", response_model=WindowPage, dependencies=read, responses=errors, tags=["results"])
    def list_windows(
        model: ModelFilter = None,
        detector: DetectorFilter = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> WindowPage:
        """Per-window detector results, latest window first; ``since <= window_start < until``."""
        after = None if cursor is None else _parse_window_cursor(cursor)
        rows = queries.results_page(
            model=model, detector=detector, since=since, until=until, after=after, limit=limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return WindowPage(
            items=[WindowResultOut.of(r) for r in rows],
            next_cursor=_window_cursor(rows[-1]) if more else None,
        )

    @app.get(
        "/v1/anomalies", response_model=AnomalyList, dependencies=read, responses=errors, tags=["results"]
    )
    def list_anomalies(
        model: ModelFilter = None, since: Since = None, until: Until = None, limit: Limit = 100
    ) -> AnomalyList:
        """The most anomalous events, highest score first; ``since <= event_time < until``."""
        rows = store.anomalies(model=model, since=since, until=until, limit=limit)
        return AnomalyList(
            items=[AnomalyOut(**{k: getattr(r, k) for k in AnomalyOut.model_fields}) for r in rows]
        )

    # -------------------------------------------------------------------- dead letters

    @app.get(
        "/v1/dead-letters",
        response_model=DeadLetterList,
        dependencies=read,
        responses=errors,
        tags=["results"],
    )
    def list_dead_letters(limit: Limit = 100) -> DeadLetterList:
        """Rejected messages, newest first, with their reasons and raw bytes (base64)."""
        items = []
        for d in store.dead_letters(limit=limit):
            try:
                preview: str | None = bytes(d.raw).decode("utf-8")[:PREVIEW_CHARS]
            except UnicodeDecodeError:
                preview = None
            items.append(
                DeadLetterOut(
                    id=d.id,
                    received_at=d.received_at,
                    topic=d.topic,
                    partition=d.partition,
                    offset=d.offset,
                    model=d.model,
                    reason=d.reason,
                    size=d.size,
                    truncated=d.truncated,
                    key_base64=None if d.key is None else base64.b64encode(d.key).decode(),
                    raw_base64=base64.b64encode(d.raw).decode(),
                    preview=preview,
                )
            )
        return DeadLetterList(items=items)

    # -------------------------------------------------------------------- subscriptions

    def _subscription_out(record: Any) -> SubscriptionOut:
        values = record.as_dict()
        return SubscriptionOut(**{k: values[k] for k in SubscriptionOut.model_fields})

    @app.get(
        "/v1/subscriptions",
        response_model=SubscriptionList,
        dependencies=read,
        responses=errors,
        tags=["subscriptions"],
    )
    def list_subscriptions() -> SubscriptionList:
        """The active webhook subscriptions (secrets never shown)."""
        return SubscriptionList(items=[_subscription_out(s) for s in alert_store.subscriptions()])

    @app.post(
        "/v1/subscriptions",
        response_model=SubscriptionOut,
        status_code=status.HTTP_201_CREATED,
        dependencies=admin,
        responses={**admin_errors, 409: {"model": ErrorOut, "description": "the name is taken"}},
        tags=["subscriptions"],
    )
    def create_subscription(body: SubscriptionCreate) -> SubscriptionOut:
        """Create a webhook subscription (admin)."""
        try:
            guard.check(body.url, unresolved_ok=True)
            wanted = SubscriptionIn(
                name=body.name or f"api-{uuid.uuid4().hex[:12]}",
                url=body.url,
                secret=body.secret,
                format=body.format,
                models=tuple(body.models),
                detectors=tuple(body.detectors),
                threats=tuple(body.threats),
                min_severity=body.min_severity,
            )
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[{"loc": ["body"], "msg": str(exc), "type": "value_error"}],
            ) from None
        try:
            created = alert_store.create_subscription(wanted, datetime.now(UTC))
        except SecretKeyError as exc:  # no key to seal secrets with (PostgreSQL without alerting.secret_key)
            log.error("cannot store a subscription secret: %s", exc)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
        except ValueError as exc:  # an active subscription has that name
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return _subscription_out(created)

    @app.get(
        "/v1/subscriptions/{subscription_id}",
        response_model=SubscriptionOut,
        dependencies=read,
        responses={**errors, 404: {"model": ErrorOut, "description": "no such active subscription"}},
        tags=["subscriptions"],
    )
    def get_subscription(subscription_id: DbId) -> SubscriptionOut:
        """One active subscription (secret never shown)."""
        found = alert_store.subscription(subscription_id)
        if found is None or found.deleted_at is not None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"no active subscription with id {subscription_id}"
            )
        return _subscription_out(found)

    @app.delete(
        "/v1/subscriptions/{subscription_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=admin,
        responses={**admin_errors, 404: {"model": ErrorOut, "description": "no such active subscription"}},
        tags=["subscriptions"],
    )
    def delete_subscription(subscription_id: DbId) -> Response:
        """Delete a subscription (admin); its pending deliveries are given up."""
        if not alert_store.delete_subscription(subscription_id, datetime.now(UTC)):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"no active subscription with id {subscription_id}"
            )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # -------------------------------------------------------------------- silences

    @app.get(
        "/v1/silences", response_model=SilenceList, dependencies=read, responses=errors, tags=["silences"]
    )
    def list_silences(
        active: Annotated[bool, Query(description="only the silences in force now")] = False,
    ) -> SilenceList:
        """Silences in id order."""
        rows = alert_store.silences(active_at=datetime.now(UTC) if active else None)
        return SilenceList(items=[SilenceOut(**s.as_dict()) for s in rows])

    @app.post(
        "/v1/silences",
        response_model=SilenceOut,
        status_code=status.HTTP_201_CREATED,
        dependencies=admin,
        responses=admin_errors,
        tags=["silences"],
    )
    def create_silence(body: SilenceCreate) -> SilenceOut:
        """Create a silence (admin)."""
        try:
            wanted = SilenceIn(
                ends_at=body.ends_at,
                starts_at=body.starts_at,
                fingerprint=body.fingerprint,
                model=body.model,
                detector=body.detector,
                comment=body.comment,
                created_by="api",
            )
            created = alert_store.create_silence(wanted, datetime.now(UTC))
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[{"loc": ["body"], "msg": str(exc), "type": "value_error"}],
            ) from None
        return SilenceOut(**created.as_dict())

    @app.delete(
        "/v1/silences/{silence_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=admin,
        responses={**admin_errors, 404: {"model": ErrorOut, "description": "no such silence"}},
        tags=["silences"],
    )
    def delete_silence(silence_id: DbId) -> Response:
        """Delete a silence (admin)."""
        if not alert_store.delete_silence(silence_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no silence with id {silence_id}")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # The dashboard page and its assets: no data, so no token (the page sends one to /v1).
    app.include_router(dashboard_router())

    return app


# ------------------------------------------------------------------------------------ SSE


def _sse_event(status_: str, alert: AlertRecord, position: StreamPosition) -> str:
    data = {"status": status_, "alert": AlertOut.of(alert).model_dump(mode="json")}
    return f"id: {position.render()}\nevent: alert\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _sse(
    request: Request, queries: ApiQueries, position: StreamPosition, interval: float, duration: float
) -> AsyncIterator[str]:
    """Poll the alerts table every ``interval`` s and send what changed, for at most ``duration`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    keepalive_due = loop.time() + 15.0
    yield "retry: 2000\n\n"  # how soon EventSource reconnects after the stream ends
    while loop.time() < deadline:
        if await request.is_disconnected():
            return
        changes = await anyio.to_thread.run_sync(queries.alert_changes, position.opened, position.resolved)
        # Opened first, then resolutions: an alert that opened and resolved between two polls is sent
        # as firing, then resolved. Each event carries the position after it, so a resume is exact.
        for alert in changes.opened:
            position = StreamPosition(alert.id, position.resolved)
            yield _sse_event("firing", alert, position)
        for alert in changes.resolved:
            assert alert.resolved_at is not None
            position = StreamPosition(position.opened, (alert.resolved_at, alert.id))
            yield _sse_event("resolved", alert, position)
        if loop.time() >= keepalive_due:
            keepalive_due = loop.time() + 15.0
            yield ": keepalive\n\n"  # keeps idle proxies from closing the connection
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------ metrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_metrics(queries: ApiQueries, status_now: RuntimeStatus | None) -> str:
    """The Prometheus text format, written directly: a handful of series, no registry state to share."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")

    counters = dict(status_now.counters) if status_now is not None else {}
    for key, help_text in (
        ("consumed", "Messages consumed from the broker."),
        ("accepted", "Events accepted into windows."),
        ("rejected", "Messages rejected to the dead-letter store."),
        ("duplicates", "Redelivered events counted once."),
        ("late", "Events that arrived after their window closed."),
    ):
        family(f"sentinel_events_{key}_total", "counter", help_text, [({}, float(counters.get(key, 0)))])

    by_model = dict(status_now.events_by_model) if status_now is not None else {}
    family(
        "sentinel_model_events_total",
        "counter",
        "Events per model, accepted into windows or rejected (dead-lettered; model '' when unknown).",
        [({"model": key[0], "outcome": key[1]}, float(n)) for key, n in sorted(by_model.items())],
    )
    lag = dict(status_now.consumer_lag) if status_now is not None else {}
    family(
        "sentinel_consumer_lag",
        "gauge",
        "Messages in each owned partition not read yet (high watermark minus the next offset to read).",
        [({"topic": t, "partition": str(p)}, float(n)) for (t, p), n in sorted(lag.items())],
    )
    histograms = dict(status_now.histograms) if status_now is not None else {}
    for name, label_name, help_text in (
        ("sentinel_window_close_seconds", "model", "Time to evaluate and store one closed window."),
        ("sentinel_detector_seconds", "detector", "Time one detector takes to evaluate one window."),
    ):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} histogram")
        for label, snap in sorted(histograms.get(name, {}).items()):
            base = f'{label_name}="{_escape(label)}"'
            for bound, count in zip((*snap.bounds, math.inf), snap.cumulative, strict=True):
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                lines.append(f'{name}_bucket{{{base},le="{le}"}} {count}')
            lines.append(f"{name}_sum{{{base}}} {snap.total:.6g}")
            lines.append(f"{name}_count{{{base}}} {snap.count}")

    database_up = 1.0
    try:
        alert_counts = queries.alert_counts()
        deliveries = queries.delivery_counts()
        dead = queries.dead_letter_count()
    except StorageError:
        database_up, alert_counts, deliveries, dead = 0.0, {}, {}, 0
    family("sentinel_database_up", "gauge", "Whether the database answered this scrape.", [({}, database_up)])
    family(
        "sentinel_alerts",
        "gauge",
        "Stored alerts by state and severity.",
        [
            ({"state": st, "severity": sev}, float(alert_counts.get((st, sev), 0)))
            for st in ("firing", "resolved")
            for sev in SEVERITIES
        ],
    )
    family(
        "sentinel_deliveries",
        "gauge",
        "Webhook/Kafka notifications by delivery state.",
        [({"state": st}, float(deliveries.get(st, 0))) for st in ("pending", "delivered", "failed")],
    )
    family(
        "sentinel_deliveries_pending",
        "gauge",
        "Notifications waiting to be delivered.",
        [({}, float(deliveries.get("pending", 0)))],
    )
    family("sentinel_dead_letters", "gauge", "Stored dead letters.", [({}, float(dead))])
    models = dict(status_now.models) if status_now is not None else {}
    family(
        "sentinel_open_windows",
        "gauge",
        "Windows open in memory per model.",
        [({"model": name}, float(m.get("open_windows", 0))) for name, m in sorted(models.items())],
    )
    family(
        "sentinel_model_ready",
        "gauge",
        "1 when the model's detectors are fitted.",
        [({"model": name}, 1.0 if m.get("phase") == "ready" else 0.0) for name, m in sorted(models.items())],
    )
    return "\n".join(lines) + "\n"
