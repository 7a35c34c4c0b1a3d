"""The data path of the daemon: message -> event -> window -> detectors -> stored window result.

:class:`Pipeline` is fed by one intake thread (:meth:`ingest`, :meth:`flush`) and driven by the scheduler
(:meth:`fit_pending`, :meth:`close_due`). It never commits Kafka offsets itself; it tells the consumer,
through
:meth:`safe_offsets`, how far each partition may be committed: below the first message whose effect is not
yet stored (a window still open or being stored, a reference not yet saved, a dead letter not yet written).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from detectors.base import Batch, DetectionResult, Detector, Status
from detectors.encoding import FeatureSchema
from detectors.registry import DETECTORS, create_detector
from detectors.state import dump_state, load_state
from monitor.config import AppConfig, ModelSettings
from monitor.errors import IntakeError
from monitor.heap import release_free_memory
from monitor.intake.parsing import FeedbackEvent, PredictionEvent, parse_message
from monitor.intake.reference import content_hash, decode_events, encode_events, read_reference_file, to_batch
from monitor.metrics import Histogram, LabelledCounter
from monitor.windows import OffsetFloor, Position, TopicPartition, Window, window_start
from storage import (
    AnomalyRow,
    DeadLetterIn,
    DetectorStateRow,
    EventRow,
    ResultRow,
    StorageUnavailable,
    Store,
    StoredWindow,
    WindowRecord,
)

log = logging.getLogger("sentinel.pipeline")

Clock = Callable[[], float]

# Detectors that need only predictions and labels: re-evaluated on a stored window when late labels arrive.
LABEL_DETECTORS = ("performance", "label_drift")


class ModelPhase(enum.StrEnum):
    WARMING_UP = "warming_up"  # collecting the reference from the stream
    FITTING = "fitting"  # reference known, detectors not fitted yet
    READY = "ready"


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
class ModelRuntime:
    """Everything the pipeline holds for one model."""

    name: str
    settings: ModelSettings
    phase: ModelPhase
    windows: dict[float, Window] = field(default_factory=dict)
    closing: list[Window] = field(default_factory=list)
    closed_until: float | None = None  # end of the newest window closed; earlier events are late
    # Event-time progress: the newest event time per partition, and their minimum. One model's events may
    # come from several partitions read at different speeds; the slowest one says how far event time has
    # surely got, so a fast partition cannot close a window whose events are still coming on another.
    partition_marks: dict[TopicPartition, float] = field(default_factory=dict)
    watermark: float = float("-inf")
    warmup: list[PredictionEvent] = field(default_factory=list)
    warmup_ids: set[str] = field(default_factory=set)
    warmup_offsets: OffsetFloor = field(default_factory=OffsetFloor)
    reference_ids: frozenset[str] = frozenset()
    reference_id: int | None = None
    reference_events: list[PredictionEvent] = field(default_factory=list)  # dropped once fitted
    reference_count: int = 0
    schema: FeatureSchema | None = None
    detectors: dict[str, Detector] = field(default_factory=dict)
    fit_errors: dict[str, str] = field(default_factory=dict)
    # Per detector, whether each of its last n tested windows failed (for the persistence rule).
    history: dict[str, deque[bool]] = field(default_factory=dict)
    duplicates: int = 0
    # Set on a rebalance: another replica may have stored windows of this model meanwhile, so the learned
    # state of stateful detectors and the persistence history are re-read from the store before the next
    # window is evaluated.
    stale: bool = False
    spread_warned: bool = False  # logged once that the model's events come from several partitions


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
        clock: Clock = time.time,
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
        settings = runtime.settings
        if self.live and event.timestamp > self.clock() + settings.max_future_skew:
            raise IntakeError(
                f"timestamp {datetime.fromtimestamp(event.timestamp, UTC).isoformat()} is more than "
                f"{settings.max_future_skew:.0f} s in the future",
                event.model,
            )
        if runtime.schema is not None:
            problem = runtime.schema.validate(event.features)
            if problem is not None:
                raise IntakeError(
                    f"features do not match the reference schema of {event.model!r}: {problem}", event.model
                )
        with self._lock:
            if event.event_id in runtime.reference_ids or event.event_id in runtime.warmup_ids:
                self._count_duplicate(runtime)
                if event.event_id in runtime.warmup_ids:
                    runtime.warmup_offsets.note(position)
                return
            for window in (*runtime.windows.values(), *runtime.closing):
                if event.event_id in window:
                    window.offsets.note(position)
                    self._count_duplicate(runtime)
                    return
            if runtime.phase is ModelPhase.WARMING_UP:
                self._collect_reference(runtime, event, position)
                return
            length = settings.window
            start = window_start(event.timestamp, length)
            late = runtime.closed_until is not None and start < runtime.closed_until
            if late:
                # Its window is closed: the event goes into the window that is still open, counted as late.
                assert runtime.closed_until is not None
                start = window_start(runtime.closed_until, length)
                self.counters["late"] += 1
            target = runtime.windows.get(start)
            if target is None:
                target = runtime.windows[start] = Window(
                    event.model, start, start + length, settings.max_window_sample
                )
            target.add(event, late=late, position=position)
            new_partition = position.tp not in runtime.partition_marks
            if new_partition and runtime.partition_marks and not runtime.spread_warned:
                # One replica handles this fine; with several, two replicas would each store part of the same
                # window (counts stay exact, but each evaluates only its share). Say so once.
                runtime.spread_warned = True
                log.warning(
                    "model %s: events arrive on more than one partition (%s); with several replicas, key "
                    "events by model id so that one replica owns each model's windows",
                    runtime.name,
                    ", ".join(f"{topic}[{part}]" for topic, part in (*runtime.partition_marks, position.tp)),
                )
            mark = runtime.partition_marks.get(position.tp, float("-inf"))
            if event.timestamp > mark:
                runtime.partition_marks[position.tp] = event.timestamp
                runtime.watermark = min(runtime.partition_marks.values())
            self.counters["accepted"] += 1
            self.events_by_model.inc(runtime.name, "accepted")

    def _collect_reference(self, runtime: ModelRuntime, event: PredictionEvent, position: Position) -> None:
        runtime.warmup.append(event)
        runtime.warmup_ids.add(event.event_id)
        runtime.warmup_offsets.note(position)
        self.counters["accepted"] += 1
        self.events_by_model.inc(runtime.name, "accepted")
        if len(runtime.warmup) >= runtime.settings.reference.warmup_events:
            runtime.reference_events = runtime.warmup
            runtime.schema = FeatureSchema.fit([e.features for e in runtime.warmup])
            runtime.phase = ModelPhase.FITTING
            log.info(
                "model %s: reference of %d events captured from the stream", runtime.name, len(runtime.warmup)
            )

    def _take_feedback(self, runtime: ModelRuntime, event: FeedbackEvent, position: Position) -> None:
        with self._lock:
            for window in runtime.windows.values():
                if window.set_label(event.event_id, event.label, position):
                    return
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

    def _count_duplicate(self, runtime: ModelRuntime) -> None:
        runtime.duplicates += 1
        self.counters["duplicates"] += 1

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
        detectors = [runtime.detectors[d] for d in LABEL_DETECTORS if d in runtime.detectors]
        if not detectors:
            return
        pairs = self.store.window_label_pairs(window_id)
        batch = Batch(
            event_ids=[event_id for event_id, _, _ in pairs],
            features=[{} for _ in pairs],
            predictions=[{"label": predicted} if predicted is not None else {} for _, predicted, _ in pairs],
            labels=[label for _, _, label in pairs],
        )
        for detector in detectors:
            try:
                result = detector.evaluate(batch)
            except Exception as exc:  # a detector bug must not stop intake
                log.exception("model %s: re-evaluating %s of window %d failed", model, detector.id, window_id)
                result = detector.skipped(len(batch), f"detector failed: {type(exc).__name__}: {exc}")
            self.store.update_result(window_id, _result_row(result))
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
            waiting = len(self._pending)
            for runtime in self._models.values():
                waiting += sum(w.n_events for w in runtime.closing)
            return waiting

    def read_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last message taken (stored or not): for the consumer lag."""
        with self._lock:
            return dict(self._next_offset)

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset the consumer may commit: every message below it is stored."""
        with self._lock:
            safe = dict(self._next_offset)
            floors: list[OffsetFloor] = []
            for runtime in self._models.values():
                floors.extend(w.offsets for w in runtime.windows.values())
                floors.extend(w.offsets for w in runtime.closing)
                if runtime.phase is not ModelPhase.READY or runtime.reference_id is None:
                    floors.append(runtime.warmup_offsets)
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
                runtime.windows.clear()
                runtime.stale = runtime.phase is ModelPhase.READY
                # Partitions we gave up would hold event time back for good; the re-read rebuilds the marks.
                runtime.partition_marks.clear()
                if runtime.reference_id is None:
                    runtime.warmup.clear()
                    runtime.warmup_ids.clear()
                    runtime.warmup_offsets = OffsetFloor()
                    if runtime.settings.reference.source == "warmup":
                        runtime.phase = ModelPhase.WARMING_UP
                        runtime.reference_events = []
                        runtime.schema = None
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
        runtime = ModelRuntime(name=model, settings=settings, phase=ModelPhase.WARMING_UP)
        closed = self.store.closed_until(model)
        if closed is not None:
            runtime.closed_until = closed.timestamp()
        if settings.reference.source == "file":
            assert settings.reference.path is not None
            events, file_hash = read_reference_file(settings.reference.path, model)
            payload = encode_events(events)
            runtime.reference_id = self.store.save_reference(model, "file", file_hash, payload, len(events))
            runtime.reference_events = events
        else:
            stored = self.store.latest_reference(model)
            if stored is not None:
                runtime.reference_id = stored.id
                runtime.reference_events = decode_events(stored.payload)
                # After a restart the stream may deliver the warm-up events again: they are not window events.
                runtime.reference_ids = frozenset(e.event_id for e in runtime.reference_events)
        self._load_history(runtime)
        if runtime.reference_events:
            runtime.schema = FeatureSchema.fit([e.features for e in runtime.reference_events])
            runtime.phase = ModelPhase.FITTING
        log.info(
            "model %s: loaded (%s, closed until %s)",
            model,
            runtime.phase.value,
            closed.isoformat() if closed else "never",
        )
        return runtime

    def _resync(self, runtime: ModelRuntime) -> None:
        """Re-read what another replica may have advanced while it owned this model's partitions."""
        assert runtime.reference_id is not None
        for detector_id, detector in runtime.detectors.items():
            if not detector.stateful:
                continue
            saved = self.store.load_detector_state(
                runtime.name, detector_id, runtime.reference_id, runtime.settings.params_hash(detector_id)
            )
            if saved is not None:
                detector.load_state_dict(load_state(saved))
        runtime.history.clear()
        self._load_history(runtime)
        runtime.stale = False

    def _load_history(self, runtime: ModelRuntime) -> None:
        """Rebuild the persistence history from the stored results, so a restart keeps counting."""
        n = runtime.settings.persistence.n
        if n <= 1:
            return
        limit = n * max(1, len(runtime.settings.detectors))
        for row in sorted(
            self.store.window_results(model=runtime.name, limit=limit), key=lambda r: r.window_start
        ):
            if row.status == "skipped":
                continue
            raw = row.evidence.get("raw_status", row.status) if isinstance(row.evidence, dict) else row.status
            runtime.history.setdefault(row.detector, deque(maxlen=n)).append(raw == "alert")

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
        if runtime.reference_id is None:
            payload = encode_events(runtime.reference_events)
            runtime.reference_id = self.store.save_reference(
                runtime.name, "warmup", content_hash(payload), payload, len(runtime.reference_events)
            )
        batch = to_batch(runtime.reference_events)
        detectors: dict[str, Detector] = {}
        errors: dict[str, str] = {}
        for detector_id in settings.enabled_detectors:
            params_hash = settings.params_hash(detector_id)
            saved = self.store.load_detector_state(
                runtime.name, detector_id, runtime.reference_id, params_hash
            )
            detector = create_detector(detector_id, settings.detector_params(detector_id))
            if saved is not None:
                detector.load_state_dict(load_state(saved))
                log.info("model %s: %s restored from stored state", runtime.name, detector_id)
            else:
                started = time.perf_counter()
                try:
                    detector.fit(batch)
                except (ValueError, RuntimeError) as exc:
                    errors[detector_id] = f"cannot fit on the reference: {exc}"
                    log.error("model %s: %s %s", runtime.name, detector_id, errors[detector_id])
                    continue
                self.store.save_detector_state(
                    runtime.name,
                    detector_id,
                    runtime.reference_id,
                    params_hash,
                    dump_state(detector.state_dict()),
                )
                log.info(
                    "model %s: %s fitted on %d reference events in %.1f s",
                    runtime.name,
                    detector_id,
                    len(batch),
                    time.perf_counter() - started,
                )
            detectors[detector_id] = detector
        with self._lock:
            runtime.detectors = detectors
            runtime.fit_errors = errors
            runtime.phase = ModelPhase.READY
            runtime.reference_ids = runtime.reference_ids | runtime.warmup_ids
            # The fitted state is what evaluation needs; the events (megabytes per model) are stored.
            runtime.reference_count = len(runtime.reference_events)
            runtime.reference_events = []
            runtime.warmup = []
            runtime.warmup_offsets = OffsetFloor()

    # ----------------------------------------------------------------------- closing (the scheduler)

    def close_due(self, *, final: bool = False) -> list[ClosedWindow]:
        """Close the windows that are due, evaluate and store them, oldest first.

        Due: the model's newest event time, or (live) the wall clock, has passed the window's end plus the
        allowed lateness. ``final`` closes every window (end of a replay). Raises StorageUnavailable when
        the database is away; the windows stay queued and are stored on a later call.
        """
        now = self.clock()
        with self._lock:
            for runtime in self._models.values():
                if runtime.phase is not ModelPhase.READY:
                    continue
                lateness = runtime.settings.allowed_lateness
                horizon = (
                    max(runtime.watermark, now)
                    if self.live and self.config.close_on_wall_clock
                    else runtime.watermark
                )
                for start in sorted(runtime.windows):
                    window = runtime.windows[start]
                    if not final and window.end + lateness > horizon:
                        break
                    del runtime.windows[start]
                    runtime.closing.append(window)
                    runtime.closed_until = max(runtime.closed_until or window.end, window.end)
            queue = [(runtime, window) for runtime in self._models.values() for window in runtime.closing]
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
                runtime.closing.remove(window)
                return None
        started = time.perf_counter()
        if runtime.stale:
            self._resync(runtime)
        stateful = {d: det for d, det in runtime.detectors.items() if det.stateful}
        # Serialised, not referenced: a detector may update its arrays in place while evaluating.
        before = {d: dump_state(det.state_dict()) for d, det in stateful.items()}
        results = self._evaluate(runtime, window)
        assert runtime.reference_id is not None
        record = WindowRecord(
            model=runtime.name,
            start=_utc(window.start),
            end=_utc(window.end),
            n_late=window.n_late,
            events=[
                EventRow(
                    event_id=event_id, event_time=_utc(t), client_id=client, predicted=predicted, label=label
                )
                for event_id, t, client, predicted, label in zip(
                    window.event_ids,
                    window.times,
                    window.clients,
                    window.predicted,
                    window.labels,
                    strict=True,
                )
            ],
            results=[_result_row(result) for result in results],
            anomalies=self._anomalies(runtime, window, results),
            closed_at=_utc(self.clock()),
            detector_states=[
                DetectorStateRow(
                    d, runtime.reference_id, runtime.settings.params_hash(d), dump_state(det.state_dict())
                )
                for d, det in stateful.items()
            ],
        )
        try:
            stored = self.store.store_window(record)
        except StorageUnavailable:
            # The window is evaluated again when the database is back: its events must not enter the
            # stateful detectors' histories twice.
            for d, det in stateful.items():
                det.load_state_dict(load_state(before[d]))
            raise
        self.window_seconds.observe(time.perf_counter() - started, runtime.name)
        with self._lock:
            runtime.closing.remove(window)
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

    def _evaluate(self, runtime: ModelRuntime, window: Window) -> list[DetectionResult]:
        settings = runtime.settings
        n = window.n_events
        results: list[DetectionResult] = []
        sample = window.sampled_events()
        batch = to_batch([event for _, event in sample], [window.labels[slot] for slot, _ in sample])
        for detector_id in settings.enabled_detectors:
            detector = runtime.detectors.get(detector_id)
            threat = DETECTORS[detector_id].threat
            if detector is None:
                reason = runtime.fit_errors.get(detector_id, "detector not fitted")
                results.append(DetectionResult(detector_id, threat, Status.SKIPPED, n, reason=reason))
                continue
            if n < settings.min_events:
                results.append(detector.skipped(n, f"too few events: {n} < min_events {settings.min_events}"))
                continue
            started = time.perf_counter()
            try:
                result = detector.evaluate(batch)
            except Exception as exc:  # a detector bug must not stop the other detectors or the daemon
                log.exception("model %s: %s failed on window %s", runtime.name, detector_id, window.start)
                result = detector.skipped(n, f"detector failed: {type(exc).__name__}: {exc}")
            elapsed = time.perf_counter() - started
            self.detector_seconds.observe(elapsed, detector_id)
            log.debug("model %s: %s took %.3f s", runtime.name, detector_id, elapsed)
            results.append(self._persist(runtime, result))
        return results

    def _persist(self, runtime: ModelRuntime, result: DetectionResult) -> DetectionResult:
        """Apply the persistence rule: a failing test alerts when k of the detector's last n tested
        windows failed, or at once when its p-value is below ``immediate_p``. The raw outcome stays in
        the evidence."""
        if result.status is Status.SKIPPED:
            return result
        settings = runtime.settings
        failed = result.status is Status.ALERT
        history = runtime.history.setdefault(result.detector, deque(maxlen=settings.persistence.n))
        history.append(failed)
        if not failed:
            return result
        strong = result.p_value is not None and result.p_value < settings.immediate_p
        if strong or sum(history) >= settings.persistence.k:
            return replace(result, evidence={**result.evidence, "raw_status": "alert"})
        note = (
            f"{sum(history)} of the last {len(history)} windows failed; alerts at "
            f"{settings.persistence.k} of {settings.persistence.n}"
        )
        return replace(
            result, status=Status.OK, evidence={**result.evidence, "raw_status": "alert", "persistence": note}
        )

    def _anomalies(
        self, runtime: ModelRuntime, window: Window, results: Sequence[DetectionResult]
    ) -> list[AnomalyRow]:
        top = runtime.settings.top_anomalies
        if top == 0:
            return []
        by_id = {event.event_id: event for _, event in window.sample}
        rows = []
        for result in results:
            for scored in result.event_scores[:top]:
                event = by_id.get(scored.event_id)
                if event is None:
                    continue
                rows.append(
                    AnomalyRow(
                        detector=result.detector,
                        event_id=scored.event_id,
                        score=scored.score,
                        event_time=_utc(event.timestamp),
                        client_id=event.client_id,
                        features=dict(event.features),
                    )
                )
        return rows

    # ------------------------------------------------------------------------------------ status

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model: phase, open windows, events waiting; for logs, the API and the demo."""
        with self._lock:
            return {
                name: {
                    "phase": runtime.phase.value,
                    "open_windows": len(runtime.windows),
                    "closing_windows": len(runtime.closing),
                    "open_events": sum(w.n_events for w in runtime.windows.values()),
                    "reference_events": runtime.reference_count
                    or len(runtime.reference_events)
                    or len(runtime.warmup),
                    "duplicates": runtime.duplicates,
                    "fit_errors": dict(runtime.fit_errors),
                }
                for name, runtime in self._models.items()
            }

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(r.phase is ModelPhase.READY for r in self._models.values())


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _result_row(result: DetectionResult) -> ResultRow:
    return ResultRow(
        detector=result.detector,
        threat=result.threat.value,
        status=result.status.value,
        n_events=result.n_events,
        statistic=result.statistic,
        threshold=result.threshold,
        p_value=result.p_value,
        evidence=dict(result.evidence),
        reason=result.reason,
    )
