"""The dashboard: one hand-written page (HTML, JavaScript, CSS; no build step) served next to the API.

``GET /`` redirects to ``GET /dashboard``; the page loads ``/dashboard/static/dashboard.{js,css}``. The page
and its assets hold no data, so they are served without a token; the script calls the ``/v1`` API with the
bearer token the user enters when the API answers 401 (kept in the tab's ``sessionStorage``), and reads the
alert stream with ``fetch`` rather than ``EventSource``, which cannot send that header.

Every response carries a Content-Security-Policy that allows only this origin's script, style and
connections: the page shows dead letters, which are arbitrary bytes from the broker, and the policy is a
second line of defence behind the script's rule of putting data into the DOM only as text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import RedirectResponse, Response

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "dashboard_router"]

log = logging.getLogger("sentinel.api")

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The only files served: a fixed table, so no request path ever reaches the file system.
_MEDIA_TYPES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A few kB each: always revalidate, so an upgraded daemon never runs a stale script against a new API.
    "Cache-Control": "no-cache",
}


def _load_assets(directory: Path) -> dict[str, bytes]:
    assets = {}
    for name in _MEDIA_TYPES:
        try:
            assets[name] = (directory / name).read_bytes()
        except OSError as exc:
            # A packaging mistake must not stop the daemon from monitoring: the API still works without it.
            log.warning("dashboard asset %s cannot be read (%s); the dashboard is unavailable", name, exc)
    return assets


def dashboard_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """The routes of the dashboard, to include in the API app (they are left out of the OpenAPI document).

    Parameters
    ----------
    static_dir
        Where ``dashboard.html``, ``dashboard.js`` and ``dashboard.css`` are; read once, here.

    Returns
    -------
    APIRouter
        ``GET /`` (a redirect), ``GET /dashboard`` and ``GET /dashboard/static/{name}``.

    Examples
    --------
    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> app.include_router(dashboard_router())
    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(app)
    >>> client.get("/", follow_redirects=False).headers["location"]
    'dashboard'
    >>> client.get("/dashboard").headers["content-type"]
    'text/html; charset=utf-8'
    >>> [client.get(f"/dashboard/static/{name}").status_code for name in ("dashboard.js", "x")]
    [200, 404]
    """
    assets = _load_assets(static_dir)
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no dashboard asset {name!r}")
        return Response(body, media_type=_MEDIA_TYPES[name], headers=_HEADERS)

    @router.get("/")
    def root() -> RedirectResponse:
        # Relative, so that the redirect also works behind a reverse proxy that adds a path prefix.
        return RedirectResponse("dashboard", status_code=status.HTTP_307_TEMPORARY_REDIRECT)

    @router.get("/dashboard")
    def page() -> Response:
        return serve("dashboard.html")

    @router.get("/dashboard/static/{name}")
    def asset(name: str) -> Response:
        if name == "dashboard.html" or name not in _MEDIA_TYPES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no dashboard asset {name!r}")
        return serve(name)

    return router
