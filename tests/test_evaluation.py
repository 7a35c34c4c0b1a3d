"""Evaluation of a closed window without Kafka or a database: real detectors on small seeded data."""

from __future__ import annotations

import random
from typing import Any

import pytest

from detectors.base import Batch, DetectionResult, EventScore, FeatureValue, Status, Threat
from detectors.registry import create_detector
from monitor.config import ModelSettings
from monitor.evaluation import (
    FittedDetectors,
    PersistenceHistory,
    anomaly_rows,
    evaluate_window,
    label_batch,
    reevaluate_labels,
    window_record,
)
from monitor.intake.parsing import PredictionEvent
from monitor.intake.reference import to_batch
from monitor.metrics import Histogram
from monitor.windows import Position, Window, WindowAssigner
from tests.helpers import only_detectors

FEATURES = ("x0", "x1", "x2", "x3")
LENGTH = 60.0


def make_events(
    n: int, *, seed: int, shift: float = 0.0, prefix: str = "e", t0: float = 0.0
) -> list[PredictionEvent]:
    """``n`` events of four standard-normal features (``shift`` added to each), classes by the sign of x0."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        features: dict[str, FeatureValue] = {name: rng.gauss(0.0, 1.0) + shift for name in FEATURES}
        label = "pos" if rng.random() < 0.5 else "neg"
        events.append(
            PredictionEvent(
                event_id=f"{prefix}{i}",
                model="m",
                timestamp=t0 + i * LENGTH / (n + 1),
                features=features,
                prediction={"label": label},
                label=label,
                client_id=f"c{i % 5}",
            )
        )
    return events


def make_settings(**extra: Any) -> ModelSettings:
    return ModelSettings.model_validate(
        {
            "window": LENGTH,
            "min_events": 30,
            "persistence": {"k": 1, "n": 1},
            "detectors": only_detectors(feature_drift={}, output_drift={}),
            **extra,
        }
    )


def fit(settings: ModelSettings, reference: list[PredictionEvent]) -> FittedDetectors:
    batch = to_batch(reference)
    fitted = FittedDetectors()
    for detector_id in settings.enabled_detectors:
        detector = create_detector(detector_id, settings.detector_params(detector_id))
        fitted.detectors[detector_id] = detector.fit(batch)
    return fitted


def closed_window(events: list[PredictionEvent], max_sample: int = 1000) -> Window:
    """The events windowed by a :class:`WindowAssigner`, and their window closed."""
    assigner = WindowAssigner("m", LENGTH, max_sample)
    for offset, event in enumerate(events):
        assert not assigner.assign(event, Position("t", 0, offset))
    assigner.close_due(now=None, lateness=0.0, final=True)
    [window] = assigner.closing
    return window


@pytest.fixture(scope="module")
def reference() -> list[PredictionEvent]:
    return make_events(400, seed=1, prefix="r")


def statuses(results: list[DetectionResult]) -> dict[str, Status]:
    return {r.detector: r.status for r in results}


def test_a_clean_window_passes_and_a_shifted_one_alerts(reference: list[PredictionEvent]) -> None:
    settings = make_settings()
    fitted = fit(settings, reference)
    history = PersistenceHistory.for_model(settings)
    timings = Histogram()
    clean = evaluate_window("m", closed_window(make_events(200, seed=2)), settings, fitted, history, timings)
    assert [r.detector for r in clean] == settings.enabled_detectors  # in the configured order
    assert statuses(clean) == {"feature_drift": Status.OK, "output_drift": Status.OK}
    shifted = closed_window(make_events(200, seed=3, shift=1.5))
    results = evaluate_window("m", shifted, settings, fitted, history, timings)
    assert statuses(results)["feature_drift"] is Status.ALERT
    assert results[0].evidence["raw_status"] == "alert"
    # Every detector that ran on a window was timed, under its own id.
    assert {d: s.count for d, s in timings.snapshot().items()} == {"feature_drift": 2, "output_drift": 2}


def test_a_small_window_and_an_unfitted_detector_are_skipped_with_their_reasons(
    reference: list[PredictionEvent],
) -> None:
    settings = make_settings()
    fitted = fit(settings, reference)
    del fitted.detectors["output_drift"]
    fitted.errors["output_drift"] = "cannot fit on the reference: no classes"
    history = PersistenceHistory.for_model(settings)
    small = evaluate_window("m", closed_window(make_events(12, seed=4)), settings, fitted, history)
    assert [(r.status, r.reason) for r in small] == [
        (Status.SKIPPED, "too few events: 12 < min_events 30"),
        (Status.SKIPPED, "cannot fit on the reference: no classes"),
    ]
    assert history.failed == {}  # skipped windows do not count for the persistence rule


def test_a_failing_detector_is_skipped_and_the_others_still_run(
    reference: list[PredictionEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    fitted = fit(settings, reference)

    def broken(batch: Batch) -> DetectionResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(fitted.detectors["feature_drift"], "evaluate", broken)
    window = closed_window(make_events(100, seed=5))
    results = evaluate_window("m", window, settings, fitted, PersistenceHistory.for_model(settings))
    assert results[0].status is Status.SKIPPED
    assert results[0].reason == "detector failed: RuntimeError: boom"
    assert results[1].status is Status.OK


def test_persistence_holds_back_one_failing_window(reference: list[PredictionEvent]) -> None:
    settings = make_settings(persistence={"k": 2, "n": 3}, immediate_p=1e-300)
    fitted = fit(settings, reference)
    history = PersistenceHistory.for_model(settings)
    first, second = (closed_window(make_events(200, seed=6 + i, shift=1.5)) for i in range(2))
    held = evaluate_window("m", first, settings, fitted, history)[0]
    assert held.status is Status.OK
    assert held.evidence["persistence"] == "1 of the last 1 windows failed; alerts at 2 of 3"
    assert evaluate_window("m", second, settings, fitted, history)[0].status is Status.ALERT


def test_the_history_is_rebuilt_from_stored_results() -> None:
    history = PersistenceHistory(k=2, n=3, immediate_p=1e-6)
    history.replay(
        [
            ("feature_drift", "ok", {"raw_status": "alert"}),  # held back by the rule: a failure all the same
            ("feature_drift", "skipped", {}),
            ("output_drift", "alert", None),
        ]
    )
    assert {d: list(h) for d, h in history.failed.items()} == {
        "feature_drift": [True],
        "output_drift": [True],
    }
    failing = DetectionResult("feature_drift", Threat.DRIFT, Status.ALERT, 200, p_value=0.001)
    assert history.judge(failing).status is Status.ALERT  # 2 of the last 2


def test_the_record_holds_every_event_the_results_and_the_top_anomalies(
    reference: list[PredictionEvent],
) -> None:
    settings = make_settings(top_anomalies=2)
    fitted = fit(settings, reference)
    events = make_events(80, seed=9, t0=120.0)
    window = closed_window(events, max_sample=50)
    results = evaluate_window("m", window, settings, fitted, PersistenceHistory.for_model(settings))
    record = window_record(
        "m", window, results, settings=settings, fitted=fitted, reference_id=7, closed_at=200.0
    )
    assert (record.start.timestamp(), record.end.timestamp(), record.closed_at.timestamp()) == (120, 180, 200)
    assert [row.event_id for row in record.events] == [e.event_id for e in events]  # all, not the sample
    assert [row.detector for row in record.results] == settings.enabled_detectors
    assert record.detector_states == []  # neither detector learns from windows
    sampled = window.sampled_events()[0][1].event_id
    scored = DetectionResult(
        "vae_anomaly",
        Threat.ROBUSTNESS,
        Status.OK,
        80,
        event_scores=(EventScore("not-in-sample", 9.0), EventScore(sampled, 5.0)),
    )
    [anomaly] = anomaly_rows(window, [scored], top=2)
    assert (anomaly.event_id, anomaly.score, anomaly.detector) == (sampled, 5.0, "vae_anomaly")
    assert anomaly_rows(window, [scored], top=0) == []


def test_late_labels_re_evaluate_the_label_detectors() -> None:
    settings = make_settings(detectors=only_detectors(performance={}))
    reference = make_events(300, seed=10, prefix="r")
    fitted = fit(settings, reference)
    assert [d.id for d in fitted.label_detectors()] == ["performance"]
    # Every stored prediction is now contradicted by its label.
    pairs = [(f"e{i}", "pos", "neg") for i in range(100)]
    batch = label_batch(pairs)
    assert batch.predictions[0] == {"label": "pos"} and batch.labels[0] == "neg"
    result = reevaluate_labels("m", 1, fitted.detectors["performance"], batch)
    assert result.status is Status.ALERT
