"""Late labels are the normal case: feedback after a window closed updates its label-based results."""

from __future__ import annotations

import json
from pathlib import Path

from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import Store, make_engine, migrate
from tests.helpers import MODEL, T0, make_config, windowed_traffic, write_reference


def test_feedback_after_close_updates_the_performance_result(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    migrate(engine)
    store = Store(engine)
    config = make_config(
        url,
        reference=write_reference(tmp_path / "reference.jsonl"),
        detectors={"performance": {}, "label_drift": {}},
    )
    pipeline = Pipeline(config, store, live=False)
    pipeline.prepare()
    pipeline.fit_pending()

    events = windowed_traffic([False], per_window=200)
    truth = {e["event_id"]: e["label"] for e in events}
    predicted = {e["event_id"]: e["prediction"]["label"] for e in events}
    offset = 0
    for event in events:  # predictions are logged without labels
        unlabelled = {k: v for k, v in event.items() if k != "label"}
        pipeline.ingest(RawMessage(json.dumps(unlabelled).encode(), Position("t", 0, offset)))
        offset += 1
    [closed] = pipeline.close_due(final=True)
    before = {r.detector: r for r in store.window_results(model=MODEL)}
    assert before["performance"].status == "skipped"
    assert "too few labelled events" in (before["performance"].reason or "")

    # Labels arrive after the window closed; a third of them say the model was wrong (a poisoned feed).
    for i, (event_id, label) in enumerate(truth.items()):
        wrong = next(c for c in "0123456789" if c != predicted[event_id])
        feedback = {
            "type": "feedback",
            "event_id": event_id,
            "model": MODEL,
            "label": wrong if i % 3 == 0 else label,
            "timestamp": T0 + 3600,
        }
        pipeline.ingest(RawMessage(json.dumps(feedback).encode(), Position("t", 0, offset)))
        offset += 1
    pipeline.flush()

    after = {r.detector: r for r in store.window_results(model=MODEL)}
    performance = after["performance"]
    assert performance.window_id == closed.stored.id == before["performance"].window_id
    assert performance.status == "alert", performance
    assert performance.statistic is not None and performance.statistic < 0.7  # accuracy after the flips
    assert after["label_drift"].status != "skipped"
    assert store.windows(MODEL)[0].n_labelled == 200
