"""The data path of the daemon: message -> event -> window -> detectors -> stored window result.

:class:`Pipeline` is fed by one intake thread (:meth:`ingest`, :meth:`flush`) and driven by the scheduler
(:meth:`fit_pending`, :meth:`close_due`). It routes each message to its model's
:class:`~monitor.runtime.ModelRuntime` (which windows it, through :mod:`monitor.windows`), has closed windows
evaluated (:mod:`monitor.evaluation`) and stores them; it holds the lock and does every store call.

It never commits Kafka offsets itself; it tells the consumer, through :meth:`safe_offsets`, how far each
partition may be committed: below the first message whose effect is not yet stored (a window still open or
being stored, a reference not yet saved, a dead letter not yet written).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from detectors.base import Batch, DetectionResult, Detector
from detectors.registry import create_detector
from detectors.state import dump_state, load_state
from monitor.clock import EpochClock
from monitor.config import AppConfig
from monitor.errors import IntakeError
from monitor.evaluation import (
    FittedDetectors,
    evaluate_window,
    label_batch,
    reevaluate_labels,
    result_row,
    window_record,
)
from monitor.heap import release_free_memory
from monitor.intake.parsing import FeedbackEvent, PredictionEvent, parse_message
from monitor.intake.reference import content_hash, decode_events, encode_events, read_reference_file, to_batch
from monitor.metrics import Histogram, LabelledCounter
from monitor.runtime import Admission, ModelPhase, ModelRuntime
from monitor.windows import OffsetFloor, Position, TopicPartition, Window
from storage import DeadLetterIn, StorageUnavailable, Store, StoredWindow

log = logging.getLogger("sentinel.pipeline")


@dataclass(frozen=True)
class RawMessage:
    """One message as it came off the topic (or a line of a replay file)."""

    value: bytes | None
    position: Position
    key: bytes | None = None


@dataclass(frozen=True)
class ClosedWindow:
    """A window that was evaluated and stored, for whoever watches (CLI, demo, metrics)."""

    stored: StoredWindow
    results: tuple[DetectionResult, ...]


@dataclass
class _PendingWrite:
    position: Position | None
    dead_letter: DeadLetterIn | None = None
    feedback: FeedbackEvent | None = None


class Pipeline:
    """Turns messages into stored window results."""

    def __init__(
        self,
        config: AppConfig,
        store: Store,
        *,
        clock: EpochClock = time.time,
        live: bool = True,
        on_window: Callable[[ClosedWindow], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # Live: windows also close on wall-clock time and far-future timestamps are rejected. Replay: event
        # time only, so the same file always gives the same windows.
        self.live = live
        self.on_window = on_window
        self._lock = threading.RLock()
        self._models: dict[str, ModelRuntime] = {}
        self._pending: list[_PendingWrite] = []
        self._next_offset: dict[TopicPartition, int] = {}
        self.counters: dict[str, int] = {
            "consumed": 0,
            "accepted": 0,
            "rejected": 0,
            "duplicates": 0,
            "late": 0,
        }
        # For /metrics: events per model and outcome, and how long window closes and detectors take.
        self.events_by_model = LabelledCounter()
        self.window_seconds = Histogram()
        self.detector_seconds = Histogram()

    # ----------------------------------------------------------------- intake (the consumer's thread)

    def ingest(self, message: RawMessage) -> None:
        """Take one message: window it, or queue it for the dead-letter store. Raises StorageUnavailable
        only when a model seen for the first time cannot be loaded; the caller re-reads that message."""
        position = message.position
        try:
            event = parse_message(message.value, max_bytes=self.config.kafka.max_message_bytes)
            runtime = self._runtime_for(event.model)
            if isinstance(event, FeedbackEvent):
                self._take_feedback(runtime, event, position)
            else:
                self._take_prediction(runtime, event, position)
        except IntakeError as exc:
            self._dead_letter(message, exc.reason, exc.model)
        with self._lock:
            self.counters["consumed"] += 1
            current = self._next_offset.get(position.tp, -1)
            self._next_offset[position.tp] = max(current, position.offset + 1)

    def _take_prediction(self, runtime: ModelRuntime, event: PredictionEvent, position: Position) -> None:
        runtime.check(event, now=self.clock() if self.live else None)
        with self._lock:
            admission = runtime.admit(event, position)
            if admission is Admission.DUPLICATE:
                self.counters["duplicates"] += 1
                return
            if admission is Admission.LATE:
                self.counters["late"] += 1
            self.counters["accepted"] += 1
            self.events_by_model.inc(runtime.name, "accepted")

    def _take_feedback(self, runtime: ModelRuntime, event: FeedbackEvent, position: Position) -> None:
        with self._lock:
            if not runtime.windows.attach_label(event.event_id, event.label, position):
                # Not in an open window: stored already, or not seen yet. The store sorts it out.
                self._pending.append(_PendingWrite(position, feedback=event))

    def _dead_letter(self, message: RawMessage, reason: str, model: str | None) -> None:
        row = DeadLetterIn(
            topic=message.position.topic,
            partition=message.position.partition,
            offset=message.position.offset,
            key=message.key,
            raw=message.value or b"",
            reason=reason,
            model=model,
            received_at=datetime.fromtimestamp(self.clock(), UTC),
        )
        with self._lock:
            self._pending.append(_PendingWrite(message.position, dead_letter=row))
            self.counters["rejected"] += 1
            self.events_by_model.inc(model or "", "rejected")
        log.info(
            "dead letter %s[%d]@%d: %s",
            message.position.topic,
            message.position.partition,
            message.position.offset,
            reason,
        )

    def flush(self) -> None:
        """Write queued dead letters and feedback labels. Raises StorageUnavailable; nothing is lost then,
        the queue stays and its offsets stay uncommitted."""
        with self._lock:
            batch = list(self._pending)
        if not batch:
            return
        dead = [item.dead_letter for item in batch if item.dead_letter is not None]
        if dead:
            self.store.add_dead_letters(dead)
        relabelled: set[tuple[str, int]] = set()
        for item in batch:
            if item.feedback is not None:
                fb = item.feedback
                when = datetime.fromtimestamp(fb.timestamp or self.clock(), UTC)
                window_id = self.store.label_event(fb.model, fb.event_id, fb.label, when)
                if window_id is not None:
                    relabelled.add((fb.model, window_id))
        for model, window_id in sorted(relabelled):
            self._reevaluate_labels(model, window_id)
        with self._lock:
            del self._pending[: len(batch)]

    def _reevaluate_labels(self, model: str, window_id: int) -> None:
        """Late labels are the normal case: re-run the label-based detectors of a stored window on its stored
        (prediction, label) pairs and update those results in place."""
        runtime = self._models.get(model)
        if runtime is None or runtime.phase is not ModelPhase.READY:
            return
        detectors = runtime.fitted.label_detectors()
        if not detectors:
            return
        batch = label_batch(self.store.window_label_pairs(window_id))
        for detector in detectors:
            result = reevaluate_labels(model, window_id, detector, batch)
            self.store.update_result(window_id, result_row(result))
            log.info(
                "model %s: window %d %s re-evaluated after late labels: %s",
                model,
                window_id,
                detector.id,
                result.status.value,
            )

    @property
    def backlog(self) -> int:
        """Messages whose effect waits for the database: the consumer pauses when this grows."""
        with self._lock:
            return len(self._pending) + sum(runtime.closing_events for runtime in self._models.values())

    def read_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last message taken (stored or not): for the consumer lag."""
        with self._lock:
            return dict(self._next_offset)

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset the consumer may commit: every message below it is stored."""
        with self._lock:
            safe = dict(self._next_offset)
            floors = [floor for runtime in self._models.values() for floor in runtime.offset_floors()]
            pending = OffsetFloor()
            for item in self._pending:
                pending.note(item.position)
            floors.append(pending)
            for floor in floors:
                for tp, offset in floor.floors.items():
                    if tp in safe:
                        safe[tp] = min(safe[tp], offset)
            return safe

    def forget_uncommitted(self) -> None:
        """Drop everything not yet stored (a rebalance): the consumer re-reads it from the committed offsets.

        Windows being stored right now are kept; what they hold is deduplicated when re-read."""
        with self._lock:
            for runtime in self._models.values():
                runtime.forget_uncommitted()
            self._pending.clear()
            self._next_offset.clear()

    # ------------------------------------------------------------------------------- model set-up

    def _runtime_for(self, model: str) -> ModelRuntime:
        runtime = self._models.get(model)
        if runtime is not None:
            return runtime
        if model not in self.config.models and self.config.unknown_models == "dead_letter":
            raise IntakeError(f"model {model!r} is not configured (unknown_models: dead_letter)", model)
        runtime = self._load_runtime(model)
        with self._lock:
            return self._models.setdefault(model, runtime)

    def prepare(self, models: Sequence[str] | None = None) -> None:
        """Load the configured models (their stored reference, fitted state and closed windows) up front."""
        for model in models if models is not None else list(self.config.models):
            self._runtime_for(model)

    def _load_runtime(self, model: str) -> ModelRuntime:
        settings = self.config.model_settings(model)
        self.store.ensure_model(model)
        runtime = ModelRuntime(name=model, settings=settings)
        closed = self.store.closed_until(model)
        if closed is not None:
            runtime.windows.closed_until = closed.timestamp()
        reference = runtime.reference
        if settings.reference.source == "file":
            assert settings.reference.path is not None
            events, file_hash = read_reference_file(settings.reference.path, model)
            payload = encode_events(events)
            reference.stored_id = self.store.save_reference(model, "file", file_hash, payload, len(events))
            reference.use(events)
        else:
            stored = self.store.latest_reference(model)
            if stored is not None:
                reference.stored_id = stored.id
                reference.use(decode_events(stored.payload))
                # After a restart the stream may deliver the warm-up events again: they are not window events.
                reference.known_ids = frozenset(e.event_id for e in reference.events)
        self._load_history(runtime)
        runtime.reference_loaded()
        log.info(
            "model %s: loaded (%s, closed until %s)",
            model,
            runtime.phase.value,
            closed.isoformat() if closed else "never",
        )
        return runtime

    def _resync(self, runtime: ModelRuntime) -> None:
        """Re-read what another replica may have advanced while it owned this model's partitions."""
        assert runtime.reference.stored_id is not None
        for detector_id, detector in runtime.fitted.stateful().items():
            saved = self.store.load_detector_state(
                runtime.name,
                detector_id,
                runtime.reference.stored_id,
                runtime.settings.params_hash(detector_id),
            )
            if saved is not None:
                detector.load_state_dict(load_state(saved))
        runtime.history.clear()
        self._load_history(runtime)
        runtime.fitted.stale = False

    def _load_history(self, runtime: ModelRuntime) -> None:
        """Rebuild the persistence history from the stored results, so a restart keeps counting."""
        n = runtime.settings.persistence.n
        if n <= 1:
            return
        limit = n * max(1, len(runtime.settings.detectors))
        rows = self.store.window_results(model=runtime.name, limit=limit)
        runtime.history.replay(
            (row.detector, row.status, row.evidence) for row in sorted(rows, key=lambda r: r.window_start)
        )

    def fit_pending(self) -> None:
        """Fit (or load the stored fit of) every model whose reference is known and detectors are not."""
        with self._lock:
            todo = [r for r in self._models.values() if r.phase is ModelPhase.FITTING]
        for runtime in todo:
            self._fit(runtime)
        if todo:
            release_free_memory()  # training's buffers are freed, but glibc would keep their pages

    def _fit(self, runtime: ModelRuntime) -> None:
        settings = runtime.settings
        reference = runtime.reference
        if reference.stored_id is None:
            payload = encode_events(reference.events)
            reference.stored_id = self.store.save_reference(
                runtime.name, "warmup", content_hash(payload), payload, len(reference.events)
            )
        batch = to_batch(reference.events)
        fitted = FittedDetectors()
        for detector_id in settings.enabled_detectors:
            params_hash = settings.params_hash(detector_id)
            saved = self.store.load_detector_state(
                runtime.name, detector_id, reference.stored_id, params_hash
            )
            detector = create_detector(detector_id, settings.detector_params(detector_id))
            if saved is not None:
                detector.load_state_dict(load_state(saved))
                log.info("model %s: %s restored from stored state", runtime.name, detector_id)
            else:
                error = self._fit_detector(runtime, detector_id, detector, batch)
                if error is not None:
                    fitted.errors[detector_id] = error
                    continue
            fitted.detectors[detector_id] = detector
        with self._lock:
            runtime.ready(fitted)

    def _fit_detector(
        self, runtime: ModelRuntime, detector_id: str, detector: Detector, batch: Batch
    ) -> str | None:
        """Fit one detector on the reference and store its state; why it cannot be fitted, if it cannot."""
        assert runtime.reference.stored_id is not None
        started = time.perf_counter()
        try:
            detector.fit(batch)
        except (ValueError, RuntimeError) as exc:
            error = f"cannot fit on the reference: {exc}"
            log.error("model %s: %s %s", runtime.name, detector_id, error)
            return error
        self.store.save_detector_state(
            runtime.name,
            detector_id,
            runtime.reference.stored_id,
            runtime.settings.params_hash(detector_id),
            dump_state(detector.state_dict()),
        )
        log.info(
            "model %s: %s fitted on %d reference events in %.1f s",
            runtime.name,
            detector_id,
            len(batch),
            time.perf_counter() - started,
        )
        return None

    # ----------------------------------------------------------------------- closing (the scheduler)

    def close_due(self, *, final: bool = False) -> list[ClosedWindow]:
        """Close the windows that are due, evaluate and store them, oldest first.

        Due: the model's newest event time, or (live) the wall clock, has passed the window's end plus the
        allowed lateness. ``final`` closes every window (end of a replay). Raises StorageUnavailable when
        the database is away; the windows stay queued and are stored on a later call.
        """
        now = self.clock()
        wall_clock = now if self.live and self.config.close_on_wall_clock else None
        with self._lock:
            for runtime in self._models.values():
                if runtime.phase is ModelPhase.READY:
                    runtime.windows.close_due(
                        now=wall_clock, lateness=runtime.settings.allowed_lateness, final=final
                    )
            queue = [
                (runtime, window) for runtime in self._models.values() for window in runtime.windows.closing
            ]
        closed = []
        for runtime, window in queue:
            outcome = self._store_window(runtime, window)
            if outcome is not None:
                closed.append(outcome)
            # The window's evaluation buffers are freed, but glibc would keep their pages: without this the
            # resident size climbs to the high-water mark of the largest windows (a few ms per call).
            release_free_memory()
        return closed

    def _store_window(self, runtime: ModelRuntime, window: Window) -> ClosedWindow | None:
        known = self.store.known_event_ids(runtime.name, window.event_ids)
        with self._lock:
            window.discard(known)
            if window.n_events == 0:
                # Everything in it was stored before (redelivered after a restart): nothing new to say.
                runtime.windows.release(window)
                return None
        started = time.perf_counter()
        if runtime.fitted.stale:
            self._resync(runtime)
        before = runtime.fitted.snapshot()
        results = evaluate_window(
            runtime.name, window, runtime.settings, runtime.fitted, runtime.history, self.detector_seconds
        )
        assert runtime.reference.stored_id is not None
        record = window_record(
            runtime.name,
            window,
            results,
            settings=runtime.settings,
            fitted=runtime.fitted,
            reference_id=runtime.reference.stored_id,
            closed_at=self.clock(),
        )
        try:
            stored = self.store.store_window(record)
        except StorageUnavailable:
            # The window is evaluated again when the database is back: its events must not enter the
            # stateful detectors' histories twice.
            runtime.fitted.restore(before)
            raise
        self.window_seconds.observe(time.perf_counter() - started, runtime.name)
        with self._lock:
            runtime.windows.release(window)
        outcome = ClosedWindow(stored, tuple(results))
        log.info(
            "window %s [%s, %s) stored: %d events (%d late) %s",
            runtime.name,
            record.start.isoformat(),
            record.end.isoformat(),
            stored.n_events,
            window.n_late,
            ", ".join(f"{r.detector}={r.status.value}" for r in results) or "no detectors",
        )
        if self.on_window is not None:
            self.on_window(outcome)
        return outcome

    # ------------------------------------------------------------------------------------ status

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: phase, open windows, events waiting; for logs, the API and the demo."""
        with self._lock:
            return {name: runtime.status() for name, runtime in self._models.items()}

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(r.phase is ModelPhase.READY for r in self._models.values())
