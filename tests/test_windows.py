"""Windows: alignment, exact counts with a bounded sample, offset floors, discarding redelivered events, and
the assigner: duplicates, per-partition event time, lateness and which windows are due."""

from __future__ import annotations

import logging

import pytest

from monitor.intake.parsing import PredictionEvent
from monitor.windows import OffsetFloor, Position, Window, WindowAssigner, window_start


def make_event(i: int, t: float = 1000.0) -> PredictionEvent:
    return PredictionEvent(
        event_id=f"e{i}",
        model="m",
        timestamp=t + i * 0.001,
        features={"x": float(i)},
        prediction={"label": str(i % 3)},
        client_id=f"c{i % 2}",
    )


@pytest.mark.parametrize(
    ("t", "length", "start"),
    [(0, 60, 0), (59.999, 60, 0), (60, 60, 60), (1795861877.12, 300, 1795861800), (7.5, 2.5, 7.5)],
)
def test_windows_align_to_their_length(t: float, length: float, start: float) -> None:
    assert window_start(t, length) == start


def test_counts_stay_exact_while_the_sample_is_bounded() -> None:
    window = Window("m", 0.0, 60.0, max_sample=100)
    for i in range(5000):
        window.add(make_event(i), late=i % 10 == 0, position=Position("t", i % 4, 1000 + i))
    assert window.n_events == 5000
    assert window.n_late == 500
    assert len(window.sample) == 100
    kept = [slot for slot, _ in window.sampled_events()]
    assert kept == sorted(kept)
    # A uniform sample of 5000 events: the kept ones are spread over the whole window, not the first 100.
    assert max(kept) > 2500 and min(kept) < 2500
    assert window.offsets.floors == {("t", 0): 1000, ("t", 1): 1001, ("t", 2): 1002, ("t", 3): 1003}


def test_same_input_same_sample() -> None:
    def build() -> list[int]:
        window = Window("m", 0.0, 60.0, max_sample=10)
        for i in range(1000):
            window.add(make_event(i), late=False, position=None)
        return [slot for slot, _ in window.sampled_events()]

    assert build() == build()


def test_labels_attach_to_open_window_events() -> None:
    window = Window("m", 0.0, 60.0, max_sample=10)
    window.add(make_event(1), late=False, position=Position("t", 0, 5))
    assert window.set_label("e1", "fraud", Position("t", 1, 2))
    assert not window.set_label("e9", "fraud", None)
    assert window.labels == ["fraud"]
    assert window.offsets.floors[("t", 1)] == 2


def test_discard_removes_events_and_keeps_the_rest_consistent() -> None:
    window = Window("m", 0.0, 60.0, max_sample=3)
    for i in range(6):
        window.add(make_event(i), late=i == 2, position=None)
    window.discard({"e0", "e2", "e5"})
    assert window.event_ids == ["e1", "e3", "e4"]
    assert window.n_late == 0
    assert window.index == {"e1": 0, "e3": 1, "e4": 2}
    for slot, event in window.sampled_events():
        assert window.event_ids[slot] == event.event_id


def test_offset_floor_keeps_the_smallest() -> None:
    floor = OffsetFloor()
    for offset in (7, 3, 9):
        floor.note(Position("t", 0, offset))
    floor.note(None)
    assert floor.floors == {("t", 0): 3}


def at(i: int, t: float) -> PredictionEvent:
    """Event ``e{i}`` at time ``t`` exactly."""
    return PredictionEvent(event_id=f"e{i}", model="m", timestamp=t, features={"x": 1.0}, prediction={})


def test_the_slowest_partition_says_how_far_event_time_has_got(caplog: pytest.LogCaptureFixture) -> None:
    assigner = WindowAssigner("m", 60.0, max_sample=10)
    assigner.assign(at(0, 10.0), Position("t", 0, 0))
    with caplog.at_level(logging.WARNING, logger="sentinel.pipeline"):
        assigner.assign(at(1, 130.0), Position("t", 1, 0))
        assigner.assign(at(2, 131.0), Position("t", 1, 1))
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "model m: events arrive on more than one partition (t[0], t[1])"
    ]  # said once
    assert assigner.watermark == 10.0
    assigner.close_due(now=None, lateness=5.0)
    assert assigner.closing == []  # partition 0 has shown nothing past the first window
    assigner.assign(at(3, 70.0), Position("t", 0, 1))
    assert assigner.watermark == 70.0
    assigner.close_due(now=None, lateness=5.0)
    assert [w.start for w in assigner.closing] == [0.0]
    assert assigner.closed_until == 60.0
    # The wall clock closes what event time has not.
    assigner.close_due(now=200.0, lateness=5.0)
    assert [w.start for w in assigner.closing] == [0.0, 60.0, 120.0]


def test_late_events_go_to_the_open_window_and_duplicates_hold_their_offset() -> None:
    assigner = WindowAssigner("m", 60.0, max_sample=10)
    assigner.assign(at(0, 10.0), Position("t", 0, 0))
    assigner.assign(at(1, 70.0), Position("t", 0, 1))
    assigner.close_due(now=None, lateness=0.0)
    assert assigner.assign(at(2, 20.0), Position("t", 0, 2))  # late: its window is closed
    [open_window] = assigner.open.values()
    assert open_window.start == 60.0 and open_window.n_late == 1
    # A redelivered event of the closing window is a duplicate, and its offset waits for that window.
    assert assigner.absorb_duplicate("e0", Position("t", 1, 3))
    assert assigner.closing[0].offsets.floors[("t", 1)] == 3
    assert not assigner.absorb_duplicate("e9", Position("t", 0, 4))
    # Feedback labels attach to open windows only; the store labels the others.
    assert assigner.attach_label("e1", "ok", None)
    assert not assigner.attach_label("e0", "ok", None)
    assigner.release(assigner.closing[0])
    assigner.forget_open()
    assert list(assigner) == [] and assigner.partition_marks == {}
