"""Horizontal scale: two `sentinel run` processes in one consumer group, one PostgreSQL, several models.

Each model's events are keyed to one partition (the contract recommends key = model id), so the replica
that owns a partition owns that model's windows. The test kills one replica with SIGKILL in the middle of
the stream: the other takes over its partitions, rebuilds the open windows from the uncommitted offsets,
and the totals still equal what was produced, with each window and each alert stored once.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from monitor.broker import EmbeddedBroker, create_topic
from storage import AlertStore, Store, make_engine, migrate
from tests.daemon_process import DaemonProcess
from tests.helpers import (
    T0,
    file_references,
    log_tail,
    produce_events,
    replay_settings,
    wait_until,
    windowed_traffic,
)
from tests.stored_state import alert_states, count_events

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

MODELS = [f"scale-{i}" for i in range(4)]  # model i is keyed to partition i
PER_WINDOW = 120


def config(
    broker: EmbeddedBroker, topic: str, database_url: str, tmp_path: Path, api_port: int
) -> dict[str, Any]:
    return replay_settings(
        database_url,
        broker.bootstrap_servers,
        topic,
        api={"port": api_port},
        defaults={
            "persistence": {"k": 1, "n": 1},  # one failing window alerts: the test has one corrupted window
            "window": "60s",
            "allowed_lateness": "5s",
            "min_events": 30,
            "detectors": {
                "vae_anomaly": False,
                "latent_drift": False,
                "feature_drift": False,
                "label_drift": False,
                "performance": False,
            },
        },
        models=file_references(tmp_path, MODELS),
    )


def produce(broker: EmbeddedBroker, topic: str, events: list[dict[str, Any]]) -> None:
    produce_events(
        broker.bootstrap_servers, topic, events, lambda _, event: MODELS.index(event["model"]), linger_ms=5
    )


def test_two_replicas_share_the_models_and_one_takes_over_when_the_other_dies(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    from monitor.broker import free_port

    topic = f"scale-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, len(MODELS))
    engine = make_engine(postgres_url)
    migrate(engine)
    store, alerts = Store(engine), AlertStore(engine)

    def windows_stored(n: int) -> bool:
        return all(len(store.windows(m)) >= n for m in MODELS)

    first = DaemonProcess(config(broker, topic, postgres_url, tmp_path, free_port()), tmp_path).start()
    second = DaemonProcess(config(broker, topic, postgres_url, tmp_path, free_port()), tmp_path).start()
    # Per model: windows 0 (clean), 1 (corrupted: an output_drift alert per model), 2 and 3 (clean).
    streams = {
        m: windowed_traffic([False, True, False, False], per_window=PER_WINDOW, model=m, prefix=f"{m}-")
        for m in MODELS
    }
    cut = 2 * PER_WINDOW + PER_WINDOW // 2  # phase one stops in the middle of window 2
    phase_one = [e for m in MODELS for e in streams[m][:cut]]
    phase_two = [e for m in MODELS for e in streams[m][cut:]]
    # A few events of a later window move event time past window 3's end; they stay in an open window.
    tail = [
        e
        for m in MODELS
        for e in windowed_traffic([False], per_window=5, start=T0 + 360, model=m, prefix=f"{m}-t")
    ]

    def alert_per_model() -> bool:
        return {a.model for a in alert_states(alerts)} == set(MODELS)

    try:
        first.wait_for("running", timeout=180)
        second.wait_for("running", timeout=180)
        wait_until(
            lambda: first.count("assigned partitions") > 0 and second.count("assigned partitions") > 0,
            120,
            "both replicas to be assigned partitions",
            log_tail(first, second, chars=3000),
        )
        time.sleep(3.0)  # let the rebalance caused by the second join settle
        produce(broker, topic, phase_one)
        wait_until(
            lambda: windows_stored(2),
            180,
            "windows 0 and 1 of every model",
            log_tail(first, second, chars=3000),
        )
        owners = {m: [d for d in (first, second) if d.count(f"window {m} [")] for m in MODELS}
        assert all(len(o) == 1 for o in owners.values()), "each model's windows are stored by one replica"
        assert {id(o[0]) for o in owners.values()} == {id(first), id(second)}, "both replicas did work"
    finally:
        first.kill()  # no chance to commit offsets or close anything

    try:
        produce(broker, topic, phase_two + tail)
        wait_until(
            lambda: windows_stored(4),
            240,
            "windows 0-3 of every model after the takeover",
            log_tail(second, chars=3000),
        )
        wait_until(alert_per_model, 60, "an alert per model", log_tail(second, chars=3000))
        assert second.terminate() == 0
    finally:
        if second.process and second.process.poll() is None:
            second.kill()

    for model in MODELS:
        windows = sorted(store.windows(model), key=lambda w: w.start)
        starts = [w.start.timestamp() for w in windows[:4]]
        assert starts == [T0 + 60 * i for i in range(4)], (model, starts)
        # Every produced event is in exactly one stored window: nothing lost to the kill, nothing twice.
        assert [w.n_events for w in windows[:4]] == [PER_WINDOW] * 4, (model, windows)
        assert count_events(store, model) == 4 * PER_WINDOW + sum(w.n_events for w in windows[4:])
    # One alert per model for the corrupted window, whichever replica's engine saw it first.
    per_fingerprint = Counter(a.fingerprint for a in alert_states(alerts))
    assert all(n == 1 for n in per_fingerprint.values())
    assert sorted({a.model for a in alert_states(alerts)}) == MODELS
    assert "Traceback" not in second.log
    engine.dispose()
