"""What every store shares: the transaction around each call, and argument checks made before any SQL runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from storage.engine import SQLITE_WRITE_OPTION
from storage.errors import StorageError, translate


class EngineBound:
    """Base of the stores: one engine, one transaction per call, driver errors mapped to StorageError."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise StorageError(f"unsupported database backend {engine.dialect.name!r}")
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The engine this store runs on."""
        return self._engine

    @contextmanager
    def _transaction(self, action: str, *, write: bool = False) -> Iterator[Session]:
        """One transaction on one connection; SQLAlchemy errors leave as StorageError."""
        try:
            with self._engine.connect() as conn:
                if write:
                    # SQLite: BEGIN IMMEDIATE (see storage.engine); ignored elsewhere.
                    conn.execution_options(**{SQLITE_WRITE_OPTION: True})
                with Session(bind=conn, autoflush=False, expire_on_commit=False) as session, session.begin():
                    yield session
        except SQLAlchemyError as exc:
            raise translate(exc, action) from exc


def check_name(value: str, what: str, max_length: int) -> None:
    """A non-empty string of at most ``max_length`` characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters: {value[:40]!r}...")


def check_limit(limit: int) -> int:
    """A page size of at least 1."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return int(limit)
