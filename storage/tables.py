"""Core ``Table`` handles of the ORM classes, and the SQL idioms every store shares.

The stores write with Core statements (bulk ``executemany``, ``INSERT ... ON CONFLICT``) and read typed
rows; both need the tables, which the declarative classes expose only as an untyped ``__table__``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TypeVar, cast

from sqlalchemy import ColumnElement, SQLColumnExpression, String, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import models as orm
from storage.records import require_aware

__all__ = [
    "ALERTS",
    "ANOMALIES",
    "ATTEMPTS",
    "COUNTERS",
    "CURSORS",
    "DEAD_LETTERS",
    "DELIVERIES",
    "DETECTOR_STATES",
    "EVENTS",
    "IN_CHUNK",
    "MODELS",
    "PENDING",
    "REFERENCES",
    "RESULTS",
    "SILENCES",
    "SUBSCRIPTIONS",
    "WINDOWS",
    "Upsert",
    "chunks",
    "in_period",
    "is_one_of_batches",
    "upsert",
]

MODELS = cast(Table, orm.MonitoredModel.__table__)
REFERENCES = cast(Table, orm.Reference.__table__)
DETECTOR_STATES = cast(Table, orm.DetectorState.__table__)
WINDOWS = cast(Table, orm.Window.__table__)
RESULTS = cast(Table, orm.WindowResult.__table__)
EVENTS = cast(Table, orm.Event.__table__)
PENDING = cast(Table, orm.PendingLabel.__table__)
ANOMALIES = cast(Table, orm.Anomaly.__table__)
DEAD_LETTERS = cast(Table, orm.DeadLetter.__table__)
COUNTERS = cast(Table, orm.Counter.__table__)
ALERTS = cast(Table, orm.Alert.__table__)
CURSORS = cast(Table, orm.AlertCursor.__table__)
SUBSCRIPTIONS = cast(Table, orm.Subscription.__table__)
SILENCES = cast(Table, orm.Silence.__table__)
DELIVERIES = cast(Table, orm.Delivery.__table__)
ATTEMPTS = cast(Table, orm.DeliveryAttempt.__table__)

IN_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits
PG_ARRAY_CHUNK = 5000  # ids per "= ANY(array)" on PostgreSQL: one parameter, so only size matters

Upsert = postgresql.Insert | sqlite.Insert
T = TypeVar("T")


def in_period(
    column: SQLColumnExpression[datetime], since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """WHERE clauses for ``since <= column < until``, either bound optional; a naive bound is refused."""
    clauses = []
    if since is not None:
        require_aware(since, "since")
        clauses.append(column >= since)
    if until is not None:
        require_aware(until, "until")
        clauses.append(column < until)
    return clauses


def upsert(session: Session, table: Table) -> Upsert:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``on_conflict_do_update``."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def is_one_of_batches(
    session: Session, column: ColumnElement[str], ids: Sequence[str]
) -> Iterator[ColumnElement[bool]]:
    """WHERE clauses "``column`` is one of ``ids``", one per batch, together covering all ``ids``.

    SQLite gets ``IN (?, ?, ...)`` lists of :data:`IN_CHUNK`. PostgreSQL gets ``= ANY(:array)``:
    a single parameter instead of hundreds of placeholders to render, parse and plan, which
    makes the 10,000-id lookups of a large window several times faster.
    """
    if session.get_bind().dialect.name == "postgresql":
        for chunk in chunks(ids, PG_ARRAY_CHUNK):
            yield column == any_(bindparam(None, list(chunk), type_=postgresql.ARRAY(String())))
    else:
        for chunk in chunks(ids, IN_CHUNK):
            yield column.in_(chunk)
