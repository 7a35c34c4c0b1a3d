"""The HTTP API's request and response bodies as pydantic models (named as in the OpenAPI document).

Every time is RFC 3339 UTC (``Z``) on the way out (:data:`UtcTime`) and must carry an offset on the way in;
JSON has no NaN or infinity, so statistics are written as null then (:data:`FiniteFloat`). Response models
forbid extra fields, so a field added to a record never leaks out unreviewed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

__all__ = [
    "AlertDetail",
    "AlertOut",
    "AlertPage",
    "AnomalyList",
    "AnomalyOut",
    "AttemptOut",
    "DeadLetterList",
    "DeadLetterOut",
    "DeliveryOut",
    "ErrorOut",
    "FiniteFloat",
    "Health",
    "LastWindowOut",
    "ModelList",
    "ModelOut",
    "Readiness",
    "ReferenceOut",
    "Severity",
    "SilenceCreate",
    "SilenceList",
    "SilenceOut",
    "SubscriptionCreate",
    "SubscriptionList",
    "SubscriptionOut",
    "Threat",
    "UtcTime",
    "WindowPage",
    "WindowResultOut",
]

Threat = Literal["drift", "privacy", "confidentiality", "integrity", "robustness", "backdoor"]
Severity = Literal["info", "warning", "critical"]


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

    @classmethod
    def of(cls, source: Any, **overrides: Any) -> Self:
        """The model from ``source``'s attributes of the same names as its fields, ``overrides`` winning."""
        return cls(
            **{
                name: overrides[name] if name in overrides else getattr(source, name)
                for name in cls.model_fields
            }
        )


class AlertOut(_Out):
    """An alert as the API, the webhook body and `sentinel alerts --json` all show it."""

    id: int
    fingerprint: str
    model: str
    detector: str
    threat: str
    severity: Severity
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
    min_severity: Severity = "info"


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
