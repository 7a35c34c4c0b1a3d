"""The probes an orchestrator and Prometheus call: ``/healthz``, ``/readyz`` and ``/metrics`` (no token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from monitor.api.dependencies import QueriesDep, RuntimeDep, StoreDep
from monitor.api.prometheus import CONTENT_TYPE, render_metrics
from monitor.api.schemas import Health, Readiness
from monitor.api.status import RuntimeStatus
from storage import StorageError, Store

__all__ = ["router"]

router = APIRouter(tags=["probes"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: 200 while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a check failed"}},
)
def readyz(store: StoreDep, status_now: RuntimeDep) -> JSONResponse:
    """Readiness: the database answers, the broker is connected with partitions, models are fitted."""
    checks = {"database": _database_check(store)}
    if status_now is not None:
        checks.update(_daemon_checks(status_now))
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(queries: QueriesDep, status_now: RuntimeDep) -> PlainTextResponse:
    """Prometheus metrics (text exposition format 0.0.4)."""
    return PlainTextResponse(render_metrics(queries, status_now), media_type=CONTENT_TYPE)


def _database_check(store: Store) -> str:
    try:
        store.ping()
    except StorageError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _daemon_checks(status_now: RuntimeStatus) -> dict[str, str]:
    """Each check the daemon's state allows: 'ok' or why not (a check it cannot tell is left out)."""
    checks: dict[str, str] = {}
    if status_now.state is not None:
        checks["daemon"] = "ok" if status_now.state == "running" else status_now.state
    if status_now.broker_connected is not None:
        checks["broker"] = "ok" if status_now.broker_connected else "not connected"
    if status_now.partitions_assigned is not None:
        checks["partitions"] = "ok" if status_now.partitions_assigned > 0 else "no partitions assigned"
    if status_now.models_ready:
        checks["models"] = "ok"
    else:
        waiting = sorted(name for name, m in status_now.models.items() if m.get("phase") != "ready")
        checks["models"] = "not fitted yet: " + ", ".join(waiting)
    return checks
