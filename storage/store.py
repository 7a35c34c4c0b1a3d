"""The storage API the monitor uses: :class:`Store`.

Every public method is one database transaction: it either commits completely or rolls back
completely and raises :class:`~storage.errors.StorageError` (or its subclass
:class:`~storage.errors.StorageUnavailable`, which the monitor retries). Inputs and outputs are
the frozen records of :mod:`storage.records`; ORM objects never leave this module.

Concurrency: writers that must not interleave per model (:meth:`Store.store_window` and
:meth:`Store.attach_label`) first lock the model's row in ``models`` (``FOR UPDATE`` /
``FOR SHARE`` on PostgreSQL); on SQLite every write transaction starts with ``BEGIN IMMEDIATE``,
which serialises writers anyway. Single-row idempotent writes use ``INSERT ... ON CONFLICT``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from enum import Enum
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Engine,
    String,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import models as orm
from storage.errors import StorageError
from storage.records import (
    AlertRecord,
    AnomalyRecord,
    DeadLetter,
    DeadLetterIn,
    DetectorStateRow,
    EventRow,
    ReferenceRecord,
    ResultRow,
    StoredWindow,
    WindowRecord,
    WindowResultRecord,
    WindowSummary,
    require_aware,
)
from storage.session import EngineBound, check_limit, check_name


def _check_state_row(row: DetectorStateRow) -> None:
    check_name(row.detector, "detector", orm.DETECTOR_NAME_LENGTH)
    check_name(row.params_hash, "params_hash", orm.HASH_LENGTH)


__all__ = ["DEFAULT_MAX_DEAD_LETTER_BYTES", "IN_CHUNK", "Store"]

DEFAULT_MAX_DEAD_LETTER_BYTES = 1 << 20  # 1 MiB
IN_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits
PG_ARRAY_CHUNK = 5000  # ids per "= ANY(array)" on PostgreSQL: one parameter, so only size matters

RESULT_STATUSES = frozenset({"ok", "alert", "skipped"})
REFERENCE_SOURCES = frozenset({"file", "warmup"})

# Core tables for bulk DML (executemany), ORM classes for typed reads.
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

# The ``counters`` row that hands out ``window_results.revision`` (read by the alert engine).
RESULT_REVISIONS = "window_results"

Upsert = postgresql.Insert | sqlite.Insert


class Store(EngineBound):
    """Sentinel's persistent state on one engine (see :func:`storage.make_engine`).

    The schema must exist (:func:`storage.migrate`). Thread-safe: each call uses its own
    pooled connection.
    """

    def __init__(self, engine: Engine, *, max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES) -> None:
        """Wrap ``engine``; dead-letter payloads longer than ``max_dead_letter_bytes`` are cut."""
        super().__init__(engine)
        if max_dead_letter_bytes < 0:
            raise ValueError("max_dead_letter_bytes must be >= 0")
        self._max_dead_letter_bytes = max_dead_letter_bytes

    # ------------------------------------------------------------------ plumbing

    def _upsert(self, session: Session, table: Table) -> Upsert:
        """The dialect's INSERT, which has ``on_conflict_do_nothing``/``on_conflict_do_update``."""
        if session.get_bind().dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _ensure_model(self, session: Session, name: str) -> None:
        check_name(name, "model", orm.MODEL_NAME_LENGTH)
        stmt = self._upsert(session, MODELS).values(name=name, created_at=orm.utcnow())
        session.execute(stmt.on_conflict_do_nothing(index_elements=[MODELS.c.name]))

    def _lock_model(self, session: Session, name: str, *, shared: bool) -> None:
        """Create the model's row if needed and lock it until commit (PostgreSQL; a no-op on SQLite)."""
        self._ensure_model(session, name)
        session.execute(select(MODELS.c.name).where(MODELS.c.name == name).with_for_update(read=shared)).one()

    # ------------------------------------------------------------------ models

    def ensure_model(self, name: str) -> None:
        """Register model ``name`` (idempotent)."""
        with self._transaction("registering a model", write=True) as session:
            self._ensure_model(session, name)

    def closed_until(self, model: str) -> datetime | None:
        """The end of the latest stored window of ``model`` (None if none was stored)."""
        with self._transaction("reading closed_until") as session:
            return session.scalar(
                select(orm.MonitoredModel.last_window_end).where(orm.MonitoredModel.name == model)
            )

    # ------------------------------------------------------------------ dead letters

    def add_dead_letters(self, rows: Sequence[DeadLetterIn]) -> None:
        """Store rejected messages in one transaction, cutting ``raw`` to the configured maximum."""
        if not rows:
            return
        limit = self._max_dead_letter_bytes
        values = [
            {
                "received_at": row.received_at,
                "topic": row.topic,
                "partition": row.partition,
                "offset": row.offset,
                "key": None if row.key is None else bytes(row.key),
                # A 50 MB poison message must not bloat the database; its exact size is kept.
                "raw": bytes(row.raw[:limit]),
                "size": len(row.raw),
                "truncated": len(row.raw) > limit,
                "reason": row.reason,
                "model": row.model,
            }
            for row in rows
        ]
        with self._transaction("storing dead letters", write=True) as session:
            session.execute(insert(DEAD_LETTERS), values)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The latest ``limit`` dead letters, newest first."""
        stmt = (
            select(orm.DeadLetter)
            .order_by(orm.DeadLetter.received_at.desc(), orm.DeadLetter.id.desc())
            .limit(check_limit(limit))
        )
        with self._transaction("reading dead letters") as session:
            return [
                DeadLetter(
                    id=d.id,
                    received_at=d.received_at,
                    topic=d.topic,
                    partition=d.partition,
                    offset=d.offset,
                    key=d.key,
                    raw=d.raw,
                    size=d.size,
                    truncated=d.truncated,
                    reason=d.reason,
                    model=d.model,
                )
                for d in session.scalars(stmt)
            ]

    # ------------------------------------------------------------------ references and fitted state

    def save_reference(
        self, model: str, source: str, content_hash: str, payload: bytes, n_events: int
    ) -> int:
        """Store a reference data set; returns its id, the existing one if (model, content_hash) is stored."""
        if source not in REFERENCE_SOURCES:
            raise ValueError(f"reference source must be one of {sorted(REFERENCE_SOURCES)}, got {source!r}")
        check_name(content_hash, "content_hash", orm.HASH_LENGTH)
        with self._transaction("storing a reference", write=True) as session:
            self._ensure_model(session, model)
            stmt = (
                self._upsert(session, REFERENCES)
                .values(
                    model=model,
                    source=source,
                    content_hash=content_hash,
                    n_events=int(n_events),
                    payload=bytes(payload),
                    created_at=orm.utcnow(),
                )
                .on_conflict_do_nothing(index_elements=[REFERENCES.c.model, REFERENCES.c.content_hash])
                .returning(REFERENCES.c.id)
            )
            new_id = session.execute(stmt).scalar_one_or_none()
            if new_id is not None:
                return int(new_id)
            # Conflict: the row exists (committed, possibly by a concurrent caller just now).
            return int(
                session.execute(
                    select(REFERENCES.c.id).where(
                        REFERENCES.c.model == model, REFERENCES.c.content_hash == content_hash
                    )
                ).scalar_one()
            )

    def latest_reference(self, model: str) -> ReferenceRecord | None:
        """The most recently created reference of ``model``, or None."""
        stmt = (
            select(orm.Reference)
            .where(orm.Reference.model == model)
            .order_by(orm.Reference.created_at.desc(), orm.Reference.id.desc())
            .limit(1)
        )
        with self._transaction("reading the latest reference") as session:
            ref = session.scalars(stmt).first()
            if ref is None:
                return None
            return ReferenceRecord(
                id=ref.id,
                model=ref.model,
                source=ref.source,
                content_hash=ref.content_hash,
                n_events=ref.n_events,
                payload=ref.payload,
                created_at=ref.created_at,
            )

    def save_detector_state(
        self, model: str, detector: str, reference_id: int, params_hash: str, state: bytes
    ) -> None:
        """Store a fitted detector's state, replacing any state under the same key."""
        row = DetectorStateRow(detector, int(reference_id), params_hash, bytes(state))
        _check_state_row(row)
        with self._transaction("storing detector state", write=True) as session:
            self._ensure_model(session, model)
            self._upsert_state(session, model, row)

    def _upsert_state(self, session: Session, model: str, row: DetectorStateRow) -> None:
        stmt = self._upsert(session, DETECTOR_STATES).values(
            model=model,
            detector=row.detector,
            reference_id=row.reference_id,
            params_hash=row.params_hash,
            state=row.state,
            created_at=orm.utcnow(),
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[
                    DETECTOR_STATES.c.model,
                    DETECTOR_STATES.c.detector,
                    DETECTOR_STATES.c.reference_id,
                    DETECTOR_STATES.c.params_hash,
                ],
                set_={"state": stmt.excluded.state, "created_at": stmt.excluded.created_at},
            )
        )

    def load_detector_state(
        self, model: str, detector: str, reference_id: int, params_hash: str
    ) -> bytes | None:
        """The stored state for exactly this key, or None."""
        stmt = select(orm.DetectorState.state).where(
            orm.DetectorState.model == model,
            orm.DetectorState.detector == detector,
            orm.DetectorState.reference_id == reference_id,
            orm.DetectorState.params_hash == params_hash,
        )
        with self._transaction("loading detector state") as session:
            return session.scalar(stmt)

    # ------------------------------------------------------------------ events and windows

    def known_event_ids(self, model: str, event_ids: Sequence[str]) -> set[str]:
        """The subset of ``event_ids`` already stored for ``model``."""
        if not event_ids:
            return set()
        with self._transaction("looking up event ids") as session:
            return set(_stored_event_windows(session, model, list(dict.fromkeys(event_ids))))

    def event_labels(self, model: str, event_ids: Sequence[str]) -> dict[str, str]:
        """The stored labels of those of ``event_ids`` that are stored with a label."""
        if not event_ids:
            return {}
        with self._transaction("reading event labels") as session:
            rows = session.execute(
                select(EVENTS.c.event_id, EVENTS.c.label).where(
                    EVENTS.c.model == model,
                    EVENTS.c.event_id.in_(list(dict.fromkeys(event_ids))),
                    EVENTS.c.label.is_not(None),
                )
            )
            return {event_id: label for event_id, label in rows}

    def count_events(self, model: str) -> int:
        """How many events of ``model`` are stored."""
        with self._transaction("counting events") as session:
            return int(
                session.scalar(select(func.count()).select_from(EVENTS).where(EVENTS.c.model == model)) or 0
            )

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
            _check_state_row(state_row)
        results = _result_values(record)
        anomaly_values = _anomaly_values(record)
        with self._transaction("storing a window", write=True) as session:
            self._lock_model(session, record.model, shared=False)
            existing = session.execute(
                select(WINDOWS).where(WINDOWS.c.model == record.model, WINDOWS.c.start == record.start)
            ).one_or_none()
            window_id = None if existing is None else int(existing.id)

            new_events, n_dups, n_dropped = _split_events(session, record, window_id)
            if existing is not None and not new_events:
                return StoredWindow(
                    id=int(existing.id),
                    model=record.model,
                    start=existing.start,
                    end=existing.end,
                    n_events=existing.n_events,
                    n_duplicates=existing.n_duplicates,
                    created=False,
                )

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
                for is_one_of in _batched_in(session, PENDING.c.event_id, applied_pending):
                    session.execute(delete(PENDING).where(PENDING.c.model == record.model, is_one_of))

            self._replace_results(session, window_id, record, results)
            for state_row in record.detector_states:
                self._upsert_state(session, record.model, state_row)
            session.execute(delete(ANOMALIES).where(ANOMALIES.c.window_id == window_id))
            if anomaly_values:
                session.execute(insert(ANOMALIES), [{**v, "window_id": window_id} for v in anomaly_values])

            session.execute(
                update(MODELS)
                .where(
                    MODELS.c.name == record.model,
                    or_(MODELS.c.last_window_end.is_(None), MODELS.c.last_window_end < record.end),
                )
                .values(last_window_end=record.end)
            )
            # Last: the counter row stays locked until commit (see _stamp_revisions).
            _stamp_revisions(session, window_id, [r["detector"] for r in results])
            return StoredWindow(
                id=window_id,
                model=record.model,
                start=record.start,
                end=record.end,
                n_events=totals[0],
                n_duplicates=totals[1],
                created=existing is None,
            )

    def _replace_results(
        self, session: Session, window_id: int, record: WindowRecord, results: list[dict[str, Any]]
    ) -> None:
        """Make the window's results exactly ``results``, updating rows in place by detector."""
        now = orm.utcnow()
        detectors = [r["detector"] for r in results]
        session.execute(
            delete(RESULTS).where(RESULTS.c.window_id == window_id, RESULTS.c.detector.not_in(detectors))
        )
        if not results:
            return
        rows = [
            {
                **r,
                "window_id": window_id,
                "model": record.model,
                "window_start": record.start,
                "window_end": record.end,
                "created_at": now,
                "updated_at": now,
            }
            for r in results
        ]
        stmt = self._upsert(session, RESULTS)
        # Every column but the key and created_at takes the new value.
        keep = {"id", "window_id", "detector", "created_at"}
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[RESULTS.c.window_id, RESULTS.c.detector],
                set_={c.name: stmt.excluded[c.name] for c in RESULTS.columns if c.name not in keep},
            ),
            rows,
        )

    def attach_label(self, model: str, event_id: str, label: str, at: datetime) -> bool:
        """Record ground truth for an event: True if the stored event was labelled, False if parked.

        If the event is not stored yet, the label waits in ``pending_labels`` and is applied by
        :meth:`store_window`. Of several labels for one event, the one with the latest ``at`` wins.
        """
        return self.label_event(model, event_id, label, at) is not None

    def label_event(self, model: str, event_id: str, label: str, at: datetime) -> int | None:
        """Like :meth:`attach_label`, returning the id of the stored event's window (None if parked),
        so that the caller can re-evaluate that window's label-based results."""
        require_aware(at, "at")
        if not isinstance(label, str):
            raise TypeError(f"label must be a str, got {type(label).__name__}")
        with self._transaction("attaching a label", write=True) as session:
            # Shared lock: labels for one model may be attached concurrently, but not while
            # store_window for that model is between "no such event" and "pending applied".
            self._lock_model(session, model, shared=True)
            row = session.execute(
                select(EVENTS.c.window_id, EVENTS.c.label, EVENTS.c.labelled_at)
                .where(EVENTS.c.model == model, EVENTS.c.event_id == event_id)
                .with_for_update()
            ).one_or_none()
            if row is None:
                stmt = self._upsert(session, PENDING).values(
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

    def update_result(self, window_id: int, result: ResultRow) -> None:
        """Replace one detector's result of a stored window (e.g. performance after late labels)."""
        with self._transaction("updating a window result", write=True) as session:
            window = session.execute(
                select(WINDOWS.c.model, WINDOWS.c.start, WINDOWS.c.end).where(WINDOWS.c.id == window_id)
            ).one_or_none()
            if window is None:
                raise StorageError(f"no stored window with id {window_id}")
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
            [values] = _result_values(record)
            now = orm.utcnow()
            row = {
                **values,
                "window_id": window_id,
                "model": window.model,
                "window_start": window.start,
                "window_end": window.end,
                "created_at": now,
                "updated_at": now,
            }
            stmt = self._upsert(session, RESULTS)
            keep = {"id", "window_id", "detector", "created_at"}
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[RESULTS.c.window_id, RESULTS.c.detector],
                    set_={c.name: stmt.excluded[c.name] for c in RESULTS.columns if c.name not in keep},
                ),
                [row],
            )
            _stamp_revisions(session, window_id, [values["detector"]])

    # ------------------------------------------------------------------ history queries

    def windows(self, model: str, limit: int = 1000) -> list[WindowSummary]:
        """The latest ``limit`` stored windows of ``model``, newest start first."""
        stmt = (
            select(orm.Window)
            .where(orm.Window.model == model)
            .order_by(orm.Window.start.desc())
            .limit(check_limit(limit))
        )
        with self._transaction("reading windows") as session:
            return [
                WindowSummary(
                    id=w.id,
                    model=w.model,
                    start=w.start,
                    end=w.end,
                    n_events=w.n_events,
                    n_late=w.n_late,
                    n_duplicates=w.n_duplicates,
                    n_labelled=w.n_labelled,
                    closed_at=w.closed_at,
                )
                for w in session.scalars(stmt)
            ]

    def window_results(
        self,
        model: str | None = None,
        detector: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        order: Literal["detector", "id"] = "detector",
        after: tuple[datetime, int] | None = None,
    ) -> list[WindowResultRecord]:
        """Detector results, latest window first, then by detector name or (for stable pages) by id.

        Filters are optional; the time filter is ``since <= window_start < until``. ``after`` is a keyset
        ``(window_start, id)``: only results strictly after it in id order (which it requires).
        """
        r = orm.WindowResult
        if after is not None and order != "id":
            raise ValueError("after pages by (window_start, id): use order='id'")
        tiebreak = (r.id.desc(),) if order == "id" else (r.detector, r.id.desc())
        stmt = select(r).order_by(r.window_start.desc(), *tiebreak).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(r.model == model)
        if detector is not None:
            stmt = stmt.where(r.detector == detector)
        if since is not None:
            require_aware(since, "since")
            stmt = stmt.where(r.window_start >= since)
        if until is not None:
            require_aware(until, "until")
            stmt = stmt.where(r.window_start < until)
        if after is not None:
            start, last_id = after
            require_aware(start, "after")
            stmt = stmt.where(or_(r.window_start < start, and_(r.window_start == start, r.id < last_id)))
        with self._transaction("reading window results") as session:
            return [
                WindowResultRecord(
                    id=x.id,
                    window_id=x.window_id,
                    model=x.model,
                    detector=x.detector,
                    threat=x.threat,
                    status=x.status,
                    statistic=x.statistic,
                    threshold=x.threshold,
                    p_value=x.p_value,
                    n_events=x.n_events,
                    evidence=x.evidence,
                    reason=x.reason,
                    window_start=x.window_start,
                    window_end=x.window_end,
                    created_at=x.created_at,
                    updated_at=x.updated_at,
                )
                for x in session.scalars(stmt)
            ]

    def anomalies(
        self,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AnomalyRecord]:
        """Anomalous events, highest score first, filtered on ``since <= event_time < until``."""
        a = orm.Anomaly
        stmt = select(a).order_by(a.score.desc(), a.event_time.desc(), a.id).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(a.model == model)
        if since is not None:
            require_aware(since, "since")
            stmt = stmt.where(a.event_time >= since)
        if until is not None:
            require_aware(until, "until")
            stmt = stmt.where(a.event_time < until)
        with self._transaction("reading anomalies") as session:
            return [
                AnomalyRecord(
                    id=x.id,
                    window_id=x.window_id,
                    model=x.model,
                    detector=x.detector,
                    event_id=x.event_id,
                    score=x.score,
                    event_time=x.event_time,
                    client_id=x.client_id,
                    features=x.features,
                )
                for x in session.scalars(stmt)
            ]

    def alerts(
        self, model: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AlertRecord]:
        """Alerts, most recently seen first, optionally of one model and with ``last_seen >= since``.

        Read-only for now: the alert lifecycle (which writes this table) is not part of storage yet.
        """
        a = orm.Alert
        stmt = select(a).order_by(a.last_seen.desc(), a.id.desc()).limit(check_limit(limit))
        if model is not None:
            stmt = stmt.where(a.model == model)
        if since is not None:
            require_aware(since, "since")
            stmt = stmt.where(a.last_seen >= since)
        with self._transaction("reading alerts") as session:
            return [
                AlertRecord(
                    id=x.id,
                    fingerprint=x.fingerprint,
                    model=x.model,
                    detector=x.detector,
                    threat=x.threat,
                    severity=x.severity,
                    state=x.state,
                    title=x.title,
                    summary=x.summary,
                    window_start=x.window_start,
                    window_end=x.window_end,
                    statistic=x.statistic,
                    threshold=x.threshold,
                    p_value=x.p_value,
                    details=x.details,
                    first_seen=x.first_seen,
                    last_seen=x.last_seen,
                    count=x.count,
                    resolved_at=x.resolved_at,
                )
                for x in session.scalars(stmt)
            ]

    # ------------------------------------------------------------------ health

    def ping(self) -> None:
        """Check that the database answers (``SELECT 1``); raises StorageUnavailable if not."""
        with self._transaction("ping") as session:
            session.execute(select(literal(1))).one()


# ---------------------------------------------------------------------- helpers


def _stamp_revisions(session: Session, window_id: int, detectors: Sequence[str]) -> None:
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
    postgres = session.get_bind().dialect.name == "postgresql"
    stmt = postgresql.insert(COUNTERS) if postgres else sqlite.insert(COUNTERS)
    last = session.execute(
        stmt.values(values)
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


def _chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _batched_in(
    session: Session, column: ColumnElement[str], ids: Sequence[str]
) -> Iterator[ColumnElement[bool]]:
    """WHERE clauses "``column`` is one of ``ids``", one per batch, together covering all ``ids``.

    SQLite gets ``IN (?, ?, ...)`` lists of :data:`IN_CHUNK`. PostgreSQL gets ``= ANY(:array)``:
    a single parameter instead of hundreds of placeholders to render, parse and plan, which
    makes the 10,000-id lookups of a large window several times faster.
    """
    if session.get_bind().dialect.name == "postgresql":
        for chunk in _chunks(ids, PG_ARRAY_CHUNK):
            yield column == any_(bindparam(None, list(chunk), type_=postgresql.ARRAY(String())))
    else:
        for chunk in _chunks(ids, IN_CHUNK):
            yield column.in_(chunk)


def _stored_event_windows(session: Session, model: str, event_ids: Sequence[str]) -> dict[str, int]:
    """Map each of ``event_ids`` that is stored for ``model`` to its window id."""
    found: dict[str, int] = {}
    for is_one_of in _batched_in(session, EVENTS.c.event_id, event_ids):
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
        for is_one_of in _batched_in(session, PENDING.c.event_id, [e.event_id for e in events]):
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


def _result_values(record: WindowRecord) -> list[dict[str, Any]]:
    """Validated column values for the record's results (checked before any SQL runs)."""
    values: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in record.results:
        detector = _text(r.detector)
        check_name(detector, "detector", orm.DETECTOR_NAME_LENGTH)
        if detector in seen:
            raise ValueError(f"window {record.start.isoformat()} has two results for detector {detector!r}")
        seen.add(detector)
        status = _text(r.status)
        if status not in RESULT_STATUSES:
            raise ValueError(f"result status must be one of {sorted(RESULT_STATUSES)}, got {status!r}")
        values.append(
            {
                "detector": detector,
                "threat": _text(r.threat),
                "status": status,
                "statistic": _float_or_none(r.statistic),
                "threshold": _float_or_none(r.threshold),
                "p_value": _float_or_none(r.p_value),
                "n_events": int(r.n_events),
                "evidence": _json_safe(r.evidence or {}),
                "reason": r.reason,
            }
        )
    return values


def _anomaly_values(record: WindowRecord) -> list[dict[str, Any]]:
    """Column values for the record's anomalies, all but ``window_id``."""
    values = []
    for a in record.anomalies:
        score = float(a.score)
        if math.isnan(score):
            raise ValueError(f"anomaly score of event {a.event_id!r} is NaN")
        values.append(
            {
                "model": record.model,
                "detector": _text(a.detector),
                "event_id": a.event_id,
                "score": score,
                "event_time": a.event_time,
                "client_id": a.client_id,
                "features": None if a.features is None else _json_safe(a.features),
            }
        )
    return values


def _text(value: object) -> str:
    """Enum members as their value (psycopg would otherwise store an Enum's *name*)."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _float_or_none(value: float | None) -> float | None:
    """A plain float; NaN becomes NULL, as SQLite would store it anyway (PostgreSQL would keep NaN)."""
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def _json_safe(value: Any) -> Any:
    """Make ``value`` storable as JSON on both backends.

    NumPy scalars and arrays become Python numbers and lists; NaN and infinities become null
    (PostgreSQL's JSON rejects them); enums become their values, dates ISO strings, mapping
    keys strings. Anything else is stored as its ``str()`` rather than losing the whole window.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return _json_safe(value.value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        return _json_safe(value.tolist())
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return str(value)
