"""Reading back what was stored: windows, detector results and anomalous events, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import and_, or_, select

from storage import models as orm
from storage.records import AnomalyRecord, WindowResultRecord, WindowSummary, require_aware
from storage.rows import record_from_row
from storage.session import EngineBound, check_limit
from storage.tables import in_period

__all__ = ["HistoryReader"]


class HistoryReader(EngineBound):
    """The history queries of the API, the CLI and the tests."""

    def windows(self, model: str, limit: int = 1000) -> list[WindowSummary]:
        """The latest ``limit`` stored windows of ``model``, newest start first."""
        stmt = (
            select(orm.Window)
            .where(orm.Window.model == model)
            .order_by(orm.Window.start.desc())
            .limit(check_limit(limit))
        )
        with self._transaction("reading windows") as session:
            return [record_from_row(WindowSummary, w) for w in session.scalars(stmt)]

    def window_results(
        self,
        model: str | None = None,
        detector: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        order: Literal["detector", "id"] = "detector",
        after: tuple[datetime, int] | None = None,
    ) -> list[WindowResultRecord]:
        """Detector results, latest window first, then by detector name or (for stable pages) by id.

        Filters are optional; the time filter is ``since <= window_start < until``. ``after`` is a keyset
        ``(window_start, id)``: only results strictly after it in id order (which it requires).
        """
        r = orm.WindowResult
        if after is not None and order != "id":
            raise ValueError("after pages by (window_start, id): use order='id'")
        tiebreak = (r.id.desc(),) if order == "id" else (r.detector, r.id.desc())
        stmt = select(r).order_by(r.window_start.desc(), *tiebreak).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(r.model == model)
        if detector is not None:
            stmt = stmt.where(r.detector == detector)
        stmt = stmt.where(*in_period(r.window_start, since, until))
        if after is not None:
            start, last_id = after
            require_aware(start, "after")
            stmt = stmt.where(or_(r.window_start < start, and_(r.window_start == start, r.id < last_id)))
        with self._transaction("reading window results") as session:
            return [record_from_row(WindowResultRecord, x) for x in session.scalars(stmt)]

    def anomalies(
        self,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AnomalyRecord]:
        """Anomalous events, highest score first, filtered on ``since <= event_time < until``."""
        a = orm.Anomaly
        stmt = select(a).order_by(a.score.desc(), a.event_time.desc(), a.id).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(a.model == model)
        stmt = stmt.where(*in_period(a.event_time, since, until))
        with self._transaction("reading anomalies") as session:
            return [record_from_row(AnomalyRecord, x) for x in session.scalars(stmt)]
