"""What the detectors found: ``GET /v1/windows`` (results per window, cursor paged) and ``/v1/anomalies``."""

from __future__ import annotations

from fastapi import APIRouter

from monitor.api.dependencies import READ, READ_ERRORS, QueriesDep, StoreDep
from monitor.api.paging import next_page, parse_window_cursor, window_cursor
from monitor.api.params import Cursor, DetectorFilter, Limit, ModelFilter, Since, Until
from monitor.api.schemas import AnomalyList, AnomalyOut, WindowPage, WindowResultOut

__all__ = ["router"]

router = APIRouter(tags=["results"])


@router.get("/v1/windows", response_model=WindowPage, dependencies=READ, responses=READ_ERRORS)
def list_windows(
    queries: QueriesDep,
    model: ModelFilter = None,
    detector: DetectorFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> WindowPage:
    """Per-window detector results, latest window first; ``since <= window_start < until``."""
    after = None if cursor is None else parse_window_cursor(cursor)
    # One more row than shown tells whether another page exists.
    rows = queries.results_page(
        model=model, detector=detector, since=since, until=until, after=after, limit=limit + 1
    )
    shown, next_cursor = next_page(rows, limit, window_cursor)
    return WindowPage(items=[WindowResultOut.of(r) for r in shown], next_cursor=next_cursor)


@router.get("/v1/anomalies", response_model=AnomalyList, dependencies=READ, responses=READ_ERRORS)
def list_anomalies(
    store: StoreDep, model: ModelFilter = None, since: Since = None, until: Until = None, limit: Limit = 100
) -> AnomalyList:
    """The most anomalous events, highest score first; ``since <= event_time < until``."""
    rows = store.anomalies(model=model, since=since, until=until, limit=limit)
    return AnomalyList(items=[AnomalyOut.of(r) for r in rows])
