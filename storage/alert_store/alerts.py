"""Reading alerts as the API and the notifications show them (the lifecycle writes them, see
:mod:`storage.alert_store.evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from sqlalchemy import select

from storage import models as orm
from storage.alert_store.vocabulary import ALERT_STATES, SEVERITIES, one_of
from storage.records import AlertRecord
from storage.rows import record_from_row
from storage.session import EngineBound, check_limit
from storage.tables import in_period

__all__ = ["AlertReads"]


class AlertReads(EngineBound):
    """One alert by id, and filtered, paged lists of alerts."""

    def alert(self, alert_id: int) -> AlertRecord | None:
        """One alert, or None."""
        with self._transaction("reading an alert") as session:
            row = session.get(orm.Alert, alert_id)
            return None if row is None else record_from_row(AlertRecord, row)

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
            one_of(state, ALERT_STATES, "state")
            stmt = stmt.where(a.state == state)
        if severities:
            for s in severities:
                one_of(s, SEVERITIES, "severity")
            stmt = stmt.where(a.severity.in_(list(severities)))
        stmt = stmt.where(*in_period(a.last_seen, since, until))
        if before_id is not None:
            stmt = stmt.where(a.id < before_id)
        with self._transaction("reading alerts") as session:
            return [record_from_row(AlertRecord, x) for x in session.scalars(stmt)]
