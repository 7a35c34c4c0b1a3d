"""The database of one configuration, opened the same way by every command (``run``, ``replay``, ``migrate``,
``alerts``): :func:`open_store`.

What makes them the same is the webhook-secret key (``alerting.secret_key``). The migration seals webhook
secrets that older versions stored in plain text, and the alert store seals and opens them; a command that
left the configured key out would fall back to the environment or to a key file beside a SQLite database,
and seal secrets that the daemon, holding the configured key, could not open.

Examples
--------
>>> from monitor.config import AppConfig
>>> with open_store(AppConfig(database_url="sqlite://")) as database:
...     database.migrate()
...     database.store.ping()
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from sqlalchemy import Engine

from monitor.config import AppConfig
from storage import AlertStore, Store, make_engine, migrate

__all__ = ["Database", "configured_secret_key", "open_store"]


def configured_secret_key(config: AppConfig) -> str | None:
    """``alerting.secret_key`` as text, or None when it is not set (then storage looks for one itself)."""
    key = config.alerting.secret_key
    return key.get_secret_value() if key is not None else None


@dataclass(frozen=True)
class Database:
    """One configured database: its engine and the two stores on it, sharing the configured secret key.

    Nothing is connected when it is opened: :meth:`migrate` is the first statement sent, so a command can
    wait for a database that is not up yet.
    """

    engine: Engine
    store: Store
    alerts: AlertStore
    secret_key: str | None

    def migrate(self) -> None:
        """Bring the schema up to date, sealing any plain-text webhook secret with the configured key."""
        migrate(self.engine, secret_key=self.secret_key)

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_store(config: AppConfig) -> Database:
    """The database ``config.database_url`` names, with the stores every command uses on it."""
    engine = make_engine(config.database_url)
    secret_key = configured_secret_key(config)
    return Database(
        engine=engine,
        store=Store(engine),
        alerts=AlertStore(engine, secret_key=secret_key),
        secret_key=secret_key,
    )
