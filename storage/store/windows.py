"""Closed windows with their events, results and anomalies, written in one idempotent transaction.

Results get a ``revision`` from the ``counters`` row as the transaction's last write, which is what lets the
alert engine follow them with a plain cursor (see :func:`stamp_revisions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from storage import models as orm
from storage.errors import StorageError
from storage.records import EventRow, ResultRow, StoredWindow, WindowRecord
from storage.rows import record_from_row
from storage.session import EngineBound, check_name
from storage.store.references import upsert_detector_state
from storage.store.registry import lock_model
from storage.store.values import anomaly_values, check_state_row, result_values
from storage.tables import (
    ANOMALIES,
    COUNTERS,
    EVENTS,
    MODELS,
    PENDING,
    RESULTS,
    WINDOWS,
    is_one_of_batches,
    upsert,
)

__all__ = ["RESULT_REVISIONS", "WindowStore"]

# The ``counters`` row that hands out ``window_results.revision`` (read by the alert engine).
RESULT_REVISIONS = "window_results"


class WindowStore(EngineBound):
    """Writes closed windows and re-evaluated results; knows which event ids are stored."""

    def known_event_ids(self, model: str, event_ids: Sequence[str]) -> set[str]:
        """The subset of ``event_ids`` already stored for ``model``."""
        if not event_ids:
            return set()
        with self._transaction("looking up event ids") as session:
            return set(_stored_event_windows(session, model, list(dict.fromkeys(event_ids))))

    def store_window(self, record: WindowRecord) -> StoredWindow:
        """Store a closed window with its events, results and anomalies, in one idempotent transaction.

        * Events whose id is already stored for the model in *another* window, and repeats within
          the record, are dropped and counted in ``n_duplicates``; ids already stored in *this*
          window (a re-evaluation replaying it) are dropped silently.
        * The window (unique on model and start) is inserted, or, if it exists:
          - with no new events: left untouched, results included (``created=False``);
          - with new events (re-evaluation after a crash): the events are added, ``n_events`` and
            ``n_duplicates`` increased, ``n_late`` raised to the larger count, results replaced
            (updated in place per detector, so their ids stay stable) and anomalies replaced.
        * ``n_events`` grows by ``record.n_events`` (default ``len(record.events)``) minus the
          events dropped above, never below zero.
        * Feedback waiting in ``pending_labels`` for a new event is applied and removed; the
          label with the later time wins (an event's own label counts as labelled at event_time).
        * ``models.last_window_end`` becomes the later of its value and ``record.end``.
        """
        # Validate and convert everything before the transaction: a bad record fails at once.
        for state_row in record.detector_states:
            check_state_row(state_row)
        results = result_values(record)
        anomalies = anomaly_values(record)
        with self._transaction("storing a window", write=True) as session:
            lock_model(session, record.model, shared=False)
            existing = session.execute(
                select(WINDOWS).where(WINDOWS.c.model == record.model, WINDOWS.c.start == record.start)
            ).one_or_none()
            window_id = None if existing is None else int(existing.id)

            new_events, n_dups, n_dropped = _split_events(session, record, window_id)
            if existing is not None and not new_events:
                return record_from_row(StoredWindow, existing, model=record.model, created=False)

            declared = len(record.events) if record.n_events is None else int(record.n_events)
            added = max(declared - n_dropped, 0)
            event_values, applied_pending = _event_values(session, record.model, new_events)
            n_labelled = sum(1 for v in event_values if v["label"] is not None)

            if existing is None:
                window_id = session.execute(
                    insert(WINDOWS)
                    .values(
                        model=record.model,
                        start=record.start,
                        end=record.end,
                        n_events=added,
                        n_late=int(record.n_late),
                        n_duplicates=n_dups,
                        n_labelled=n_labelled,
                        closed_at=record.closed_at,
                    )
                    .returning(WINDOWS.c.id)
                ).scalar_one()
                totals = (added, n_dups)
            else:
                assert window_id is not None
                session.execute(
                    update(WINDOWS)
                    .where(WINDOWS.c.id == window_id)
                    .values(
                        end=record.end,
                        n_events=WINDOWS.c.n_events + added,
                        n_late=max(int(existing.n_late), int(record.n_late)),
                        n_duplicates=WINDOWS.c.n_duplicates + n_dups,
                        n_labelled=WINDOWS.c.n_labelled + n_labelled,
                        closed_at=record.closed_at,
                    )
                )
                totals = (existing.n_events + added, existing.n_duplicates + n_dups)

            if event_values:
                for value in event_values:
                    value["window_id"] = window_id
                session.execute(insert(EVENTS), event_values)
                for is_one_of in is_one_of_batches(session, PENDING.c.event_id, applied_pending):
                    session.execute(delete(PENDING).where(PENDING.c.model == record.model, is_one_of))

            _replace_results(session, window_id, record, results)
            for state_row in record.detector_states:
                upsert_detector_state(session, record.model, state_row)
            session.execute(delete(ANOMALIES).where(ANOMALIES.c.window_id == window_id))
            if anomalies:
                session.execute(insert(ANOMALIES), [{**v, "window_id": window_id} for v in anomalies])

            session.execute(
                update(MODELS)
                .where(
                    MODELS.c.name == record.model,
                    or_(MODELS.c.last_window_end.is_(None), MODELS.c.last_window_end < record.end),
                )
                .values(last_window_end=record.end)
            )
            # Last: the counter row stays locked until commit (see stamp_revisions).
            stamp_revisions(session, window_id, [r["detector"] for r in results])
            return StoredWindow(
                id=window_id,
                model=record.model,
                start=record.start,
                end=record.end,
                n_events=totals[0],
                n_duplicates=totals[1],
                created=existing is None,
            )

    def update_result(self, window_id: int, result: ResultRow) -> None:
        """Replace one detector's result of a stored window (e.g. performance after late labels)."""
        with self._transaction("updating a window result", write=True) as session:
            window = session.execute(
                select(WINDOWS.c.model, WINDOWS.c.start, WINDOWS.c.end).where(WINDOWS.c.id == window_id)
            ).one_or_none()
            if window is None:
                raise StorageError(f"no stored window with id {window_id}")
            # A one-result record, only so that the result is checked and converted like a window's.
            record = WindowRecord(
                model=window.model,
                start=window.start,
                end=window.end,
                n_late=0,
                events=(),
                results=(result,),
                anomalies=(),
                closed_at=window.end,
            )
            values = result_values(record)
            _upsert_results(session, window_id, window.model, window.start, window.end, values)
            stamp_revisions(session, window_id, [values[0]["detector"]])


def _replace_results(
    session: Session, window_id: int, record: WindowRecord, results: list[dict[str, Any]]
) -> None:
    """Make the window's results exactly ``results``, updating rows in place by detector."""
    detectors = [r["detector"] for r in results]
    session.execute(
        delete(RESULTS).where(RESULTS.c.window_id == window_id, RESULTS.c.detector.not_in(detectors))
    )
    _upsert_results(session, window_id, record.model, record.start, record.end, results)


def _upsert_results(
    session: Session,
    window_id: int,
    model: str,
    start: datetime,
    end: datetime,
    results: list[dict[str, Any]],
) -> None:
    """Write a window's results, updating an existing row of the same detector in place (its id stays)."""
    if not results:
        return
    now = orm.utcnow()
    rows = [
        {
            **r,
            "window_id": window_id,
            "model": model,
            "window_start": start,
            "window_end": end,
            "created_at": now,
            "updated_at": now,
        }
        for r in results
    ]
    stmt = upsert(session, RESULTS)
    # Every column but the key and created_at takes the new value.
    keep = {"id", "window_id", "detector", "created_at"}
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[RESULTS.c.window_id, RESULTS.c.detector],
            set_={c.name: stmt.excluded[c.name] for c in RESULTS.columns if c.name not in keep},
        ),
        rows,
    )


def stamp_revisions(session: Session, window_id: int, detectors: Sequence[str]) -> None:
    """Give the window's just-written results of ``detectors`` the next revisions, in that order.

    Call it as the transaction's last write. Taking the revisions increments the ``counters`` row, which
    stays locked until commit, so a concurrent writer gets its revisions only after this transaction is
    committed: revisions become visible in increasing order, and a reader that sees revision r sees every
    revision below it. That is what lets the alert engine follow results with a plain cursor.
    """
    if not detectors:
        return
    n = len(detectors)
    values = {"name": RESULT_REVISIONS, "value": n}
    last = session.execute(
        upsert(session, COUNTERS)
        .values(values)
        .on_conflict_do_update(index_elements=[COUNTERS.c.name], set_={"value": COUNTERS.c.value + n})
        .returning(COUNTERS.c.value)
    ).scalar_one()
    first = int(last) - n + 1
    session.execute(
        update(RESULTS)
        .where(RESULTS.c.window_id == bindparam("w_id"), RESULTS.c.detector == bindparam("det"))
        .values(revision=bindparam("rev")),
        [{"w_id": window_id, "det": d, "rev": first + i} for i, d in enumerate(detectors)],
    )


def _stored_event_windows(session: Session, model: str, event_ids: Sequence[str]) -> dict[str, int]:
    """Map each of ``event_ids`` that is stored for ``model`` to its window id."""
    found: dict[str, int] = {}
    for is_one_of in is_one_of_batches(session, EVENTS.c.event_id, event_ids):
        rows = session.execute(
            select(EVENTS.c.event_id, EVENTS.c.window_id).where(EVENTS.c.model == model, is_one_of)
        )
        found.update({event_id: int(window_id) for event_id, window_id in rows})
    return found


def _split_events(
    session: Session, record: WindowRecord, window_id: int | None
) -> tuple[list[EventRow], int, int]:
    """Return (events to insert, duplicates to count, events dropped in total)."""
    first: dict[str, EventRow] = {}
    repeats: dict[str, int] = {}
    for event in record.events:
        check_name(event.event_id, "event_id", 256)
        if event.event_id in first:
            repeats[event.event_id] = repeats.get(event.event_id, 0) + 1
        else:
            first[event.event_id] = event
    stored = _stored_event_windows(session, record.model, list(first))
    new_events: list[EventRow] = []
    n_dups = 0
    for event_id, event in first.items():
        stored_in = stored.get(event_id)
        if stored_in is None:
            new_events.append(event)
            n_dups += repeats.get(event_id, 0)
        elif stored_in != window_id:
            n_dups += 1 + repeats.get(event_id, 0)
        # else: already stored in this very window; a replay, not a duplicate in the stream.
    return new_events, n_dups, len(record.events) - len(new_events)


def _event_values(
    session: Session, model: str, events: Sequence[EventRow]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for ``events`` with pending feedback labels merged in, and the ids that had pending rows."""
    pending: dict[str, tuple[str, datetime]] = {}
    # Cheap existence probe first: pending labels are rare, and 10k ids would be 20 queries.
    if events and session.scalar(
        select(literal(1)).select_from(PENDING).where(PENDING.c.model == model).limit(1)
    ):
        for is_one_of in is_one_of_batches(session, PENDING.c.event_id, [e.event_id for e in events]):
            rows = session.execute(
                select(PENDING.c.event_id, PENDING.c.label, PENDING.c.received_at).where(
                    PENDING.c.model == model, is_one_of
                )
            )
            pending.update({event_id: (label, received_at) for event_id, label, received_at in rows})
    values: list[dict[str, Any]] = []
    for e in events:
        label, labelled_at = e.label, (e.event_time if e.label is not None else None)
        parked = pending.get(e.event_id)
        if parked is not None and (labelled_at is None or parked[1] >= labelled_at):
            label, labelled_at = parked
        values.append(
            {
                "model": model,
                "event_id": e.event_id,
                "event_time": e.event_time,
                "client_id": e.client_id,
                "predicted": e.predicted,
                "label": label,
                "labelled_at": labelled_at,
            }
        )
    return values, [e.event_id for e in events if e.event_id in pending]
