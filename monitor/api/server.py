"""Serving the API from the daemon: uvicorn on a background thread, on a socket bound up front.

Binding in the caller's thread makes "address in use" an immediate, reportable error instead of a
``SystemExit`` inside uvicorn's thread, and lets ``port: 0`` pick a free port that :attr:`ApiServer.port`
then reports.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from fastapi import FastAPI

__all__ = ["ApiServer"]

log = logging.getLogger("sentinel.api")


class ApiServer:
    """One uvicorn server for ``app`` on ``host:port``, running on a daemon thread."""

    def __init__(self, app: FastAPI, host: str, port: int, *, graceful_timeout: int = 5) -> None:
        self.host = host
        self._socket = _bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # keep Sentinel's logging setup (JSON lines or text)
            access_log=False,
            lifespan="off",
            # Open SSE streams must not hold up the daemon's stop for long.
            timeout_graceful_shutdown=graceful_timeout,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="sentinel-api", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # uvicorn exits with SystemExit on fatal errors: log it, not the thread hook
            log.exception("HTTP API server stopped with an error")

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP API listening on http://%s:%d", self.host, self.port)

    @property
    def started(self) -> bool:
        """Whether uvicorn is accepting requests."""
        return bool(self._server.started)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for it (open streams are cut after the graceful timeout)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2.0)
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
