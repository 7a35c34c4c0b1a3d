"""Plain, frozen records that cross the storage boundary (no ORM object ever leaves :mod:`storage`).

Inputs (``*In``/``*Row``/``WindowRecord``) check their datetimes at construction, so a naive
datetime fails where it is made rather than deep inside a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

__all__ = [
    "AlertFields",
    "AlertRecord",
    "AnomalyRecord",
    "AnomalyRow",
    "DeadLetter",
    "DeadLetterIn",
    "EventRow",
    "ReferenceRecord",
    "ResultRow",
    "StoredResultFields",
    "StoredWindow",
    "WindowRecord",
    "WindowResultRecord",
    "WindowSummary",
]


def require_aware(value: datetime, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a timezone-aware datetime.

    A naive datetime is ambiguous (local time? UTC?) and would be stored wrongly on one of
    the two backends, so it is refused outright.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {value.isoformat()})")


AlertId = TypeVar("AlertId", bound=int | None)


# --------------------------------------------------------------------------- inputs


class ChecksAwareTimes:
    """Base of the input records: a naive datetime in a field named by ``aware_fields`` is refused.

    The check runs at construction, so it fails where the record is made, naming the record and the field.
    """

    __slots__ = ()
    aware_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.aware_fields:
            require_aware(getattr(self, name), f"{type(self).__name__}.{name}")


@dataclass(frozen=True, slots=True)
class DeadLetterIn(ChecksAwareTimes):
    """A message that could not be accepted, as received from the broker."""

    aware_fields = ("received_at",)

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    raw: bytes
    reason: str
    model: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow(ChecksAwareTimes):
    """One prediction event assigned to a window. ``label`` is ground truth if already known."""

    aware_fields = ("event_time",)

    event_id: str
    event_time: datetime
    client_id: str | None
    predicted: str | None
    label: str | None


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One detector's verdict on a window."""

    detector: str
    threat: str
    status: str  # "ok" | "alert" | "skipped"
    n_events: int
    statistic: float | None
    threshold: float | None
    p_value: float | None
    evidence: dict[str, Any]
    reason: str | None


@dataclass(frozen=True, slots=True)
class AnomalyRow(ChecksAwareTimes):
    """One event a detector scored as anomalous."""

    aware_fields = ("event_time",)

    detector: str
    event_id: str
    score: float
    event_time: datetime
    client_id: str | None
    features: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DetectorStateRow:
    """A stateful detector's learned state after evaluating a window (per-client histories, ...)."""

    detector: str
    reference_id: int
    params_hash: str
    state: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WindowRecord(ChecksAwareTimes):
    """Everything the monitor knows about one closed window, stored in one transaction."""

    aware_fields = ("start", "end", "closed_at")

    model: str
    start: datetime
    end: datetime
    n_late: int
    events: Sequence[EventRow]
    results: Sequence[ResultRow]
    anomalies: Sequence[AnomalyRow]
    closed_at: datetime
    n_events: int | None = None  # None -> len(events)
    # Saved in the window's transaction: a restart resumes from the state that produced the stored results.
    detector_states: Sequence[DetectorStateRow] = ()

    def __post_init__(self) -> None:
        ChecksAwareTimes.__post_init__(
            self
        )  # not super(): slots=True makes a new class, which super() misses
        if self.end <= self.start:
            raise ValueError(f"window end {self.end.isoformat()} is not after start {self.start.isoformat()}")


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """Outcome of :meth:`storage.Store.store_window`.

    ``n_events`` and ``n_duplicates`` are the window's totals as stored after the call.
    ``created`` is False when the window existed already (whether or not this call added to it).
    """

    id: int
    model: str
    start: datetime
    end: datetime
    n_events: int
    n_duplicates: int
    created: bool


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """A stored window's counters (see :meth:`storage.Store.windows`)."""

    id: int
    model: str
    start: datetime
    end: datetime
    n_events: int
    n_late: int
    n_duplicates: int
    n_labelled: int
    closed_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stored dead letter. ``size`` is the original length; ``raw`` may be cut (``truncated``)."""

    id: int
    received_at: datetime
    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    raw: bytes
    size: int
    truncated: bool
    reason: str
    model: str | None


@dataclass(frozen=True, slots=True)
class ReferenceRecord:
    """A stored reference data set (``payload`` is gzip-compressed JSONL events)."""

    id: int
    model: str
    source: str  # "file" | "warmup"
    content_hash: str
    n_events: int
    payload: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredResultFields:
    """What every shape of a stored detector result holds: the verdict with its window's bounds."""

    id: int
    window_id: int
    model: str
    detector: str
    threat: str
    status: str  # "ok" | "alert" | "skipped"
    statistic: float | None
    threshold: float | None
    p_value: float | None
    n_events: int
    evidence: dict[str, Any]
    reason: str | None
    window_start: datetime
    window_end: datetime


@dataclass(frozen=True, slots=True)
class WindowResultRecord(StoredResultFields):
    """A stored detector result with its window's bounds (see :meth:`storage.Store.window_results`)."""

    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """A stored anomalous event."""

    id: int
    window_id: int
    model: str
    detector: str
    event_id: str
    score: float
    event_time: datetime
    client_id: str | None
    features: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AlertFields(Generic[AlertId]):
    """What every shape of an alert holds: the alert as the API and the notifications show it.

    Generic in the type of ``id`` only, because one shape (the alert engine's
    :class:`storage.AlertState`) also holds alerts that are not stored yet (``id`` None).
    """

    id: AlertId
    fingerprint: str
    model: str
    detector: str
    threat: str
    severity: str  # "info" | "warning" | "critical"
    state: str  # "firing" | "resolved"
    title: str
    summary: str
    window_start: datetime | None
    window_end: datetime | None
    statistic: float | None
    threshold: float | None
    p_value: float | None
    details: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    count: int
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class AlertRecord(AlertFields[int]):
    """A stored alert (see :meth:`storage.AlertStore.list_alerts`)."""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (datetimes left as datetimes)."""
        return asdict(self)
