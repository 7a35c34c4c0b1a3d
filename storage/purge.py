"""Deleting what is older than its retention age, in bounded batches.

Ages count from when Sentinel stored the data, never from event time, so a replayed backfill of old history
is kept for the configured period like live data: a window from ``closed_at`` (when the pipeline closed and
stored it, by its clock), a dead letter from ``received_at``, a resolved alert from ``resolved_at``.

Each call deletes at most ``batch`` rows of its kind in one short transaction, so a purge of months of history
never holds locks for long or grows one transaction without bound; the caller repeats until a call returns 0.
On PostgreSQL the rows are picked with ``FOR UPDATE SKIP LOCKED``: replicas purging at the same moment take
disjoint batches instead of waiting on each other.

What goes with what:

* a window goes with its events, results and anomalies (its events are also the memory of which event ids
  were seen: an event redelivered after its window was purged is counted again, so retention must be far
  longer than any redelivery -- days, not minutes);
* a resolved alert goes with its deliveries and their attempts, but not while one of its deliveries is still
  pending (the resolution notice has not gone out yet);
* dead letters go on their own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, exists, select
from sqlalchemy.orm import Session

from storage.records import require_aware
from storage.session import EngineBound, check_limit
from storage.tables import ALERTS, ANOMALIES, ATTEMPTS, DEAD_LETTERS, DELIVERIES, EVENTS, RESULTS, WINDOWS

__all__ = ["Retention"]


class Retention(EngineBound):
    """Batched deletes of old windows, dead letters and resolved alerts."""

    def _pick(self, session: Session, query: Select[Any]) -> list[int]:
        """The ids the query selects, locked for this transaction (skipping rows another one holds)."""
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [int(i) for i in session.scalars(query)]

    def purge_windows(self, before: datetime, batch: int = 1000) -> int:
        """Delete up to ``batch`` windows stored (closed) before ``before``, whatever their event times, with
        their events, results and anomalies; returns how many windows went."""
        require_aware(before, "before")
        limit = check_limit(batch)
        with self._transaction("purging old windows", write=True) as session:
            ids = self._pick(session, select(WINDOWS.c.id).where(WINDOWS.c.closed_at < before).limit(limit))
            if not ids:
                return 0
            # Children first and explicitly: events have no ON DELETE CASCADE, and SQLite only cascades with
            # foreign keys on.
            for table in (EVENTS, ANOMALIES, RESULTS):
                session.execute(delete(table).where(table.c.window_id.in_(ids)))
            session.execute(delete(WINDOWS).where(WINDOWS.c.id.in_(ids)))
            return len(ids)

    def purge_dead_letters(self, before: datetime, batch: int = 1000) -> int:
        """Delete up to ``batch`` dead letters received before ``before``."""
        require_aware(before, "before")
        limit = check_limit(batch)
        with self._transaction("purging old dead letters", write=True) as session:
            query = select(DEAD_LETTERS.c.id).where(DEAD_LETTERS.c.received_at < before).limit(limit)
            ids = self._pick(session, query)
            if ids:
                session.execute(delete(DEAD_LETTERS).where(DEAD_LETTERS.c.id.in_(ids)))
            return len(ids)

    def purge_resolved_alerts(self, before: datetime, batch: int = 1000) -> int:
        """Delete up to ``batch`` alerts resolved before ``before`` (none with a pending delivery), with
        their deliveries and attempts."""
        require_aware(before, "before")
        limit = check_limit(batch)
        pending = exists().where(and_(DELIVERIES.c.alert_id == ALERTS.c.id, DELIVERIES.c.state == "pending"))
        query = (
            select(ALERTS.c.id)
            .where(ALERTS.c.state == "resolved", ALERTS.c.resolved_at < before, ~pending)
            .limit(limit)
        )
        with self._transaction("purging old resolved alerts", write=True) as session:
            ids = self._pick(session, query)
            if not ids:
                return 0
            deliveries = select(DELIVERIES.c.id).where(DELIVERIES.c.alert_id.in_(ids))
            session.execute(delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(deliveries)))
            session.execute(delete(DELIVERIES).where(DELIVERIES.c.alert_id.in_(ids)))
            session.execute(delete(ALERTS).where(ALERTS.c.id.in_(ids)))
            return len(ids)
