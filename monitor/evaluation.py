"""Evaluation of one closed window: its detectors, the persistence rule, and the rows that record it.

Nothing here reads or writes the store, Kafka or the clock: the pipeline hands in a closed window and the
model's fitted detectors, and gets back the results and the :class:`~storage.WindowRecord` to store. The
same code re-evaluates the label-based detectors of a stored window when late labels arrive.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from detectors.base import Batch, DetectionResult, Detector, Status
from detectors.registry import DETECTORS
from detectors.state import dump_state, load_state
from monitor.config import ModelSettings
from monitor.intake.reference import to_batch
from monitor.metrics import Histogram
from monitor.windows import Window
from storage import AnomalyRow, DetectorStateRow, EventRow, ResultRow, WindowRecord

# The pipeline's logger: these lines were written by pipeline.py before evaluation moved here, and log
# readers filter on the logger's name.
log = logging.getLogger("sentinel.pipeline")

# Detectors that need only predictions and labels: re-evaluated on a stored window when late labels arrive.
LABEL_DETECTORS = ("performance", "label_drift")


@dataclass
class FittedDetectors:
    """One model's detectors once fitted (or loaded), and why the others could not be."""

    detectors: dict[str, Detector] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # Set on a rebalance: another replica may have stored windows of this model meanwhile, so the learned
    # state of stateful detectors and the persistence history are re-read from the store before the next
    # window is evaluated.
    stale: bool = False

    def stateful(self) -> dict[str, Detector]:
        """The detectors that learn from every window they evaluate."""
        return {detector_id: d for detector_id, d in self.detectors.items() if d.stateful}

    def snapshot(self) -> dict[str, bytes]:
        """The stateful detectors' states, serialised: a detector may update its arrays in place while
        evaluating, so a reference would not keep the state from before."""
        return {detector_id: dump_state(d.state_dict()) for detector_id, d in self.stateful().items()}

    def restore(self, snapshot: dict[str, bytes]) -> None:
        """Put back the states of :meth:`snapshot` (the window was not stored and is evaluated again)."""
        for detector_id, detector in self.stateful().items():
            detector.load_state_dict(load_state(snapshot[detector_id]))

    def label_detectors(self) -> list[Detector]:
        """The fitted detectors that read only predictions and labels."""
        return [self.detectors[d] for d in LABEL_DETECTORS if d in self.detectors]


class PersistenceHistory:
    """The persistence rule and what it remembers: per detector, whether each of its last n tested windows
    failed. A failing test alerts when k of those n failed, or at once when its p-value is below
    ``immediate_p``; otherwise it is reported as ok, and the raw outcome stays in the evidence."""

    def __init__(self, k: int, n: int, immediate_p: float) -> None:
        self.k = k
        self.n = n
        self.immediate_p = immediate_p
        self.failed: dict[str, deque[bool]] = {}

    @classmethod
    def for_model(cls, settings: ModelSettings) -> PersistenceHistory:
        return cls(settings.persistence.k, settings.persistence.n, settings.immediate_p)

    def judge(self, result: DetectionResult) -> DetectionResult:
        """Remember the detector's raw outcome and return the result the rule makes of it."""
        if result.status is Status.SKIPPED:
            return result
        failed = result.status is Status.ALERT
        history = self.failed.setdefault(result.detector, deque(maxlen=self.n))
        history.append(failed)
        if not failed:
            return result
        strong = result.p_value is not None and result.p_value < self.immediate_p
        if strong or sum(history) >= self.k:
            return replace(result, evidence={**result.evidence, "raw_status": "alert"})
        note = f"{sum(history)} of the last {len(history)} windows failed; alerts at {self.k} of {self.n}"
        return replace(
            result, status=Status.OK, evidence={**result.evidence, "raw_status": "alert", "persistence": note}
        )

    def replay(self, stored: Iterable[tuple[str, str, object]]) -> None:
        """Rebuild the history from stored results, as (detector, status, evidence) oldest first, so that a
        restart keeps counting. Skipped windows do not count; a stored result keeps its raw outcome."""
        for detector, status, evidence in stored:
            if status == "skipped":
                continue
            raw = evidence.get("raw_status", status) if isinstance(evidence, dict) else status
            self.failed.setdefault(detector, deque(maxlen=self.n)).append(raw == "alert")

    def clear(self) -> None:
        self.failed.clear()


def evaluate_window(
    model: str,
    window: Window,
    settings: ModelSettings,
    fitted: FittedDetectors,
    history: PersistenceHistory,
    timings: Histogram | None = None,
) -> list[DetectionResult]:
    """Run every enabled detector on the window's sample, in the configured order, and apply the
    persistence rule. A detector that was not fitted, a window under ``min_events`` and a detector that
    fails are skipped results, with the reason; ``timings`` gets each detector's time, by detector."""
    n = window.n_events
    results: list[DetectionResult] = []
    sample = window.sampled_events()
    batch = to_batch([event for _, event in sample], [window.labels[slot] for slot, _ in sample])
    for detector_id in settings.enabled_detectors:
        detector = fitted.detectors.get(detector_id)
        if detector is None:
            reason = fitted.errors.get(detector_id, "detector not fitted")
            results.append(
                DetectionResult(detector_id, DETECTORS[detector_id].threat, Status.SKIPPED, n, reason=reason)
            )
            continue
        if n < settings.min_events:
            results.append(detector.skipped(n, f"too few events: {n} < min_events {settings.min_events}"))
            continue
        started = time.perf_counter()
        try:
            result = detector.evaluate(batch)
        except Exception as exc:  # a detector bug must not stop the other detectors or the daemon
            log.exception("model %s: %s failed on window %s", model, detector_id, window.start)
            result = detector.skipped(n, f"detector failed: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        if timings is not None:
            timings.observe(elapsed, detector_id)
        log.debug("model %s: %s took %.3f s", model, detector_id, elapsed)
        results.append(history.judge(result))
    return results


def label_batch(pairs: Sequence[tuple[str, str | None, str | None]]) -> Batch:
    """A batch of a stored window's (event id, predicted class, label) triples, without features."""
    return Batch(
        event_ids=[event_id for event_id, _, _ in pairs],
        features=[{} for _ in pairs],
        predictions=[{"label": predicted} if predicted is not None else {} for _, predicted, _ in pairs],
        labels=[label for _, _, label in pairs],
    )


def reevaluate_labels(model: str, window_id: int, detector: Detector, batch: Batch) -> DetectionResult:
    """One label-based detector on a stored window's labelled pairs (late labels arrived)."""
    try:
        return detector.evaluate(batch)
    except Exception as exc:  # a detector bug must not stop intake
        log.exception("model %s: re-evaluating %s of window %d failed", model, detector.id, window_id)
        return detector.skipped(len(batch), f"detector failed: {type(exc).__name__}: {exc}")


def window_record(
    model: str,
    window: Window,
    results: Sequence[DetectionResult],
    *,
    settings: ModelSettings,
    fitted: FittedDetectors,
    reference_id: int,
    closed_at: float,
) -> WindowRecord:
    """What the store keeps of an evaluated window: its events, results, top anomalies and the stateful
    detectors' states after it."""
    return WindowRecord(
        model=model,
        start=utc(window.start),
        end=utc(window.end),
        n_late=window.n_late,
        events=[
            EventRow(event_id=event_id, event_time=utc(t), client_id=client, predicted=predicted, label=label)
            for event_id, t, client, predicted, label in zip(
                window.event_ids, window.times, window.clients, window.predicted, window.labels, strict=True
            )
        ],
        results=[result_row(result) for result in results],
        anomalies=anomaly_rows(window, results, settings.top_anomalies),
        closed_at=utc(closed_at),
        detector_states=[
            DetectorStateRow(
                detector_id,
                reference_id,
                settings.params_hash(detector_id),
                dump_state(detector.state_dict()),
            )
            for detector_id, detector in fitted.stateful().items()
        ],
    )


def anomaly_rows(window: Window, results: Sequence[DetectionResult], top: int) -> list[AnomalyRow]:
    """Each detector's ``top`` most anomalous events that are in the window's sample."""
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
                    event_time=utc(event.timestamp),
                    client_id=event.client_id,
                    features=dict(event.features),
                )
            )
    return rows


def result_row(result: DetectionResult) -> ResultRow:
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


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
