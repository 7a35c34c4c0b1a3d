"""Storage errors, and the one place where driver errors are sorted into them.

The monitor retries :class:`StorageUnavailable` with backoff and treats any other
:class:`StorageError` as a bug or a broken database. So the only question this module
answers is: *would trying the same call again later plausibly succeed?*
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

__all__ = ["StorageError", "StorageUnavailable", "is_unavailable", "translate"]


class StorageError(Exception):
    """A storage operation failed; the transaction was rolled back."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or cannot serve right now; retry with backoff.

    Raised for refused or dropped connections, a server shutting down or restarting,
    an exhausted connection pool, and lock contention that outlasted the timeout
    (SQLite ``database is locked``, PostgreSQL deadlock or serialisation failure): in
    every case the transaction was rolled back completely, so the same call may simply
    be repeated.
    """


# PostgreSQL SQLSTATEs that mean "the server is not serving this connection now".
# Class 08 is "connection exception"; 57P01-57P03 are admin/crash shutdown and "cannot
# connect now" (starting up); 53300 is too_many_connections. 40001/40P01 (serialisation
# failure, deadlock) are included because the whole transaction was aborted and a retry
# is exactly the right response.
_PG_UNAVAILABLE_PREFIXES = ("08",)
_PG_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})

# sqlite3 reports everything as OperationalError; only these messages are transient.
_SQLITE_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
)


def is_unavailable(exc: BaseException) -> bool:
    """Return True if ``exc`` means the database is unreachable or temporarily unable to serve."""
    if isinstance(exc, StorageUnavailable):
        return True
    # Pool checkout timeout or a connection the pool found dead: nothing to do with the query.
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        # SQLAlchemy's dialect already classified this as a disconnect.
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        message = str(orig).lower()
        return isinstance(orig, sqlite3.OperationalError) and any(
            m in message for m in _SQLITE_UNAVAILABLE_MESSAGES
        )
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_PG_UNAVAILABLE_PREFIXES) or sqlstate in _PG_UNAVAILABLE_CODES
    # psycopg raises OperationalError without a SQLSTATE for client-side failures
    # (connection refused, host unreachable, server closed the connection); an
    # InterfaceError means the connection object itself is unusable (already closed).
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)


def translate(exc: sa_exc.SQLAlchemyError, action: str) -> StorageError:
    """Wrap a SQLAlchemy/driver error as the matching storage error (raise it ``from exc``)."""
    cls = StorageUnavailable if is_unavailable(exc) else StorageError
    # The driver's first line is the useful part; SQLAlchemy appends the SQL and a URL.
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return cls(f"{action} failed: {detail[0] if detail else type(exc).__name__}")
