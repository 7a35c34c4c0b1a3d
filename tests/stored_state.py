"""What the tests read straight from the database to observe stored state the product never reads back.

The stores keep no methods that only tests call; these queries stand in for them.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from storage import AlertState
from storage import models as orm
from storage.alert_store import ENGINE_CURSOR
from storage.rows import record_from_row
from storage.session import EngineBound


def _engine(store: EngineBound | Engine) -> Engine:
    return store if isinstance(store, Engine) else store.engine


def alert_states(store: EngineBound | Engine, fingerprint: str | None = None) -> list[AlertState]:
    """Alerts with their lifecycle fields, oldest first (optionally of one fingerprint)."""
    stmt = select(orm.Alert).order_by(orm.Alert.id)
    if fingerprint is not None:
        stmt = stmt.where(orm.Alert.fingerprint == fingerprint)
    with Session(_engine(store)) as session:
        return [record_from_row(AlertState, a) for a in session.scalars(stmt)]


def count_events(store: EngineBound | Engine, model: str) -> int:
    """How many events of ``model`` are stored."""
    stmt = select(func.count()).select_from(orm.Event).where(orm.Event.model == model)
    with Session(_engine(store)) as session:
        return int(session.scalar(stmt) or 0)


def event_labels(store: EngineBound | Engine, model: str, event_ids: Sequence[str]) -> dict[str, str]:
    """The stored labels of those of ``event_ids`` that are stored with a label."""
    stmt = select(orm.Event.event_id, orm.Event.label).where(
        orm.Event.model == model, orm.Event.event_id.in_(list(event_ids)), orm.Event.label.is_not(None)
    )
    with Session(_engine(store)) as session:
        return {event_id: label for event_id, label in session.execute(stmt) if label is not None}


def alert_cursor(store: EngineBound | Engine) -> int:
    """The alert engine's cursor: the highest result revision processed (0 if none)."""
    stmt = select(orm.AlertCursor.revision).where(orm.AlertCursor.name == ENGINE_CURSOR)
    with Session(_engine(store)) as session:
        return int(session.scalar(stmt) or 0)


def unprocessed_results(store: EngineBound | Engine) -> int:
    """How many window results the alert engine has not processed yet (revisions past its cursor)."""
    cursor = alert_cursor(store)
    stmt = select(func.count()).select_from(orm.WindowResult).where(orm.WindowResult.revision > cursor)
    with Session(_engine(store)) as session:
        return int(session.scalar(stmt) or 0)
