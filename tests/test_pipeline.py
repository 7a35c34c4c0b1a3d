"""The pipeline end to end without Kafka (replay), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from monitor.cli import replay
from monitor.intake.parsing import parse_message
from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import Store, make_engine, migrate
from tests.helpers import MODEL, T0, make_config, to_jsonl, windowed_traffic, write_reference
from tests.stored_state import count_events, event_labels

pytestmark = pytest.mark.slow


def open_store(url: str) -> Store:
    engine = make_engine(url)
    migrate(engine)
    return Store(engine)


def vae_results(store: Store) -> list[tuple[float, str, int]]:
    rows = store.window_results(model=MODEL, detector="vae_anomaly", limit=1000)
    return sorted((r.window_start.timestamp(), r.status, r.n_events) for r in rows)


def test_replay_flags_corrupted_windows_and_counts_every_event(database_url: str, tmp_path: Path) -> None:
    plan = [False, False, True, False, True, False]
    reference = write_reference(tmp_path / "reference.jsonl")
    events = windowed_traffic(plan)
    source = to_jsonl(tmp_path / "events.jsonl", events)
    config = make_config(database_url, reference=reference)

    out = io.StringIO()
    assert replay(source, config, out=out) == 0

    store = open_store(database_url)
    results = vae_results(store)
    assert [start for start, _, _ in results] == [T0 + 60 * i for i in range(len(plan))]
    assert [status for _, status, _ in results] == ["alert" if corrupt else "ok" for corrupt in plan]
    assert sum(n for _, _, n in results) == len(events) == count_events(store, MODEL)
    assert len(out.getvalue().splitlines()) == len(plan)
    # The most anomalous events of every window are stored for the history queries, each with its window.
    anomalies = store.anomalies(model=MODEL, limit=1000)
    starts = {w.id: w.start.timestamp() for w in store.windows(MODEL)}
    assert {a.window_id for a in anomalies} == set(starts)
    for anomaly in anomalies:
        assert anomaly.event_id.startswith(f"w{int((starts[anomaly.window_id] - T0) // 60)}-")
    assert [a.score for a in anomalies] == sorted((a.score for a in anomalies), reverse=True)
    # A corrupted window has many times the anomalous share of a clean one (about the calibrated 1 %).
    shares = {r.window_start.timestamp(): r.statistic for r in store.window_results(model=MODEL)}
    assert all(shares[T0 + 60 * i] > 0.15 for i, corrupt in enumerate(plan) if corrupt), shares
    assert all(shares[T0 + 60 * i] < 0.05 for i, corrupt in enumerate(plan) if not corrupt), shares


def test_replay_twice_stores_nothing_twice(database_url: str, tmp_path: Path) -> None:
    reference = write_reference(tmp_path / "reference.jsonl")
    events = windowed_traffic([False, True, False])
    source = to_jsonl(tmp_path / "events.jsonl", events)
    config = make_config(database_url, reference=reference)
    replay(source, config, out=io.StringIO())
    first = vae_results(open_store(database_url))
    replay(source, config, out=io.StringIO())
    store = open_store(database_url)
    assert vae_results(store) == first
    assert count_events(store, MODEL) == len(events)


def test_warmup_reference_then_windows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    from monitor.demo.data import reference_events

    warmup = reference_events(MODEL, start=T0 - 1000)  # 800 events before the live windows
    events = windowed_traffic([False, True])
    source = to_jsonl(tmp_path / "events.jsonl", [*warmup, *events])
    config = make_config(url, warmup=len(warmup))
    replay(source, config, out=io.StringIO())
    store = open_store(url)
    assert [s for _, s, _ in vae_results(store)] == ["ok", "alert"]
    reference = store.latest_reference(MODEL)
    assert reference is not None and reference.source == "warmup" and reference.n_events == len(warmup)
    # Reference events are not window events.
    assert count_events(store, MODEL) == len(events)


def test_restart_reuses_the_fitted_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    config = make_config(url, reference=reference)
    first = Pipeline(config, open_store(url), live=False)
    first.prepare()
    first.fit_pending()
    threshold = first._models[MODEL].fitted.detectors["vae_anomaly"].state_dict()["score_threshold"]

    from detectors.anomaly.vae import VAEAnomalyDetector

    def no_refit(self: object, reference: object) -> object:
        raise AssertionError("a restart must load the stored state, not refit")

    monkeypatch.setattr(VAEAnomalyDetector, "fit", no_refit)
    second = Pipeline(config, open_store(url), live=False)
    second.prepare()
    second.fit_pending()
    assert second._models[MODEL].fitted.detectors["vae_anomaly"].state_dict()["score_threshold"] == threshold


def test_bad_messages_are_dead_lettered_and_intake_goes_on(database_url: str, tmp_path: Path) -> None:
    reference = write_reference(tmp_path / "reference.jsonl")
    good = windowed_traffic([False], per_window=50)
    bad: list[bytes] = [
        b"{not json",
        json.dumps({**good[0], "event_id": None}).encode(),
        json.dumps({**good[0], "event_id": "x1", "features": [1, 2]}).encode(),
        b'{"event_id": "x2", "model": "digits", "timestamp": 1, "features": {"px0": NaN}, '
        b'"prediction": {"label": "1"}}',
        json.dumps({**good[0], "event_id": "x3", "timestamp": "half past ten"}).encode(),
        json.dumps(
            {**good[0], "event_id": "x4", "features": {**good[0]["features"], "px0": "dark"}}
        ).encode(),
        json.dumps({**good[0], "event_id": "x5", "features": {"pz": 1.0}}).encode(),
        json.dumps({**good[0], "event_id": "x6", "pad": "x" * 3_000_000}).encode(),
    ]
    source = to_jsonl(tmp_path / "events.jsonl", [*good[:25], *bad, *good[25:]])
    replay(source, make_config(database_url, reference=reference), out=io.StringIO())
    store = open_store(database_url)
    letters = store.dead_letters(limit=100)
    assert len(letters) == len(bad)
    reasons = " | ".join(d.reason for d in letters)
    for fragment in (
        "invalid JSON",
        "event_id",
        "'features' must be an object",
        "NaN",
        "cannot be parsed as RFC 3339",
        "reference schema",
        "unknown feature",
        "exceeds the limit",
    ):
        assert fragment in reasons
    oversized = next(d for d in letters if "exceeds" in d.reason)
    assert oversized.size > 3_000_000 and oversized.partition == 0 and oversized.offset == 25 + 7
    assert count_events(store, MODEL) == len(good)


def test_too_small_window_is_skipped_with_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    source = to_jsonl(tmp_path / "events.jsonl", windowed_traffic([False], per_window=12))
    replay(source, make_config(url, reference=reference, min_events=30), out=io.StringIO())
    [result] = open_store(url).window_results(model=MODEL)
    assert result.status == "skipped"
    assert result.reason == "too few events: 12 < min_events 30"


def ingest_all(
    pipeline: Pipeline, events: list[dict[str, object]], partition: int = 0, first: int = 0
) -> None:
    for i, event in enumerate(events):
        pipeline.ingest(RawMessage(json.dumps(event).encode(), Position("t", partition, first + i)))


def test_late_events_go_to_the_open_window_and_feedback_labels_attach(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    store = open_store(url)
    pipeline = Pipeline(make_config(url, reference=reference), store, live=False)
    pipeline.prepare()
    pipeline.fit_pending()
    first, second, third = (
        windowed_traffic([False], per_window=40, start=T0 + 60 * i, prefix=f"p{i}-") for i in range(3)
    )
    ingest_all(pipeline, first)
    ingest_all(pipeline, second, first=100)
    # Event time passed the first window's end plus lateness: it closes.
    [closed] = pipeline.close_due()
    assert closed.stored.start.timestamp() == T0 and closed.stored.n_events == 40
    # A straggler of the first window arrives now: counted, late, in the window still open.
    straggler = {**first[0], "event_id": "late-1"}
    ingest_all(pipeline, [straggler], first=200)
    # Feedback for an event of the open window and one of the stored window.
    feedback = [
        {"type": "feedback", "event_id": second[3]["event_id"], "model": MODEL, "label": "fb-open"},
        {"type": "feedback", "event_id": first[5]["event_id"], "model": MODEL, "label": "fb-stored"},
        {"type": "feedback", "event_id": "not-yet-seen", "model": MODEL, "label": "fb-early"},
    ]
    ingest_all(pipeline, feedback, first=300)
    pipeline.flush()
    early = {**third[0], "event_id": "not-yet-seen", "timestamp": T0 + 61}
    ingest_all(pipeline, [*third[1:], early], first=400)
    closed_now = pipeline.close_due(final=True)
    windows = {w.start.timestamp(): w for w in store.windows(MODEL)}
    assert windows[T0 + 60].n_events == 42 and windows[T0 + 60].n_late == 1
    labels = event_labels(store, MODEL, [second[3]["event_id"], first[5]["event_id"], "not-yet-seen"])
    assert labels == {
        second[3]["event_id"]: "fb-open",
        first[5]["event_id"]: "fb-stored",
        "not-yet-seen": "fb-early",
    }
    assert len(closed_now) == 2
    # /metrics' view: three windows closed, each enabled detector timed once per window it tested.
    assert pipeline.window_seconds.snapshot()[MODEL].count == 3
    tested = {r.detector for c in (closed, *closed_now) for r in c.results if r.status.value != "skipped"}
    timings = pipeline.detector_seconds.snapshot()
    assert tested and all(timings[d].count >= 1 for d in tested)
    assert pipeline.events_by_model.snapshot()[(MODEL, "accepted")] == 40 + 40 + 1 + 40


def test_offsets_are_held_back_until_the_window_is_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    pipeline = Pipeline(make_config(url, reference=reference), open_store(url), live=False)
    pipeline.prepare()
    pipeline.fit_pending()
    first, second = (
        windowed_traffic([False], per_window=40, start=T0 + 60 * i, prefix=f"q{i}-") for i in range(2)
    )
    ingest_all(pipeline, first[:20], partition=0, first=0)
    ingest_all(pipeline, first[20:], partition=1, first=0)
    ingest_all(pipeline, [b for b in second[:10]], partition=0, first=20)
    pipeline.ingest(RawMessage(b"garbage", Position("t", 1, 20)))
    # Nothing is stored yet: the commit position is the first message of each partition.
    assert pipeline.safe_offsets() == {("t", 0): 0, ("t", 1): 0}
    pipeline.flush()  # the dead letter is stored; partition 1 is still held by the first window
    assert pipeline.safe_offsets() == {("t", 0): 0, ("t", 1): 0}
    ingest_all(pipeline, second[10:], partition=0, first=30)
    # Partition 0 is far into the second window, but partition 1 has shown nothing past the first: event
    # time has not surely passed the first window's end, so it stays open (live, the wall clock closes it).
    assert pipeline.close_due() == []
    ingest_all(pipeline, [{**second[-1], "event_id": "q1-p1"}], partition=1, first=21)
    [closed] = pipeline.close_due()  # now both partitions are past it: the first window closes, alone
    assert closed.stored.n_events == 40
    assert pipeline.safe_offsets() == {("t", 0): 20, ("t", 1): 21}


def test_parse_of_reference_file_round_trip(tmp_path: Path) -> None:
    reference = write_reference(tmp_path / "reference.jsonl")
    lines = reference.read_bytes().splitlines()
    assert all(parse_message(line).model == MODEL for line in lines[:5])


class FakeClock:
    """Wall-clock time injected into the pipeline, so no test sleeps to test a time rule."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_idle_stream_closes_its_window_on_wall_clock_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    clock = FakeClock(T0 + 30)
    pipeline = Pipeline(make_config(url, reference=reference), open_store(url), clock=clock, live=True)
    pipeline.prepare()
    pipeline.fit_pending()
    ingest_all(pipeline, windowed_traffic([False], per_window=40))
    assert pipeline.close_due() == []  # the window is still running
    clock.now = T0 + 60 + 4.9
    assert pipeline.close_due() == []  # past its end, but within the allowed lateness of 5 s
    clock.now = T0 + 60 + 5.0
    [closed] = pipeline.close_due()  # no newer event came; wall-clock time closed it
    assert closed.stored.n_events == 40


def test_far_future_timestamps_are_dead_lettered_when_live(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    reference = write_reference(tmp_path / "reference.jsonl")
    store = open_store(url)
    pipeline = Pipeline(make_config(url, reference=reference), store, clock=FakeClock(T0), live=True)
    pipeline.prepare()
    [event] = windowed_traffic([False], per_window=1, start=T0 + 7200)
    ingest_all(pipeline, [event])
    pipeline.flush()
    [letter] = store.dead_letters()
    assert "in the future" in letter.reason and letter.model == MODEL


def test_unknown_models_can_be_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = open_store(url)
    config = make_config(url, reference=write_reference(tmp_path / "r.jsonl"), unknown_models="dead_letter")
    pipeline = Pipeline(config, store, live=False)
    [event] = windowed_traffic([False], per_window=1, model="someone-else")
    ingest_all(pipeline, [event])
    pipeline.flush()
    assert "not configured" in store.dead_letters()[0].reason
