"""Programmatic ``alembic upgrade head`` that works from any directory and for in-memory SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from storage.engine import SQLITE_WRITE_OPTION, make_engine
from storage.errors import translate

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "head_revision", "migrate"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Arbitrary constant key for pg_advisory_xact_lock: two daemons starting together against
# the same PostgreSQL database must not both try to create the tables.
_PG_MIGRATION_LOCK_KEY = 0x53454E54  # "SENT"


def alembic_config() -> Config:
    """An Alembic config whose script location is this package's migrations, wherever it is installed."""
    config = Config()
    # ConfigParser interpolates "%": escape it in case the install path contains one.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str | None:
    """The revision ``migrate`` upgrades to."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(engine_or_url: Engine | str | URL, *, secret_key: str | None = None) -> None:
    """Bring the database schema up to the latest revision (``alembic upgrade head``).

    ``secret_key`` (base64 of 32 bytes) seals webhook secrets stored in plain text by older versions
    (revision 0003); without it the key is found as :mod:`storage.crypto` finds it.

    Runs in one transaction on the given engine's connection (so in-memory SQLite works);
    running it again on an up-to-date database does nothing. Concurrent callers on PostgreSQL
    are serialised with an advisory lock, on SQLite by a write transaction. Raises
    :class:`~storage.errors.StorageUnavailable` if the database cannot be reached.
    """
    owned = not isinstance(engine_or_url, Engine)
    engine = make_engine(engine_or_url) if not isinstance(engine_or_url, Engine) else engine_or_url
    try:
        with engine.connect() as conn:
            conn.execution_options(**{SQLITE_WRITE_OPTION: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
                config = alembic_config()
                config.attributes["connection"] = conn
                config.attributes["secret_key"] = secret_key
                command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise translate(exc, "database migration") from exc
    finally:
        if owned:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None if it was never migrated)."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise translate(exc, "reading the schema revision") from exc
