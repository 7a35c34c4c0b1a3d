"""How the API answers errors: 422s shaped like FastAPI's own, and handlers that never leak internals.

A storage error becomes 503 when retrying later may succeed and 500 otherwise, and any other exception a
500; the body says no more than that, and the log has the details.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse

from storage import StorageError, StorageUnavailable

__all__ = ["bad_param", "body_error", "install_error_handlers"]

log = logging.getLogger("sentinel.api")


def bad_param(where: str, name: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's validation errors, naming the parameter (``where`` is query, header...)."""
    return _unprocessable([where, name], message)


def body_error(exc: ValueError) -> HTTPException:
    """A 422 for a request body that is well-formed but breaks a rule (``exc`` says which)."""
    return _unprocessable(["body"], str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Answer storage errors and unexpected exceptions of every route of ``app``."""
    app.add_exception_handler(StorageUnavailable, _unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(StorageError, _storage_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


def _unprocessable(loc: list[str], message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": message, "type": "value_error"}],
    )


async def _unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
    log.warning("database unavailable serving %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503)


async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
    log.error("storage error serving %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Never a stack trace to the client: it would leak internals. The log has it.
    log.error("unexpected error serving %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)
