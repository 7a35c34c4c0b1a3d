"""Reads that cut across the stores, for the HTTP API and the Prometheus scrape: :class:`ReadQueries`.

* alerts and window results paged by a *keyset* (``id`` / ``(window_start, id)``) so that pages stay
  stable while new rows arrive (ordering alerts by ``last_seen`` but paging by ``id`` could skip alerts);
* the model list with each model's latest reference;
* aggregate counts (alerts, deliveries, dead letters);
* the alert changes a live stream follows (new alerts, then resolutions, each past a keyset).

Plain SQLAlchemy on the stores' engine and transaction helper: every method is one transaction, returns
records or plain dicts, and raises :class:`~storage.errors.StorageError` like the stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, func, or_, select

from storage import models as orm
from storage.alert_store import AlertStore
from storage.records import AlertRecord, WindowResultRecord
from storage.rows import record_from_row
from storage.session import EngineBound, check_limit
from storage.store import Store

__all__ = ["AlertChanges", "ModelRow", "ReadQueries"]


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A monitored model as stored, with its latest reference (if any)."""

    name: str
    created_at: datetime
    last_window_end: datetime | None
    reference_id: int | None
    reference_source: str | None
    reference_hash: str | None
    reference_events: int | None
    reference_created_at: datetime | None


@dataclass(frozen=True, slots=True)
class AlertChanges:
    """What a live stream has not sent yet: new alerts (id order) and resolutions (resolve order)."""

    opened: list[AlertRecord]
    resolved: list[AlertRecord]


class ReadQueries(EngineBound):
    """Read-only queries over every table; one transaction per call, errors as StorageError."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # The pages that the stores already list (alerts, window results) are theirs, on the same engine.
        self._alerts = AlertStore(engine)
        self._store = Store(engine)

    def alerts_page(
        self,
        *,
        model: str | None = None,
        detector: str | None = None,
        threat: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]:
        """Alerts newest first by (immutable) id, so pages stay stable while new alerts arrive."""
        return self._alerts.list_alerts(
            model=model,
            detector=detector,
            threat=threat,
            state=state,
            severities=[severity] if severity is not None else None,
            since=since,
            until=until,
            limit=limit,
            order="id",
            before_id=before_id,
        )

    def results_page(
        self,
        *,
        model: str | None = None,
        detector: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[WindowResultRecord]:
        """Window results, latest window first then id descending, strictly after the keyset ``after``."""
        return self._store.window_results(
            model=model, detector=detector, since=since, until=until, limit=limit, order="id", after=after
        )

    def models(self) -> list[ModelRow]:
        """Every registered model with its latest reference's metadata (never the payload)."""
        ref = orm.Reference
        latest = select(ref.model, func.max(ref.id).label("ref_id")).group_by(ref.model).subquery("latest")
        stmt = (
            select(
                orm.MonitoredModel.name,
                orm.MonitoredModel.created_at,
                orm.MonitoredModel.last_window_end,
                ref.id,
                ref.source,
                ref.content_hash,
                ref.n_events,
                ref.created_at.label("ref_created_at"),
            )
            .outerjoin(latest, latest.c.model == orm.MonitoredModel.name)
            .outerjoin(ref, ref.id == latest.c.ref_id)
            .order_by(orm.MonitoredModel.name)
        )
        with self._transaction("reading models") as session:
            return [ModelRow(*row) for row in session.execute(stmt)]

    def alert_counts(self) -> dict[tuple[str, str], int]:
        """Number of alerts per (state, severity); pairs with no alert are absent."""
        a = orm.Alert
        stmt = select(a.state, a.severity, func.count()).group_by(a.state, a.severity)
        with self._transaction("counting alerts") as session:
            return {(state, severity): int(n) for state, severity, n in session.execute(stmt)}

    def delivery_counts(self) -> dict[str, int]:
        """Number of deliveries per state (pending, delivered, failed); states with none are absent."""
        d = orm.Delivery
        stmt = select(d.state, func.count()).group_by(d.state)
        with self._transaction("counting deliveries") as session:
            return {state: int(n) for state, n in session.execute(stmt)}

    def dead_letter_count(self) -> int:
        """How many dead letters are stored."""
        with self._transaction("counting dead letters") as session:
            return int(session.scalar(select(func.count()).select_from(orm.DeadLetter)) or 0)

    def max_alert_id(self) -> int:
        """The highest alert id (0 when there is none): where a fresh stream of changes starts."""
        with self._transaction("reading the newest alert id") as session:
            return int(session.scalar(select(func.max(orm.Alert.id))) or 0)

    def last_resolution(self) -> tuple[datetime, int] | None:
        """The (resolved_at, id) of the latest resolution, or None."""
        a = orm.Alert
        stmt = (
            select(a.resolved_at, a.id)
            .where(a.state == "resolved", a.resolved_at.is_not(None))
            .order_by(a.resolved_at.desc(), a.id.desc())
            .limit(1)
        )
        with self._transaction("reading the latest resolution") as session:
            row = session.execute(stmt).first()
            if row is None or row[0] is None:
                return None
            return (row[0], int(row[1]))

    def alert_changes(
        self, after_id: int, resolved_after: tuple[datetime, int] | None, limit: int = 500
    ) -> AlertChanges:
        """Alerts with id > ``after_id``, and resolved alerts past the keyset ``(resolved_at, id)``.

        The alert engine writes under one lock and stamps every change of a tick with the tick's time, so
        ids grow in commit order and ``(resolved_at, id)`` does too (for a clock that does not go back).
        """
        a = orm.Alert
        opened = select(a).where(a.id > after_id).order_by(a.id).limit(check_limit(limit))
        resolved = (
            select(a)
            .where(a.state == "resolved", a.resolved_at.is_not(None))
            .order_by(a.resolved_at, a.id)
            .limit(check_limit(limit))
        )
        if resolved_after is not None:
            at, last_id = resolved_after
            resolved = resolved.where(or_(a.resolved_at > at, and_(a.resolved_at == at, a.id > last_id)))
        with self._transaction("reading alert changes") as session:
            # Resolutions first: on PostgreSQL each statement has its own snapshot, and an alert that opens
            # and resolves between the two reads must then show up as opened now and resolved next time,
            # never as resolved before it was seen opening.
            resolved_rows = [record_from_row(AlertRecord, x) for x in session.scalars(resolved)]
            opened_rows = [record_from_row(AlertRecord, x) for x in session.scalars(opened)]
            return AlertChanges(opened=opened_rows, resolved=resolved_rows)
