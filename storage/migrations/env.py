"""Alembic environment for Sentinel's schema.

Normally run through :func:`storage.migrate`, which hands over an open connection in
``config.attributes["connection"]`` (that is what makes in-memory SQLite work: a second
connection would see a different, empty database). From the command line
(``alembic -c storage/alembic.ini ...``) the URL comes from ``sqlalchemy.url`` or the
``SENTINEL_DATABASE_URL`` environment variable.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from storage.engine import make_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata

# Only the command line configures logging from the ini file; a library call must not.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("SENTINEL_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or SENTINEL_DATABASE_URL")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # A no-op when the caller's connection is already in a transaction (storage.migrate).
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the connection from storage.migrate, or a fresh engine for the CLI."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
