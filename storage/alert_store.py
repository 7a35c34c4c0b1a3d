"""Storage for alerting: alerts and their lifecycle state, the engine's cursor, the webhook outbox
(deliveries and attempts), subscriptions and silences. :class:`AlertStore` runs on the same engine as
:class:`storage.Store`; like it, every public method is one transaction and raises
:class:`~storage.errors.StorageError` (:class:`~storage.errors.StorageUnavailable` when a retry may succeed).

Two ways in:

* :meth:`AlertStore.evaluation` opens the alert engine's transaction (:class:`AlertWork`): it locks the
  cursor row, so one engine at a time advances it (another replica's engine skips its tick), and everything
  the engine writes (alert changes, deliveries, the new cursor) commits or rolls back together. A crash at
  any point therefore neither loses nor repeats an alert change.
* The delivery worker's calls: :meth:`AlertStore.claim_deliveries` (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL plus a lease in ``claimed_until``, so several replicas never send the same delivery at once)
  and :meth:`AlertStore.record_attempt`.

Subscription secrets are stored (the HMAC needs them) sealed with AES-GCM (:mod:`storage.crypto`): never
in plain text, and never returned by the listing calls, whose records carry ``has_secret`` instead. Only a
claimed :class:`DeliveryJob` holds the sealed secret, which the delivery worker opens just before it signs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Engine, Table, and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import models as orm
from storage.crypto import SECRET_KEY_ENV, SECRET_KEY_SETTING, SecretBox, SecretKeyError, resolve_box
from storage.errors import StorageError
from storage.records import AlertRecord, require_aware
from storage.session import EngineBound, check_limit, check_name

__all__ = [
    "ALERT_STATES",
    "CHANNELS",
    "DELIVERY_STATES",
    "ENGINE_CURSOR",
    "FORMATS",
    "REASONS",
    "SEVERITIES",
    "AlertState",
    "AlertStore",
    "AlertWork",
    "AttemptIn",
    "AttemptRecord",
    "DeliveryIn",
    "DeliveryJob",
    "DeliveryRecord",
    "NotificationLogEntry",
    "ResultEvent",
    "SilenceIn",
    "SilenceRecord",
    "SubscriptionIn",
    "SubscriptionRecord",
]

SEVERITIES = ("info", "warning", "critical")  # in increasing order
ALERT_STATES = ("firing", "resolved")
FORMATS = ("native", "slack", "alertmanager")
CHANNELS = ("webhook", "kafka")
REASONS = ("firing", "escalated", "repeat", "resolved")
DELIVERY_STATES = ("pending", "delivered", "failed")
ENGINE_CURSOR = "alert_engine"
IN_CHUNK = 500
# Bounds on what one subscription may hold: a request body is not a way to fill the database.
MAX_SECRET_CHARS = 1024
MAX_FILTER_ENTRIES = 1000
MAX_FILTER_CHARS = 256

ALERTS = cast(Table, orm.Alert.__table__)
RESULTS = cast(Table, orm.WindowResult.__table__)
CURSORS = cast(Table, orm.AlertCursor.__table__)
SUBSCRIPTIONS = cast(Table, orm.Subscription.__table__)
SILENCES = cast(Table, orm.Silence.__table__)
DELIVERIES = cast(Table, orm.Delivery.__table__)
ATTEMPTS = cast(Table, orm.DeliveryAttempt.__table__)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """A window result as the alert engine reads it, in ``revision`` order."""

    id: int
    revision: int
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
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AlertState:
    """An alert with the lifecycle's own fields (``subject``, ``clean_streak``, ``streak_window``).

    ``id`` is None for an alert not stored yet. :meth:`public` is the contract's shape.
    """

    id: int | None
    fingerprint: str
    model: str
    detector: str
    threat: str
    severity: str
    state: str
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
    subject: str
    clean_streak: int
    streak_window: datetime | None

    def public(self) -> AlertRecord:
        """The alert in the contract's shape (section 4)."""
        if self.id is None:
            raise ValueError("an alert that is not stored has no public form (no id)")
        values = {name: getattr(self, name) for name in AlertRecord.__dataclass_fields__}
        return AlertRecord(**values)


@dataclass(frozen=True, slots=True)
class NotificationLogEntry:
    """The latest notification of one alert to one target (the newest delivery row for the pair)."""

    alert_id: int
    target: str
    status: str  # "firing" | "resolved"
    severity: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryIn:
    """A notification to enqueue: ``body`` is the exact bytes to send (and sign) on every attempt."""

    alert_id: int
    target: str
    channel: str  # "webhook" | "kafka"
    subscription_id: int | None
    topic: str | None
    status: str
    reason: str
    severity: str
    body: bytes
    created_at: datetime

    def __post_init__(self) -> None:
        require_aware(self.created_at, "DeliveryIn.created_at")
        _one_of(self.channel, CHANNELS, "channel")
        _one_of(self.status, ALERT_STATES, "status")
        _one_of(self.reason, REASONS, "reason")
        _one_of(self.severity, SEVERITIES, "severity")
        if (self.channel == "webhook") != (self.subscription_id is not None):
            raise ValueError("a webhook delivery needs a subscription_id, a kafka delivery must not have one")
        if (self.channel == "kafka") != (self.topic is not None):
            raise ValueError("a kafka delivery needs a topic, a webhook delivery must not have one")


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A stored delivery (one notification to one target) and how far it got."""

    id: int
    uuid: str
    alert_id: int
    subscription_id: int | None
    topic: str | None
    target: str
    channel: str
    status: str
    reason: str
    severity: str
    state: str  # "pending" | "delivered" | "failed"
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """A delivery claimed by a worker, with what it takes to send it.

    ``sealed_secret`` is the subscription's secret as stored (AES-GCM, see :mod:`storage.crypto`): the worker
    opens it with :attr:`AlertStore.secret_box`. Neither it nor the URL shows in reprs.
    """

    id: int
    uuid: str
    alert_id: int
    fingerprint: str
    channel: str
    target: str
    status: str
    reason: str
    attempts: int
    created_at: datetime
    body: bytes = field(repr=False)
    subscription_id: int | None = None
    subscription_name: str | None = None
    subscription_active: bool = True
    url: str | None = field(default=None, repr=False)  # may carry a token (Slack-style URLs)
    sealed_secret: str | None = field(default=None, repr=False)
    format: str = "native"
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptIn:
    """The outcome of one try at sending a delivery."""

    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: str  # "delivered" | "retry" | "failed"

    def __post_init__(self) -> None:
        require_aware(self.started_at, "AttemptIn.started_at")
        _one_of(self.outcome, ("delivered", "retry", "failed"), "outcome")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A stored attempt."""

    id: int
    delivery_id: int
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: str
    worker: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionIn:
    """A webhook subscription to create. Empty filter lists match everything."""

    name: str
    url: str
    secret: str | None = field(default=None, repr=False)
    format: str = "native"
    models: Sequence[str] = ()
    detectors: Sequence[str] = ()
    threats: Sequence[str] = ()
    min_severity: str = "info"

    def __post_init__(self) -> None:
        check_name(self.name, "name", 128)
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be an http:// or https:// URL")
        _one_of(self.format, FORMATS, "format")
        _one_of(self.min_severity, SEVERITIES, "min_severity")
        if self.secret is not None and not self.secret:
            raise ValueError("secret must be non-empty when given")
        if self.secret is not None and len(self.secret) > MAX_SECRET_CHARS:
            raise ValueError(f"secret must be at most {MAX_SECRET_CHARS} characters")
        if len(self.url) > 2048:
            raise ValueError("url must be at most 2048 characters")
        for what in ("models", "detectors", "threats"):
            values = getattr(self, what)
            if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{what} must be a list of non-empty strings")
            if len(values) > MAX_FILTER_ENTRIES or any(len(v) > MAX_FILTER_CHARS for v in values):
                raise ValueError(
                    f"{what} must hold at most {MAX_FILTER_ENTRIES} entries of at most {MAX_FILTER_CHARS} "
                    "characters"
                )


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A stored subscription. The secret itself is never part of it: ``has_secret`` tells if one is set."""

    id: int
    name: str
    url: str
    format: str
    models: tuple[str, ...]
    detectors: tuple[str, ...]
    threats: tuple[str, ...]
    min_severity: str
    source: str  # "config" | "api"
    has_secret: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (lists for the filters)."""
        values = asdict(self)
        for key in ("models", "detectors", "threats"):
            values[key] = list(values[key])
        return values


@dataclass(frozen=True, slots=True)
class SilenceIn:
    """Mute the alerts that match every given matcher (at least one), from ``starts_at`` until ``ends_at``."""

    ends_at: datetime
    fingerprint: str | None = None
    model: str | None = None
    detector: str | None = None
    starts_at: datetime | None = None  # None: from creation
    comment: str = ""
    created_by: str | None = None

    def __post_init__(self) -> None:
        require_aware(self.ends_at, "SilenceIn.ends_at")
        if self.starts_at is not None:
            require_aware(self.starts_at, "SilenceIn.starts_at")
            if self.ends_at <= self.starts_at:
                raise ValueError("a silence must end after it starts")
        if self.fingerprint is None and self.model is None and self.detector is None:
            raise ValueError("a silence needs at least one of fingerprint, model, detector")


@dataclass(frozen=True, slots=True)
class SilenceRecord:
    """A stored silence."""

    id: int
    fingerprint: str | None
    model: str | None
    detector: str | None
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


# --------------------------------------------------------------------------- the engine's transaction


class AlertWork:
    """The alert engine's open transaction (see :meth:`AlertStore.evaluation`).

    The cursor row is locked for its whole life; nothing is visible to others until it commits.
    """

    def __init__(self, session: Session, cursor: int) -> None:
        self._session = session
        self.cursor = cursor
        self._advanced_to = cursor

    def results(self, limit: int) -> list[ResultEvent]:
        """The next ``limit`` results past the cursor, in revision (commit) order."""
        stmt = (
            select(RESULTS)
            .where(RESULTS.c.revision > self._advanced_to)
            .order_by(RESULTS.c.revision)
            .limit(check_limit(limit))
        )
        return [
            ResultEvent(
                id=r.id,
                revision=r.revision,
                window_id=r.window_id,
                model=r.model,
                detector=r.detector,
                threat=r.threat,
                status=r.status,
                statistic=r.statistic,
                threshold=r.threshold,
                p_value=r.p_value,
                n_events=r.n_events,
                evidence=r.evidence,
                reason=r.reason,
                window_start=r.window_start,
                window_end=r.window_end,
                updated_at=r.updated_at,
            )
            for r in self._session.execute(stmt)
        ]

    def advance(self, revision: int) -> None:
        """Move the cursor to ``revision`` (written with everything else at commit)."""
        if revision < self._advanced_to:
            raise ValueError(f"the cursor only moves forward ({self._advanced_to} -> {revision})")
        self._advanced_to = revision

    def firing_alerts(self) -> list[AlertState]:
        """Every firing alert, oldest first."""
        rows = self._session.scalars(
            select(orm.Alert).where(orm.Alert.state == "firing").order_by(orm.Alert.id)
        )
        return [_alert_state(a) for a in rows]

    def latest_alert(self, fingerprint: str) -> AlertState | None:
        """The newest alert (any state) of one fingerprint, or None."""
        row = self._session.scalars(
            select(orm.Alert)
            .where(orm.Alert.fingerprint == fingerprint)
            .order_by(orm.Alert.id.desc())
            .limit(1)
        ).first()
        return None if row is None else _alert_state(row)

    def save_alert(self, alert: AlertState) -> AlertState:
        """Insert (``id`` None) or update an alert; returns it with its id."""
        _one_of(alert.severity, SEVERITIES, "severity")
        _one_of(alert.state, ALERT_STATES, "state")
        values = {name: getattr(alert, name) for name in AlertState.__dataclass_fields__ if name != "id"}
        if alert.id is None:
            new_id = self._session.execute(insert(ALERTS).values(values).returning(ALERTS.c.id)).scalar_one()
            return _replace_id(alert, int(new_id))
        done = self._session.execute(update(ALERTS).where(ALERTS.c.id == alert.id).values(values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise StorageError(f"no alert with id {alert.id}")
        return alert

    def last_notifications(self, alert_ids: Sequence[int]) -> dict[tuple[int, str], NotificationLogEntry]:
        """The notification log of these alerts: the newest delivery per (alert, target)."""
        found: dict[tuple[int, str], NotificationLogEntry] = {}
        ids = sorted(set(alert_ids))
        newer = DELIVERIES.alias("newer")
        for i in range(0, len(ids), IN_CHUNK):
            chunk = ids[i : i + IN_CHUNK]
            is_newest = ~(
                select(literal(1))
                .where(
                    newer.c.alert_id == DELIVERIES.c.alert_id,
                    newer.c.target == DELIVERIES.c.target,
                    newer.c.id > DELIVERIES.c.id,
                )
                .exists()
            )
            rows = self._session.execute(
                select(
                    DELIVERIES.c.alert_id,
                    DELIVERIES.c.target,
                    DELIVERIES.c.status,
                    DELIVERIES.c.severity,
                    DELIVERIES.c.created_at,
                ).where(DELIVERIES.c.alert_id.in_(chunk), is_newest)
            )
            for alert_id, target, status, severity, created_at in rows:
                found[(int(alert_id), target)] = NotificationLogEntry(
                    int(alert_id), target, status, severity, created_at
                )
        return found

    def add_delivery(self, delivery: DeliveryIn) -> NotificationLogEntry:
        """Enqueue one notification; returns the log entry it makes."""
        self._session.execute(
            insert(DELIVERIES).values(
                uuid=str(uuid.uuid4()),
                alert_id=delivery.alert_id,
                subscription_id=delivery.subscription_id,
                topic=delivery.topic,
                target=delivery.target,
                channel=delivery.channel,
                status=delivery.status,
                reason=delivery.reason,
                severity=delivery.severity,
                body=bytes(delivery.body),
                state="pending",
                attempts=0,
                next_attempt_at=delivery.created_at,
                created_at=delivery.created_at,
            )
        )
        return NotificationLogEntry(
            delivery.alert_id, delivery.target, delivery.status, delivery.severity, delivery.created_at
        )

    def subscriptions(self) -> list[SubscriptionRecord]:
        """The active subscriptions."""
        rows = self._session.scalars(
            select(orm.Subscription)
            .where(orm.Subscription.deleted_at.is_(None))
            .order_by(orm.Subscription.id)
        )
        return [_subscription_record(s) for s in rows]

    def silences(self, now: datetime) -> list[SilenceRecord]:
        """The silences in force at ``now``."""
        return _active_silences(self._session, now)

    def _commit_cursor(self, now: datetime) -> None:
        if self._advanced_to != self.cursor:
            self._session.execute(
                update(CURSORS)
                .where(CURSORS.c.name == ENGINE_CURSOR)
                .values(revision=self._advanced_to, updated_at=now)
            )


# --------------------------------------------------------------------------- the store


class AlertStore(EngineBound):
    """Alerting state on one engine (the schema must be migrated); thread-safe like :class:`storage.Store`.

    Parameters
    ----------
    engine
        The database.
    secret_key
        Base64 of the 32-byte key that seals webhook secrets (``alerting.secret_key``). Default: the
        environment, else the key file beside a SQLite database (see :func:`storage.crypto.resolve_box`).
        Only needed, and only looked up, when a secret is written or a delivery is signed.
    """

    def __init__(self, engine: Engine, *, secret_key: str | bytes | SecretBox | None = None) -> None:
        super().__init__(engine)
        self._secret_key = secret_key
        self._box: SecretBox | None = secret_key if isinstance(secret_key, SecretBox) else None

    @property
    def secret_box(self) -> SecretBox:
        """The key that seals and opens subscription secrets; :class:`SecretKeyError` names the setting when
        there is none (PostgreSQL without ``alerting.secret_key``)."""
        if self._box is None:
            configured = None if isinstance(self._secret_key, SecretBox) else self._secret_key
            box = resolve_box(self._engine, configured)
            if box is None:
                raise SecretKeyError(
                    f"webhook secrets are stored encrypted and no key is configured for this "
                    f"{self._engine.dialect.name} database: set {SECRET_KEY_SETTING} (environment "
                    f"{SECRET_KEY_ENV}) to base64 of 32 random bytes, the same on every replica"
                )
            self._box = box
        return self._box

    # ------------------------------------------------------------------ the engine

    @contextmanager
    def evaluation(self, now: datetime) -> Iterator[AlertWork | None]:
        """The alert engine's transaction, or None when another engine holds the cursor (PostgreSQL).

        The cursor row is locked ``FOR UPDATE SKIP LOCKED``: a second replica's engine skips its tick
        instead of waiting. On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (one writer). The
        cursor moves (to :meth:`AlertWork.advance`) in the same commit as every change made through the work.
        """
        require_aware(now, "now")
        with self._transaction("evaluating alerts", write=True) as session:
            stmt = select(CURSORS.c.revision).where(CURSORS.c.name == ENGINE_CURSOR)
            revision = session.execute(stmt.with_for_update(skip_locked=True)).scalar_one_or_none()
            if revision is None:
                exists = session.execute(
                    select(literal(1)).select_from(CURSORS).where(CURSORS.c.name == ENGINE_CURSOR)
                ).first()
                if exists is not None:
                    yield None  # locked by another replica's engine
                    return
                # Seeded by the migration; recreated if someone removed it (a schema made with create_all).
                session.execute(insert(CURSORS).values(name=ENGINE_CURSOR, revision=0, updated_at=now))
                revision = 0
            work = AlertWork(session, int(revision))
            yield work
            work._commit_cursor(now)

    def engine_has_work(self) -> bool:
        """Whether :meth:`evaluation` could do anything: results past the cursor, or firing alerts (repeats).

        A cheap read, so that an idle engine does not take the write lock on every tick.
        """
        with self._transaction("checking for alert work") as session:
            cursor = session.execute(
                select(CURSORS.c.revision).where(CURSORS.c.name == ENGINE_CURSOR)
            ).scalar()
            new_results = select(literal(1)).where(RESULTS.c.revision > (cursor or 0)).exists()
            firing = select(literal(1)).where(ALERTS.c.state == "firing").exists()
            return bool(session.execute(select(or_(new_results, firing))).scalar())

    def cursor(self) -> int:
        """The engine's cursor: the highest result revision processed (0 if none)."""
        with self._transaction("reading the alert cursor") as session:
            value = session.execute(
                select(CURSORS.c.revision).where(CURSORS.c.name == ENGINE_CURSOR)
            ).scalar()
            return int(value or 0)

    def backlog(self) -> int:
        """How many results the engine has not processed yet."""
        with self._transaction("counting unprocessed results") as session:
            cursor = session.execute(
                select(CURSORS.c.revision).where(CURSORS.c.name == ENGINE_CURSOR)
            ).scalar()
            return int(
                session.execute(
                    select(func.count()).select_from(RESULTS).where(RESULTS.c.revision > (cursor or 0))
                ).scalar_one()
            )

    # ------------------------------------------------------------------ alerts

    def alert(self, alert_id: int) -> AlertRecord | None:
        """One alert, or None."""
        with self._transaction("reading an alert") as session:
            row = session.get(orm.Alert, alert_id)
            return None if row is None else _alert_state(row).public()

    def alert_states(self, fingerprint: str | None = None) -> list[AlertState]:
        """Alerts with their lifecycle fields, oldest first (optionally of one fingerprint)."""
        stmt = select(orm.Alert).order_by(orm.Alert.id)
        if fingerprint is not None:
            stmt = stmt.where(orm.Alert.fingerprint == fingerprint)
        with self._transaction("reading alert states") as session:
            return [_alert_state(a) for a in session.scalars(stmt)]

    def list_alerts(
        self,
        *,
        model: str | None = None,
        detector: str | None = None,
        threat: str | None = None,
        state: str | None = None,
        severities: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        order: Literal["last_seen", "id"] = "last_seen",
        before_id: int | None = None,
    ) -> list[AlertRecord]:
        """Alerts newest first, by ``last_seen`` (the history view) or by ``id`` (stable pages: new alerts
        only ever get higher ids); ``since <= last_seen < until``; ``before_id`` pages, with id order only."""
        a = orm.Alert
        if before_id is not None and order != "id":
            raise ValueError("before_id pages by id: use order='id'")
        ordering = (a.id.desc(),) if order == "id" else (a.last_seen.desc(), a.id.desc())
        stmt = select(a).order_by(*ordering).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(a.model == model)
        if detector is not None:
            stmt = stmt.where(a.detector == detector)
        if threat is not None:
            stmt = stmt.where(a.threat == threat)
        if state is not None:
            _one_of(state, ALERT_STATES, "state")
            stmt = stmt.where(a.state == state)
        if severities:
            for s in severities:
                _one_of(s, SEVERITIES, "severity")
            stmt = stmt.where(a.severity.in_(list(severities)))
        if since is not None:
            require_aware(since, "since")
            stmt = stmt.where(a.last_seen >= since)
        if until is not None:
            require_aware(until, "until")
            stmt = stmt.where(a.last_seen < until)
        if before_id is not None:
            stmt = stmt.where(a.id < before_id)
        with self._transaction("reading alerts") as session:
            return [_alert_state(x).public() for x in session.scalars(stmt)]

    # ------------------------------------------------------------------ deliveries

    def claim_deliveries(
        self, worker: str, now: datetime, *, limit: int = 10, lease: timedelta = timedelta(seconds=60)
    ) -> list[DeliveryJob]:
        """Claim up to ``limit`` due deliveries for ``worker`` until ``now + lease``, oldest first.

        Due: pending, ``next_attempt_at <= now``, not leased to anyone (or the lease ran out: that worker
        died), and no earlier pending delivery of the same alert to the same target (order per target).
        PostgreSQL locks the candidates ``FOR UPDATE SKIP LOCKED``, so concurrent claimers never get the same
        row; SQLite serialises the claim with ``BEGIN IMMEDIATE``.
        """
        require_aware(now, "now")
        earlier = DELIVERIES.alias("earlier")
        blocked = (
            select(literal(1))
            .where(
                earlier.c.alert_id == DELIVERIES.c.alert_id,
                earlier.c.target == DELIVERIES.c.target,
                earlier.c.state == "pending",
                earlier.c.id < DELIVERIES.c.id,
            )
            .exists()
        )
        candidates = (
            select(DELIVERIES.c.id)
            .where(
                DELIVERIES.c.state == "pending",
                DELIVERIES.c.next_attempt_at <= now,
                or_(DELIVERIES.c.claimed_until.is_(None), DELIVERIES.c.claimed_until <= now),
                ~blocked,
            )
            .order_by(DELIVERIES.c.id)
            .limit(check_limit(limit))
            .with_for_update(skip_locked=True, of=DELIVERIES)
        )
        with self._transaction("claiming deliveries", write=True) as session:
            ids = [int(i) for i in session.execute(candidates).scalars()]
            if not ids:
                return []
            session.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id.in_(ids))
                .values(claimed_until=now + lease, claimed_by=worker)
            )
            rows = session.execute(
                select(
                    DELIVERIES,
                    ALERTS.c.fingerprint,
                    SUBSCRIPTIONS.c.name.label("sub_name"),
                    SUBSCRIPTIONS.c.url,
                    SUBSCRIPTIONS.c.secret,
                    SUBSCRIPTIONS.c.format,
                    SUBSCRIPTIONS.c.deleted_at,
                )
                .join(ALERTS, ALERTS.c.id == DELIVERIES.c.alert_id)
                .outerjoin(SUBSCRIPTIONS, SUBSCRIPTIONS.c.id == DELIVERIES.c.subscription_id)
                .where(DELIVERIES.c.id.in_(ids))
                .order_by(DELIVERIES.c.id)
            )
            return [
                DeliveryJob(
                    id=r.id,
                    uuid=r.uuid,
                    alert_id=r.alert_id,
                    fingerprint=r.fingerprint,
                    channel=r.channel,
                    target=r.target,
                    status=r.status,
                    reason=r.reason,
                    attempts=r.attempts,
                    created_at=r.created_at,
                    body=r.body,
                    subscription_id=r.subscription_id,
                    subscription_name=r.sub_name,
                    subscription_active=r.subscription_id is None or r.deleted_at is None,
                    url=r.url,
                    sealed_secret=r.secret,
                    format=r.format or "native",
                    topic=r.topic,
                )
                for r in rows
            ]

    def has_due_deliveries(self, now: datetime) -> bool:
        """Whether a pending delivery is due at ``now`` (a cheap read before :meth:`claim_deliveries`)."""
        require_aware(now, "now")
        with self._transaction("checking the delivery queue") as session:
            due = (
                select(literal(1))
                .where(DELIVERIES.c.state == "pending", DELIVERIES.c.next_attempt_at <= now)
                .exists()
            )
            return bool(session.execute(select(due)).scalar())

    def release(self, delivery_ids: Sequence[int], worker: str) -> int:
        """Give back claimed deliveries not attempted (a stopping worker), so that they need not wait for
        their lease to run out; returns how many were released."""
        if not delivery_ids:
            return 0
        with self._transaction("releasing deliveries", write=True) as session:
            done = session.execute(
                update(DELIVERIES)
                .where(
                    DELIVERIES.c.id.in_(list(delivery_ids)),
                    DELIVERIES.c.claimed_by == worker,
                    DELIVERIES.c.state == "pending",
                )
                .values(claimed_until=None, claimed_by=None)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

    def record_attempt(
        self, delivery_id: int, worker: str, attempt: AttemptIn, *, next_attempt_at: datetime | None = None
    ) -> bool:
        """Record one attempt and its consequence; returns whether the delivery's state was updated.

        ``delivered`` and ``failed`` finish a pending delivery whoever holds its lease (an acknowledged send
        is acknowledged). ``retry`` releases the lease and schedules ``next_attempt_at``, but only if this
        worker still holds the lease: one that lost it to another worker leaves the row to that worker.
        """
        if attempt.outcome == "retry":
            if next_attempt_at is None:
                raise ValueError("a retry needs next_attempt_at")
            require_aware(next_attempt_at, "next_attempt_at")
        with self._transaction("recording a delivery attempt", write=True) as session:
            number = session.execute(
                select(DELIVERIES.c.attempts).where(DELIVERIES.c.id == delivery_id)
            ).scalar_one_or_none()
            if number is None:
                raise StorageError(f"no delivery with id {delivery_id}")
            session.execute(
                insert(ATTEMPTS).values(
                    delivery_id=delivery_id,
                    attempt=int(number) + 1,
                    started_at=attempt.started_at,
                    duration_ms=float(attempt.duration_ms),
                    status_code=attempt.status_code,
                    error=attempt.error,
                    outcome=attempt.outcome,
                    worker=worker,
                )
            )
            finished = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
            common = {
                "attempts": DELIVERIES.c.attempts + 1,
                "last_status_code": attempt.status_code,
                "last_error": attempt.error,
            }
            where = [DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == "pending"]
            if attempt.outcome == "retry":
                where.append(DELIVERIES.c.claimed_by == worker)
                values = {
                    **common,
                    "next_attempt_at": next_attempt_at,
                    "claimed_until": None,
                    "claimed_by": None,
                }
            else:
                state = "delivered" if attempt.outcome == "delivered" else "failed"
                values = {
                    **common,
                    "state": state,
                    "finished_at": finished,
                    "claimed_until": None,
                    "claimed_by": None,
                }
            done = session.execute(update(DELIVERIES).where(and_(*where)).values(values))
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def give_up(self, delivery_id: int, reason: str, now: datetime) -> bool:
        """Fail a pending delivery without an attempt (e.g. its subscription was deleted)."""
        require_aware(now, "now")
        with self._transaction("giving up a delivery", write=True) as session:
            done = session.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == "pending")
                .values(
                    state="failed", finished_at=now, last_error=reason, claimed_until=None, claimed_by=None
                )
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def deliveries(
        self, *, alert_id: int | None = None, state: str | None = None, limit: int = 1000
    ) -> list[DeliveryRecord]:
        """Deliveries, oldest first, optionally of one alert and/or in one state."""
        stmt = select(DELIVERIES).order_by(DELIVERIES.c.id).limit(check_limit(limit))
        if alert_id is not None:
            stmt = stmt.where(DELIVERIES.c.alert_id == alert_id)
        if state is not None:
            _one_of(state, DELIVERY_STATES, "state")
            stmt = stmt.where(DELIVERIES.c.state == state)
        with self._transaction("reading deliveries") as session:
            return [
                DeliveryRecord(
                    id=r.id,
                    uuid=r.uuid,
                    alert_id=r.alert_id,
                    subscription_id=r.subscription_id,
                    topic=r.topic,
                    target=r.target,
                    channel=r.channel,
                    status=r.status,
                    reason=r.reason,
                    severity=r.severity,
                    state=r.state,
                    attempts=r.attempts,
                    next_attempt_at=r.next_attempt_at,
                    created_at=r.created_at,
                    finished_at=r.finished_at,
                    last_status_code=r.last_status_code,
                    last_error=r.last_error,
                    body=r.body,
                )
                for r in session.execute(stmt)
            ]

    def attempts(self, delivery_id: int | None = None, *, alert_id: int | None = None) -> list[AttemptRecord]:
        """Recorded attempts, oldest first, of one delivery or of every delivery of one alert."""
        stmt = select(ATTEMPTS).order_by(ATTEMPTS.c.id)
        if delivery_id is not None:
            stmt = stmt.where(ATTEMPTS.c.delivery_id == delivery_id)
        if alert_id is not None:
            stmt = stmt.where(
                ATTEMPTS.c.delivery_id.in_(select(DELIVERIES.c.id).where(DELIVERIES.c.alert_id == alert_id))
            )
        with self._transaction("reading delivery attempts") as session:
            return [
                AttemptRecord(
                    id=r.id,
                    delivery_id=r.delivery_id,
                    attempt=r.attempt,
                    started_at=r.started_at,
                    duration_ms=r.duration_ms,
                    status_code=r.status_code,
                    error=r.error,
                    outcome=r.outcome,
                    worker=r.worker,
                )
                for r in session.execute(stmt)
            ]

    def next_delivery_due(self) -> datetime | None:
        """When the earliest pending delivery is due (None when none is pending)."""
        with self._transaction("reading the delivery queue") as session:
            return session.execute(
                select(func.min(DELIVERIES.c.next_attempt_at)).where(DELIVERIES.c.state == "pending")
            ).scalar()

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(
        self, subscription: SubscriptionIn, now: datetime, *, source: str = "api"
    ) -> SubscriptionRecord:
        """Create a subscription; raises ValueError if an active one has the same name, and
        :class:`~storage.crypto.SecretKeyError` (a ValueError) if it has a secret and no key is configured."""
        require_aware(now, "now")
        _one_of(source, ("config", "api"), "source")
        values = self._subscription_values(subscription)
        try:
            with self._transaction("creating a subscription", write=True) as session:
                new_id = session.execute(
                    insert(SUBSCRIPTIONS)
                    .values(**values, source=source, created_at=now, updated_at=now)
                    .returning(SUBSCRIPTIONS.c.id)
                ).scalar_one()
                return _subscription_record(session.get_one(orm.Subscription, int(new_id)))
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise ValueError(f"a subscription named {subscription.name!r} exists already") from None
            raise

    def subscriptions(self, *, include_deleted: bool = False) -> list[SubscriptionRecord]:
        """Subscriptions in id order (secrets masked: ``has_secret``)."""
        stmt = select(orm.Subscription).order_by(orm.Subscription.id)
        if not include_deleted:
            stmt = stmt.where(orm.Subscription.deleted_at.is_(None))
        with self._transaction("reading subscriptions") as session:
            return [_subscription_record(s) for s in session.scalars(stmt)]

    def subscription(self, subscription_id: int) -> SubscriptionRecord | None:
        """One subscription (deleted ones too), or None."""
        with self._transaction("reading a subscription") as session:
            row = session.get(orm.Subscription, subscription_id)
            return None if row is None else _subscription_record(row)

    def delete_subscription(self, subscription_id: int, now: datetime) -> bool:
        """Delete a subscription (kept, marked deleted, for the delivery history); False if none was active.

        Its pending deliveries are given up by the worker when it next claims them.
        """
        require_aware(now, "now")
        with self._transaction("deleting a subscription", write=True) as session:
            done = session.execute(
                update(SUBSCRIPTIONS)
                .where(SUBSCRIPTIONS.c.id == subscription_id, SUBSCRIPTIONS.c.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def sync_config_subscriptions(
        self, subscriptions: Sequence[SubscriptionIn], now: datetime
    ) -> list[SubscriptionRecord]:
        """Make the active ``config`` subscriptions exactly ``subscriptions`` (matched by name).

        Changed ones are updated in place (their id, and so their notification log, stays); ones no longer
        configured are deleted; ``api`` subscriptions are left alone, but a configured name that an ``api``
        subscription already uses is refused (ValueError).
        """
        require_aware(now, "now")
        names = [s.name for s in subscriptions]
        if len(set(names)) != len(names):
            raise ValueError("configured subscription names must be unique")
        with self._transaction("syncing configured subscriptions", write=True) as session:
            active = {
                row.name: row
                for row in session.scalars(
                    select(orm.Subscription).where(orm.Subscription.deleted_at.is_(None)).with_for_update()
                )
            }
            for sub in subscriptions:
                row = active.get(sub.name)
                if row is not None and row.source != "config":
                    raise ValueError(f"subscription name {sub.name!r} is taken by an API subscription")
                values = self._subscription_values(sub, row.secret if row is not None else None)
                if row is None:
                    session.execute(
                        insert(SUBSCRIPTIONS).values(
                            **values, source="config", created_at=now, updated_at=now
                        )
                    )
                elif any(getattr(row, k) != v for k, v in values.items()):
                    session.execute(
                        update(SUBSCRIPTIONS)
                        .where(SUBSCRIPTIONS.c.id == row.id)
                        .values(**values, updated_at=now)
                    )
            gone = [row.id for name, row in active.items() if row.source == "config" and name not in names]
            if gone:
                session.execute(
                    update(SUBSCRIPTIONS)
                    .where(SUBSCRIPTIONS.c.id.in_(gone))
                    .values(deleted_at=now, updated_at=now)
                )
            # The rows loaded above are in the session's identity map, and the UPDATEs made them stale.
            session.expire_all()
            stmt = (
                select(orm.Subscription)
                .where(orm.Subscription.deleted_at.is_(None))
                .order_by(orm.Subscription.id)
            )
            return [_subscription_record(s) for s in session.scalars(stmt)]

    def _subscription_values(self, sub: SubscriptionIn, stored: str | None = None) -> dict[str, Any]:
        """The row values of ``sub`` with its secret sealed; ``stored`` (the row's sealed secret) is kept when
        it holds the same secret, so that an unchanged configured subscription is not rewritten."""
        if sub.secret is None:
            return _subscription_values(sub, None)
        box = self.secret_box
        if stored is not None and box.matches(stored, sub.secret):
            return _subscription_values(sub, stored)
        return _subscription_values(sub, box.seal(sub.secret))

    # ------------------------------------------------------------------ silences

    def create_silence(self, silence: SilenceIn, now: datetime) -> SilenceRecord:
        """Create a silence (starting at ``now`` unless ``starts_at`` is given)."""
        require_aware(now, "now")
        starts = silence.starts_at or now
        if silence.ends_at <= starts:
            raise ValueError("a silence must end after it starts")
        with self._transaction("creating a silence", write=True) as session:
            new_id = session.execute(
                insert(SILENCES)
                .values(
                    fingerprint=silence.fingerprint,
                    model=silence.model,
                    detector=silence.detector,
                    starts_at=starts,
                    ends_at=silence.ends_at,
                    comment=silence.comment,
                    created_by=silence.created_by,
                    created_at=now,
                )
                .returning(SILENCES.c.id)
            ).scalar_one()
            return _silence_record(session.get_one(orm.Silence, int(new_id)))

    def silences(self, *, active_at: datetime | None = None) -> list[SilenceRecord]:
        """All silences in id order, or only those in force at ``active_at``."""
        with self._transaction("reading silences") as session:
            if active_at is not None:
                return _active_silences(session, active_at)
            return [_silence_record(s) for s in session.scalars(select(orm.Silence).order_by(orm.Silence.id))]

    def delete_silence(self, silence_id: int) -> bool:
        """Delete a silence; False if there was none with that id."""
        with self._transaction("deleting a silence", write=True) as session:
            done = session.execute(delete(SILENCES).where(SILENCES.c.id == silence_id))
            return bool(done.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- helpers


def _one_of(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)} (got {value!r})")


def _replace_id(alert: AlertState, new_id: int) -> AlertState:
    values = {name: getattr(alert, name) for name in AlertState.__dataclass_fields__}
    values["id"] = new_id
    return AlertState(**values)


def _alert_state(a: orm.Alert) -> AlertState:
    return AlertState(
        id=a.id,
        fingerprint=a.fingerprint,
        model=a.model,
        detector=a.detector,
        threat=a.threat,
        severity=a.severity,
        state=a.state,
        title=a.title,
        summary=a.summary,
        window_start=a.window_start,
        window_end=a.window_end,
        statistic=a.statistic,
        threshold=a.threshold,
        p_value=a.p_value,
        details=a.details,
        first_seen=a.first_seen,
        last_seen=a.last_seen,
        count=a.count,
        resolved_at=a.resolved_at,
        subject=a.subject,
        clean_streak=a.clean_streak,
        streak_window=a.streak_window,
    )


def _subscription_values(sub: SubscriptionIn, sealed_secret: str | None) -> dict[str, Any]:
    return {
        "name": sub.name,
        "url": sub.url,
        "secret": sealed_secret,
        "format": sub.format,
        "models": list(sub.models),
        "detectors": list(sub.detectors),
        "threats": list(sub.threats),
        "min_severity": sub.min_severity,
    }


def _subscription_record(s: orm.Subscription) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=s.id,
        name=s.name,
        url=s.url,
        format=s.format,
        models=tuple(s.models),
        detectors=tuple(s.detectors),
        threats=tuple(s.threats),
        min_severity=s.min_severity,
        source=s.source,
        has_secret=bool(s.secret),
        created_at=s.created_at,
        updated_at=s.updated_at,
        deleted_at=s.deleted_at,
    )


def _silence_record(s: orm.Silence) -> SilenceRecord:
    return SilenceRecord(
        id=s.id,
        fingerprint=s.fingerprint,
        model=s.model,
        detector=s.detector,
        starts_at=s.starts_at,
        ends_at=s.ends_at,
        comment=s.comment,
        created_by=s.created_by,
        created_at=s.created_at,
    )


def _active_silences(session: Session, now: datetime) -> list[SilenceRecord]:
    require_aware(now, "now")
    stmt = (
        select(orm.Silence)
        .where(orm.Silence.starts_at <= now, orm.Silence.ends_at > now)
        .order_by(orm.Silence.id)
    )
    return [_silence_record(s) for s in session.scalars(stmt)]
