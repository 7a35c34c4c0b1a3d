"""The alert engine's unit of work: one transaction that follows window results past a cursor.

:meth:`EvaluationStore.evaluation` locks the cursor row, so one engine at a time advances it (another
replica's engine skips its tick), and everything the engine writes through :class:`AlertWork` (alert
changes, deliveries, the new cursor) commits or rolls back together. A crash at any point therefore
neither loses nor repeats an alert change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import insert, literal, or_, select, update
from sqlalchemy.orm import Session

from storage import models as orm
from storage.alert_store.outbox import DeliveryIn, NotificationLogEntry, enqueue_delivery, last_notifications
from storage.alert_store.silences import SilenceRecord, active_silences
from storage.alert_store.subscriptions import SubscriptionRecord, active_subscriptions
from storage.alert_store.vocabulary import ALERT_STATES, SEVERITIES, one_of
from storage.errors import StorageError
from storage.records import AlertFields, AlertRecord, StoredResultFields, require_aware
from storage.rows import record_from_row, record_values
from storage.session import EngineBound, check_limit
from storage.tables import ALERTS, CURSORS, RESULTS

__all__ = ["ENGINE_CURSOR", "AlertState", "AlertWork", "EvaluationStore", "ResultEvent"]

ENGINE_CURSOR = "alert_engine"


@dataclass(frozen=True, slots=True)
class ResultEvent(StoredResultFields):
    """A window result as the alert engine reads it, in ``revision`` order."""

    revision: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AlertState(AlertFields[int | None]):
    """An alert with the lifecycle's own fields (``subject``, ``clean_streak``, ``streak_window``).

    ``id`` is None for an alert not stored yet. :meth:`public` is the alert as the API shows it.
    """

    subject: str
    clean_streak: int
    streak_window: datetime | None

    def public(self) -> AlertRecord:
        """The stored alert without the lifecycle's fields."""
        if self.id is None:
            raise ValueError("an alert that is not stored has no public form (no id)")
        return record_from_row(AlertRecord, self)


class AlertWork:
    """The alert engine's open transaction (see :meth:`EvaluationStore.evaluation`).

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
        return [record_from_row(ResultEvent, r) for r in self._session.execute(stmt)]

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
        return [record_from_row(AlertState, a) for a in rows]

    def latest_alert(self, fingerprint: str) -> AlertState | None:
        """The newest alert (any state) of one fingerprint, or None."""
        row = self._session.scalars(
            select(orm.Alert)
            .where(orm.Alert.fingerprint == fingerprint)
            .order_by(orm.Alert.id.desc())
            .limit(1)
        ).first()
        return None if row is None else record_from_row(AlertState, row)

    def save_alert(self, alert: AlertState) -> AlertState:
        """Insert (``id`` None) or update an alert; returns it with its id."""
        one_of(alert.severity, SEVERITIES, "severity")
        one_of(alert.state, ALERT_STATES, "state")
        values = record_values(alert, exclude=frozenset({"id"}))
        if alert.id is None:
            new_id = self._session.execute(insert(ALERTS).values(values).returning(ALERTS.c.id)).scalar_one()
            return replace(alert, id=int(new_id))
        done = self._session.execute(update(ALERTS).where(ALERTS.c.id == alert.id).values(values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise StorageError(f"no alert with id {alert.id}")
        return alert

    def last_notifications(self, alert_ids: Sequence[int]) -> dict[tuple[int, str], NotificationLogEntry]:
        """The notification log of these alerts: the newest delivery per (alert, target)."""
        return last_notifications(self._session, alert_ids)

    def add_delivery(self, delivery: DeliveryIn) -> NotificationLogEntry:
        """Enqueue one notification; returns the log entry it makes."""
        return enqueue_delivery(self._session, delivery)

    def subscriptions(self) -> list[SubscriptionRecord]:
        """The active subscriptions."""
        return active_subscriptions(self._session)

    def silences(self, now: datetime) -> list[SilenceRecord]:
        """The silences in force at ``now``."""
        return active_silences(self._session, now)

    def _commit_cursor(self, now: datetime) -> None:
        if self._advanced_to != self.cursor:
            self._session.execute(
                update(CURSORS)
                .where(CURSORS.c.name == ENGINE_CURSOR)
                .values(revision=self._advanced_to, updated_at=now)
            )


class EvaluationStore(EngineBound):
    """Opens the alert engine's transaction, and tells the engine cheaply whether it has anything to do."""

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
