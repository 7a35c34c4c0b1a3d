"""The HTTP API as a FastAPI app over the stores: :func:`create_app` assembles it, the routers serve it.

:func:`create_app` takes the stores and the settings, nothing global, so tests build it on any database and
the daemon serves it with uvicorn. It only puts the pieces together: the request limits, the error
handlers, the services the routes receive (:mod:`monitor.api.dependencies`) and one router per resource
(:mod:`monitor.api.routes`). Route handlers are plain ``def`` functions: the stores block, so FastAPI runs
them in its thread pool; only the alert stream is ``async`` (it polls the store in a worker thread).

Every time is RFC 3339 UTC (``Z``) on the way out and must carry an offset on the way in.
"""

from __future__ import annotations

from fastapi import FastAPI

from monitor.alerting.webhook_guard import WebhookGuard
from monitor.api.auth import TokenChecker
from monitor.api.dashboard import dashboard_router
from monitor.api.dependencies import ApiServices, StreamLimits, install_services
from monitor.api.errors import install_error_handlers
from monitor.api.limits import RequestLimits
from monitor.api.routes import alerts, dead_letters, models, probes, results, silences, subscriptions
from monitor.api.settings import ApiSettings
from monitor.api.status import RuntimeStatus, StatusProvider
from storage import AlertStore, Store
from storage.queries import ReadQueries

# RuntimeStatus and StatusProvider are part of create_app's signature: the daemon imports them from here.
__all__ = ["RuntimeStatus", "StatusProvider", "create_app"]

# In this order, which is also the order of the OpenAPI document's paths.
_ROUTERS = (probes, models, alerts, results, dead_letters, subscriptions, silences)


def create_app(
    store: Store,
    alert_store: AlertStore,
    settings: ApiSettings,
    *,
    status_provider: StatusProvider | None = None,
    stream_poll_interval: float = 0.5,
    stream_duration: float = 300.0,
    webhook_guard: WebhookGuard | None = None,
) -> FastAPI:
    """The API over ``store``/``alert_store`` (same engine); ``status_provider`` adds the daemon's view.

    An SSE connection ends after ``stream_duration`` seconds; clients reconnect with ``Last-Event-ID``
    (EventSource does so by itself), which bounds how long a proxy holds a connection without losing events.
    """
    app = FastAPI(
        title="Sentinel",
        version="1",
        description="Monitoring of deployed ML models: alerts, window results, anomalies, subscriptions.",
    )
    app.add_middleware(RequestLimits)
    install_error_handlers(app)
    install_services(
        app,
        ApiServices(
            store=store,
            alert_store=alert_store,
            queries=ReadQueries(store.engine),
            tokens=TokenChecker(settings),
            # Subscriptions to internal addresses are refused here already (and again at each delivery).
            webhook_guard=webhook_guard or WebhookGuard(),
            stream_limits=StreamLimits(poll_interval=stream_poll_interval, duration=stream_duration),
            status_provider=status_provider,
        ),
    )
    for module in _ROUTERS:
        app.include_router(module.router)
    # The dashboard page and its assets: no data, so no token (the page sends one to /v1).
    app.include_router(dashboard_router())
    return app
