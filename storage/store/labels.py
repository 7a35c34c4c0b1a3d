"""Ground truth that arrives after its event: attached to the stored event, or parked until it is stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from storage.records import require_aware
from storage.session import EngineBound
from storage.store.registry import lock_model
from storage.tables import EVENTS, PENDING, WINDOWS, upsert

__all__ = ["LabelStore"]


class LabelStore(EngineBound):
    """Feedback labels, and the stored (predicted, label) pairs that label-based detectors re-evaluate."""

    def label_event(self, model: str, event_id: str, label: str, at: datetime) -> int | None:
        """Record ground truth for an event; returns the id of the stored event's window, None if parked.

        If the event is not stored yet, the label waits in ``pending_labels`` and is applied by
        :meth:`storage.Store.store_window`. Of several labels for one event, the one with the latest ``at``
        wins. The window id lets the caller re-evaluate that window's label-based results.
        """
        require_aware(at, "at")
        if not isinstance(label, str):
            raise TypeError(f"label must be a str, got {type(label).__name__}")
        with self._transaction("attaching a label", write=True) as session:
            # Shared lock: labels for one model may be attached concurrently, but not while
            # store_window for that model is between "no such event" and "pending applied".
            lock_model(session, model, shared=True)
            row = session.execute(
                select(EVENTS.c.window_id, EVENTS.c.label, EVENTS.c.labelled_at)
                .where(EVENTS.c.model == model, EVENTS.c.event_id == event_id)
                .with_for_update()
            ).one_or_none()
            if row is None:
                stmt = upsert(session, PENDING).values(
                    model=model, event_id=event_id, label=label, received_at=at
                )
                session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[PENDING.c.model, PENDING.c.event_id],
                        set_={"label": stmt.excluded.label, "received_at": stmt.excluded.received_at},
                        where=PENDING.c.received_at <= stmt.excluded.received_at,
                    )
                )
                return None
            if row.labelled_at is not None and row.labelled_at > at:
                return int(row.window_id)  # a later label is already stored
            session.execute(
                update(EVENTS)
                .where(EVENTS.c.model == model, EVENTS.c.event_id == event_id)
                .values(label=label, labelled_at=at)
            )
            if row.label is None:
                session.execute(
                    update(WINDOWS)
                    .where(WINDOWS.c.id == row.window_id)
                    .values(n_labelled=WINDOWS.c.n_labelled + 1)
                )
            return int(row.window_id)

    def window_label_pairs(self, window_id: int) -> list[tuple[str, str | None, str | None]]:
        """``(event_id, predicted, label)`` of every stored event of one window, in id order."""
        with self._transaction("reading a window's labels") as session:
            rows = session.execute(
                select(EVENTS.c.event_id, EVENTS.c.predicted, EVENTS.c.label)
                .where(EVENTS.c.window_id == window_id)
                .order_by(EVENTS.c.event_id)
            )
            return [(event_id, predicted, label) for event_id, predicted, label in rows]
