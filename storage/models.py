"""The ORM schema (SQLAlchemy 2 typed declarative). ``migrations/versions`` must create exactly this.

Conventions:

* every datetime column is :class:`UTCDateTime`: aware UTC in, aware UTC out, on both backends;
* ids are BIGINT on PostgreSQL but plain INTEGER on SQLite, because only ``INTEGER PRIMARY KEY``
  is SQLite's auto-incrementing rowid;
* JSON is JSONB on PostgreSQL;
* constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can refer to them
  by a name that is the same on both backends.

Nothing here is imported by the monitor: the stores turn rows into the plain records of
:mod:`storage.records` (with :func:`storage.rows.record_from_row`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "NAMING_CONVENTION",
    "Alert",
    "AlertCursor",
    "Anomaly",
    "Base",
    "Counter",
    "DeadLetter",
    "Delivery",
    "DeliveryAttempt",
    "DetectorState",
    "Event",
    "MonitoredModel",
    "PendingLabel",
    "Reference",
    "Silence",
    "Subscription",
    "UTCDateTime",
    "Window",
    "WindowResult",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MODEL_NAME_LENGTH = 128
DETECTOR_NAME_LENGTH = 64
HASH_LENGTH = 64  # hex SHA-256


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts aware datetimes and always returns aware UTC.

    PostgreSQL stores ``timestamptz`` natively. SQLite has no time type: SQLAlchemy stores text
    without an offset and reads back naive datetimes, so values are normalised to UTC and the
    offset dropped on the way in (which also keeps text order equal to time order) and UTC is
    re-attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; convert aware ones to UTC."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} refused: storage needs timezone-aware times"
            )
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC whatever the driver handed back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite so that the column is the auto-incrementing rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base: shared metadata with the naming convention and Python-type mapping."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        float: Double(),
        str: Text(),
    }


def _model_fk() -> ForeignKey:
    return ForeignKey("models.name")


class MonitoredModel(Base):
    """A monitored model; ``last_window_end`` is how far its windows have been closed and stored."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_window_end: Mapped[datetime | None]


class Reference(Base):
    """A reference data set the detectors were fitted on (gzip of JSONL events)."""

    __tablename__ = "references"
    __table_args__ = (
        UniqueConstraint("model", "content_hash"),
        CheckConstraint("source IN ('file', 'warmup')", name="source"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), _model_fk())
    source: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    n_events: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DetectorState(Base):
    """A fitted detector, serialised, keyed by everything that determines the fit."""

    __tablename__ = "detector_states"
    __table_args__ = (UniqueConstraint("model", "detector", "reference_id", "params_hash"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), _model_fk())
    detector: Mapped[str] = mapped_column(String(DETECTOR_NAME_LENGTH))
    reference_id: Mapped[int] = mapped_column(Id, ForeignKey("references.id"))
    params_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Window(Base):
    """A closed, evaluated window of one model's events.

    ``closed_at`` is when Sentinel closed and stored the window, by the pipeline's clock (the wall clock, in a
    replay too), never an event time; retention counts a window's age from it, so a backfill of old events is
    kept for the configured period. Its index serves the retention job.
    """

    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("model", "start"),
        Index(None, "model", "end"),
        Index(None, "closed_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), _model_fk())
    start: Mapped[datetime]
    end: Mapped[datetime]
    n_events: Mapped[int] = mapped_column(Integer)
    n_late: Mapped[int] = mapped_column(Integer)
    n_duplicates: Mapped[int] = mapped_column(Integer)
    n_labelled: Mapped[int] = mapped_column(Integer)
    closed_at: Mapped[datetime]


class WindowResult(Base):
    """One detector's result for one window; window bounds are copied for the history queries."""

    __tablename__ = "window_results"
    __table_args__ = (
        UniqueConstraint("window_id", "detector"),
        Index(None, "model", "detector", "window_start"),
        Index(None, "window_start"),
        CheckConstraint("status IN ('ok', 'alert', 'skipped')", name="status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    window_id: Mapped[int] = mapped_column(Id, ForeignKey("windows.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH))
    detector: Mapped[str] = mapped_column(String(DETECTOR_NAME_LENGTH))
    threat: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    statistic: Mapped[float | None]
    threshold: Mapped[float | None]
    p_value: Mapped[float | None]
    n_events: Mapped[int] = mapped_column(Integer)
    evidence: Mapped[dict[str, Any]]
    reason: Mapped[str | None]
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Position in the commit order of result writes (taken from the ``counters`` row as the writing
    # transaction's last statement, so revisions become visible in increasing order even with concurrent
    # writers). The alert engine reads results past its cursor by this. 0: written before alerting existed.
    revision: Mapped[int] = mapped_column(BigInteger, server_default="0", index=True)


class Event(Base):
    """A stored prediction event: the idempotency record and the join key for feedback labels."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "window_id"),)

    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), _model_fk(), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    window_id: Mapped[int] = mapped_column(Id, ForeignKey("windows.id"))
    event_time: Mapped[datetime]
    client_id: Mapped[str | None]
    predicted: Mapped[str | None]
    label: Mapped[str | None]
    labelled_at: Mapped[datetime | None]


class PendingLabel(Base):
    """Feedback that arrived before its prediction was stored; applied when the event is stored."""

    __tablename__ = "pending_labels"

    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    label: Mapped[str]
    received_at: Mapped[datetime]


class Anomaly(Base):
    """An event a detector scored as anomalous in a window."""

    __tablename__ = "anomalies"
    __table_args__ = (
        Index(None, "model", "event_time"),
        Index(None, "model", "score"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH))
    window_id: Mapped[int] = mapped_column(Id, ForeignKey("windows.id", ondelete="CASCADE"))
    detector: Mapped[str] = mapped_column(String(DETECTOR_NAME_LENGTH))
    event_id: Mapped[str] = mapped_column(String(256))
    score: Mapped[float]
    event_time: Mapped[datetime]
    client_id: Mapped[str | None]
    features: Mapped[dict[str, Any] | None]


class Alert(Base):
    """An alert in the contract's shape; one row per fingerprint episode (firing until resolved).

    ``subject``, ``clean_streak`` and ``streak_window`` are the lifecycle's own state: the subject in the
    fingerprint, how many consecutive clean windows were seen since the condition was last observed, and the
    start of the newest window counted (alert or clean), so that a window re-evaluated later is not counted
    twice. At most one alert per fingerprint is firing (a partial unique index).
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index(None, "model", "last_seen"),
        Index(None, "state"),
        Index(
            "uq_alerts_fingerprint_firing",
            "fingerprint",
            unique=True,
            sqlite_where=text("state = 'firing'"),
            postgresql_where=text("state = 'firing'"),
        ),
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity"),
        CheckConstraint("state IN ('firing', 'resolved')", name="state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(HASH_LENGTH), index=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_LENGTH))
    detector: Mapped[str] = mapped_column(String(DETECTOR_NAME_LENGTH))
    threat: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    title: Mapped[str]
    summary: Mapped[str]
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    statistic: Mapped[float | None]
    threshold: Mapped[float | None]
    p_value: Mapped[float | None]
    details: Mapped[dict[str, Any]]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer)
    resolved_at: Mapped[datetime | None]
    subject: Mapped[str] = mapped_column(Text, server_default="")
    clean_streak: Mapped[int] = mapped_column(Integer, server_default="0")
    streak_window: Mapped[datetime | None]


class DeadLetter(Base):
    """A rejected message. ``raw`` may be cut to a maximum; ``size`` is always the original length."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index(None, "received_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime]
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int | None] = mapped_column(Integer)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str]
    model: Mapped[str | None] = mapped_column(String(MODEL_NAME_LENGTH))


class Counter(Base):
    """A named counter; ``window_results`` hands out result revisions (see ``WindowResult.revision``)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class AlertCursor(Base):
    """How far the alert engine has read the results: the highest ``window_results.revision`` processed."""

    __tablename__ = "alert_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class Subscription(Base):
    """A webhook subscription with its filters (empty list = any). Deleted ones stay for the history."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        Index(
            "uq_subscriptions_name_active",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        CheckConstraint("format IN ('native', 'slack', 'alertmanager')", name="format"),
        CheckConstraint("source IN ('config', 'api')", name="source"),
        CheckConstraint("min_severity IN ('info', 'warning', 'critical')", name="min_severity"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    url: Mapped[str]
    secret: Mapped[str | None]
    format: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str]] = mapped_column(JSONType)
    detectors: Mapped[list[str]] = mapped_column(JSONType)
    threats: Mapped[list[str]] = mapped_column(JSONType)
    min_severity: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class Silence(Base):
    """Mutes the notifications of matching alerts between ``starts_at`` and ``ends_at``."""

    __tablename__ = "silences"
    __table_args__ = (
        Index(None, "ends_at"),
        CheckConstraint(
            "fingerprint IS NOT NULL OR model IS NOT NULL OR detector IS NOT NULL", name="matcher"
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    model: Mapped[str | None] = mapped_column(String(MODEL_NAME_LENGTH))
    detector: Mapped[str | None] = mapped_column(String(DETECTOR_NAME_LENGTH))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    comment: Mapped[str]
    created_by: Mapped[str | None]
    created_at: Mapped[datetime]


class Delivery(Base):
    """One notification of one alert to one target (a webhook subscription or the Kafka alerts topic).

    The outbox: written in the transaction that changed the alert, sent later by a delivery worker.
    ``body`` is the exact bytes sent (and signed) on every attempt; ``uuid`` is the delivery id a receiver
    sees on every attempt. ``target`` names the subscription or topic, for per-target ordering.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("uuid"),
        Index(None, "state", "next_attempt_at"),
        Index(None, "alert_id", "target", "id"),
        CheckConstraint("channel IN ('webhook', 'kafka')", name="channel"),
        CheckConstraint("status IN ('firing', 'resolved')", name="status"),
        CheckConstraint("reason IN ('firing', 'escalated', 'repeat', 'resolved')", name="reason"),
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity"),
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36))
    alert_id: Mapped[int] = mapped_column(Id, ForeignKey("alerts.id", ondelete="CASCADE"))
    subscription_id: Mapped[int | None] = mapped_column(Id, ForeignKey("subscriptions.id"))
    topic: Mapped[str | None] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(String(300))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None]


class DeliveryAttempt(Base):
    """One try at sending a delivery, successful or not."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index(None, "delivery_id"),
        CheckConstraint("outcome IN ('delivered', 'retry', 'failed')", name="outcome"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(Id, ForeignKey("deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    duration_ms: Mapped[float]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None]
    outcome: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(128))
