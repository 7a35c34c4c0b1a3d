"""Engine construction for the two supported backends: SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from storage.errors import StorageError

__all__ = ["SQLITE_WRITE_OPTION", "make_engine"]

# Execution option set on a Connection whose transaction will write (see Store._transaction).
# On SQLite such transactions begin with BEGIN IMMEDIATE, so writers queue on the busy timeout
# up front instead of failing when a read transaction later tries to upgrade to a write lock.
SQLITE_WRITE_OPTION = "sentinel_sqlite_write"

SQLITE_BUSY_TIMEOUT_S = 30
PG_CONNECT_TIMEOUT_S = 10


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` (``sqlite:///path``, ``sqlite://`` or ``postgresql+psycopg://...``).

    SQLite: WAL journal, ``foreign_keys=ON``, a 30 s busy timeout, usable from any thread, and
    SQLAlchemy (not the sqlite3 module) emitting BEGIN so that reads are inside the
    transaction too. An in-memory database (``sqlite://``) lives on one connection shared by
    the whole engine: fine for tests and single-threaded use, not for concurrent writers.
    PostgreSQL: ``pool_pre_ping`` so connections dropped by a server restart are replaced
    transparently, a connect timeout so an unreachable host fails instead of hanging, and
    custom plans for prepared statements (see below).
    Extra ``kwargs`` go to :func:`sqlalchemy.create_engine`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"invalid database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    if backend == "postgresql":
        connect_args = {
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            # psycopg prepares a query server-side after five runs, and PostgreSQL may then
            # switch it to a generic plan; for our 500-id IN lists on a not yet analysed table
            # that plan compares every row with every id (~40x slower). Keep preparing (it
            # saves parsing in bulk inserts) but always plan for the actual values.
            "options": "-c plan_cache_mode=force_custom_plan",
            **kwargs.pop("connect_args", {}),
        }
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, connect_args=connect_args, **kwargs)
    raise StorageError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    # sqlite3's "timeout" is the busy timeout: how long a writer waits for the lock.
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    connect_args.update(kwargs.pop("connect_args", {}))
    if url.database in (None, "", ":memory:"):
        # Each new connection to ":memory:" would be a new, empty database: share one.
        kwargs.setdefault("poolclass", StaticPool)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (which would not BEGIN before
        # a SELECT); the "begin" hook below emits BEGIN instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers run while one writer commits; it persists in the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(SQLITE_WRITE_OPTION) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
