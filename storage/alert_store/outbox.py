"""The outbox: deliveries (one notification to one target each) and the attempts at sending them.

The alert engine enqueues deliveries in its own transaction (:func:`enqueue_delivery`) and reads the
notification log from them (:func:`last_notifications`). The delivery workers then take turns through
:class:`OutboxStore`: :meth:`~OutboxStore.claim_deliveries` locks due rows ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL and leases them (``claimed_until``), so several replicas never send the same delivery at once;
:meth:`~OutboxStore.record_attempt` records each try and its consequence.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from storage.alert_store.vocabulary import (
    ALERT_STATES,
    CHANNELS,
    DELIVERY_STATES,
    REASONS,
    SEVERITIES,
    one_of,
)
from storage.errors import StorageError
from storage.records import require_aware
from storage.rows import record_from_row
from storage.session import EngineBound, check_limit
from storage.tables import ALERTS, ATTEMPTS, DELIVERIES, SUBSCRIPTIONS, chunks

__all__ = [
    "AttemptIn",
    "AttemptRecord",
    "DeliveryIn",
    "DeliveryJob",
    "DeliveryRecord",
    "NotificationLogEntry",
    "OutboxStore",
    "enqueue_delivery",
    "last_notifications",
]


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
        one_of(self.channel, CHANNELS, "channel")
        one_of(self.status, ALERT_STATES, "status")
        one_of(self.reason, REASONS, "reason")
        one_of(self.severity, SEVERITIES, "severity")
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
        one_of(self.outcome, ("delivered", "retry", "failed"), "outcome")


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


class OutboxStore(EngineBound):
    """The delivery worker's queue, and the delivery history the API shows."""

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
                record_from_row(
                    DeliveryJob,
                    r,
                    subscription_name=r.sub_name,
                    subscription_active=r.subscription_id is None or r.deleted_at is None,
                    sealed_secret=r.secret,
                    format=r.format or "native",
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
            one_of(state, DELIVERY_STATES, "state")
            stmt = stmt.where(DELIVERIES.c.state == state)
        with self._transaction("reading deliveries") as session:
            return [record_from_row(DeliveryRecord, r) for r in session.execute(stmt)]

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
            return [record_from_row(AttemptRecord, r) for r in session.execute(stmt)]


def last_notifications(
    session: Session, alert_ids: Sequence[int]
) -> dict[tuple[int, str], NotificationLogEntry]:
    """The notification log of these alerts: the newest delivery per (alert, target)."""
    found: dict[tuple[int, str], NotificationLogEntry] = {}
    newer = DELIVERIES.alias("newer")
    is_newest = ~(
        select(literal(1))
        .where(
            newer.c.alert_id == DELIVERIES.c.alert_id,
            newer.c.target == DELIVERIES.c.target,
            newer.c.id > DELIVERIES.c.id,
        )
        .exists()
    )
    for chunk in chunks(sorted(set(alert_ids))):
        rows = session.execute(
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


def enqueue_delivery(session: Session, delivery: DeliveryIn) -> NotificationLogEntry:
    """Add one pending delivery in ``session``; returns the notification log entry it makes."""
    session.execute(
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
