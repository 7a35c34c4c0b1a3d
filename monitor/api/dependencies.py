"""What the routes share, handed to them as FastAPI dependencies instead of a closure over ``create_app``.

:func:`~monitor.api.app.create_app` builds one :class:`ApiServices` and keeps it in ``app.state``; a route
names what it needs by type (``store: StoreDep``). The scope a route requires is one of :data:`READ` and
:data:`ADMIN`, and :data:`READ_ERRORS` / :data:`ADMIN_ERRORS` document the error answers that come with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.params import Depends as DependsParam

from monitor.alerting.webhook_guard import WebhookGuard
from monitor.api.auth import Scope, TokenChecker
from monitor.api.schemas import ErrorOut
from monitor.api.status import RuntimeStatus, StatusProvider
from storage import AlertStore, Store
from storage.queries import ReadQueries

__all__ = [
    "ADMIN",
    "ADMIN_ERRORS",
    "READ",
    "READ_ERRORS",
    "AlertStoreDep",
    "ApiServices",
    "GuardDep",
    "QueriesDep",
    "RuntimeDep",
    "StoreDep",
    "StreamLimits",
    "StreamLimitsDep",
    "install_services",
]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """How often the alert stream polls the store, and how long one connection lasts (seconds)."""

    poll_interval: float
    duration: float


@dataclass(frozen=True, slots=True)
class ApiServices:
    """Everything the routes work with; one per app, in ``app.state.services``."""

    store: Store
    alert_store: AlertStore
    queries: ReadQueries
    tokens: TokenChecker
    webhook_guard: WebhookGuard
    stream_limits: StreamLimits
    status_provider: StatusProvider | None = None

    def runtime_status(self) -> RuntimeStatus | None:
        """The daemon's view now, or None when the API runs without a daemon (tests, replay)."""
        return self.status_provider() if self.status_provider is not None else None


def install_services(app: FastAPI, services: ApiServices) -> None:
    """Make ``services`` what the routes of ``app`` receive."""
    app.state.services = services


def _services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


# Async, so that FastAPI calls them on the event loop rather than handing each to its thread pool.
async def _store(request: Request) -> Store:
    return _services(request).store


async def _alert_store(request: Request) -> AlertStore:
    return _services(request).alert_store


async def _queries(request: Request) -> ReadQueries:
    return _services(request).queries


async def _guard(request: Request) -> WebhookGuard:
    return _services(request).webhook_guard


async def _stream_limits(request: Request) -> StreamLimits:
    return _services(request).stream_limits


async def _runtime(request: Request) -> RuntimeStatus | None:
    return _services(request).runtime_status()


async def _require_read(request: Request) -> None:
    _services(request).tokens.check(request, Scope.READ)


async def _require_admin(request: Request) -> None:
    _services(request).tokens.check(request, Scope.ADMIN)


StoreDep = Annotated[Store, Depends(_store)]
AlertStoreDep = Annotated[AlertStore, Depends(_alert_store)]
QueriesDep = Annotated[ReadQueries, Depends(_queries)]
GuardDep = Annotated[WebhookGuard, Depends(_guard)]
StreamLimitsDep = Annotated[StreamLimits, Depends(_stream_limits)]
RuntimeDep = Annotated[RuntimeStatus | None, Depends(_runtime)]

# The scope a route needs, as its ``dependencies=`` (admin tokens can also read).
READ: list[DependsParam] = [Depends(_require_read)]
ADMIN: list[DependsParam] = [Depends(_require_admin)]

READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid bearer token"},
    422: {"model": ErrorOut, "description": "an invalid parameter (named in detail[].loc)"},
    503: {"model": ErrorOut, "description": "the database is unavailable; retry later"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS,
    403: {"model": ErrorOut, "description": "the token lacks the admin scope"},
}
