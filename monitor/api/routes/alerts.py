"""``GET /v1/alerts`` (newest first, cursor paged) and ``GET /v1/alerts/{id}`` with its deliveries.

The stream (:mod:`monitor.api.routes.stream`) is included between the two: ``/v1/alerts/stream`` must be
matched before ``/v1/alerts/{alert_id}``, which would otherwise take ``stream`` for an (invalid) id.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status

from monitor.api.dependencies import READ, READ_ERRORS, AlertStoreDep, QueriesDep
from monitor.api.paging import alert_cursor, next_page, parse_alert_cursor
from monitor.api.params import MAX_LIMIT, Cursor, DbId, DetectorFilter, Limit, ModelFilter, Since, Until
from monitor.api.routes import stream
from monitor.api.schemas import (
    AlertDetail,
    AlertOut,
    AlertPage,
    AttemptOut,
    DeliveryOut,
    ErrorOut,
    Severity,
    Threat,
)
from storage import AlertRecord, AlertStore

__all__ = ["router"]

# No router-wide tags: the included stream route carries its own, and they would be added twice.
router = APIRouter()


@router.get("/v1/alerts", response_model=AlertPage, dependencies=READ, responses=READ_ERRORS, tags=["alerts"])
def list_alerts(
    queries: QueriesDep,
    model: ModelFilter = None,
    detector: DetectorFilter = None,
    threat: Threat | None = None,
    severity: Severity | None = None,
    state: Literal["firing", "resolved"] | None = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AlertPage:
    """Alerts newest first (by id), ``since <= last_seen < until``; page with ``next_cursor``.

    Pages are keyed on the alert id, which never changes, so alerts opened between two page requests
    appear before the first page and never shift later pages.
    """
    rows = queries.alerts_page(
        model=model,
        detector=detector,
        threat=threat,
        severity=severity,
        state=state,
        since=since,
        until=until,
        before_id=None if cursor is None else parse_alert_cursor(cursor),
        limit=limit + 1,  # one more tells whether another page exists
    )
    shown, next_cursor = next_page(rows, limit, _cursor_after)
    return AlertPage(items=[AlertOut.of(a) for a in shown], next_cursor=next_cursor)


router.include_router(stream.router)


@router.get(
    "/v1/alerts/{alert_id}",
    response_model=AlertDetail,
    dependencies=READ,
    responses={**READ_ERRORS, 404: {"model": ErrorOut, "description": "no such alert"}},
    tags=["alerts"],
)
def get_alert(alert_id: DbId, alert_store: AlertStoreDep) -> AlertDetail:
    """One alert with its deliveries and each delivery's attempts."""
    alert = alert_store.alert(alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert with id {alert_id}")
    return AlertDetail.of(alert, deliveries=_deliveries(alert_store, alert_id))


def _cursor_after(alert: AlertRecord) -> str:
    return alert_cursor(alert.id)


def _deliveries(alert_store: AlertStore, alert_id: int) -> list[DeliveryOut]:
    """The alert's deliveries, each with the log of its attempts."""
    attempts: dict[int, list[AttemptOut]] = {}
    for attempt in alert_store.attempts(alert_id=alert_id):
        attempts.setdefault(attempt.delivery_id, []).append(AttemptOut.of(attempt))
    return [
        DeliveryOut.of(delivery, attempt_log=attempts.get(delivery.id, []))
        for delivery in alert_store.deliveries(alert_id=alert_id, limit=MAX_LIMIT)
    ]
