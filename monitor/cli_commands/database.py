"""The database a command uses: ``--db`` checked before anything connects, and the database of a command
that only reads opened without creating anything.

A SQLite URL needs three slashes before a relative path and four before an absolute one; a bare path is
refused with that form shown:

>>> try:
...     database_url("sqlite:///sentinel.db", "/tmp/x.db")
... except CommandError as error:
...     print(str(error).split(" (")[0])
--db '/tmp/x.db' is not a database URL; for a SQLite file write sqlite:////tmp/x.db
>>> sqlite_path("sqlite:///data/x.db")
PosixPath('data/x.db')
>>> sqlite_path("sqlite://") is None  # in memory
True
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from monitor.cli_commands import CommandError
from monitor.config import AppConfig, redact_url
from monitor.database import Database, open_store
from storage.migrate import current_revision

__all__ = ["check_sqlite_directory", "database_url", "open_existing", "sqlite_path"]

BACKENDS = ("sqlite", "postgresql")


def database_url(configured: str, override: str | None) -> str:
    """``--db`` when given, else the configured URL; a ``--db`` that is no sqlite or postgresql URL is an
    error showing the URL form of the same path."""
    if override is None:
        return configured
    try:
        backend = make_url(override).get_backend_name()
    except ArgumentError:
        backend = None
    if backend not in BACKENDS:
        raise CommandError(
            f"--db {override!r} is not a database URL; for a SQLite file write sqlite:///{override} "
            "(four slashes before an absolute path), for PostgreSQL postgresql+psycopg://user@host/name"
        )
    return override


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_sqlite_directory(url: str) -> None:
    """Fail naming the path when a SQLite file is to be made in a directory that does not exist."""
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise CommandError(f"no directory {str(path.parent)!r} for the SQLite database {str(path)!r}")


def open_existing(config: AppConfig) -> Database:
    """The configured database for a command that only reads: never created, and migrated already.

    A missing SQLite file would otherwise be created empty by the first connection, and a database without
    Sentinel's tables would fail on the first query with "no such table".
    """
    url = config.database_url
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise CommandError(f"no database at {str(path)!r} (create one with `sentinel migrate --db {url}`)")
    database = open_store(config)
    try:
        if current_revision(database.engine) is None:
            raise CommandError(
                f"the database {redact_url(url)} has no Sentinel schema; "
                "create it with `sentinel migrate` (with the same --config or --db)"
            )
    except BaseException:
        database.close()
        raise
    return database
