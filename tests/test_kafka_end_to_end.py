"""Against the real broker: a 4-partition topic in, stored window results out; crash safety with SIGKILL."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from monitor.broker import EmbeddedBroker, create_topic
from storage import Store, make_engine, migrate
from tests.daemon_process import DaemonProcess
from tests.helpers import (
    MODEL,
    T0,
    killed_if_left,
    produce_events,
    replay_settings,
    wait_until,
    windowed_traffic,
    write_reference,
)
from tests.stored_state import count_events

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def daemon_config(broker: EmbeddedBroker, topic: str, database_url: str, reference: Path) -> dict[str, Any]:
    return replay_settings(
        database_url,
        broker.bootstrap_servers,
        topic,
        models={
            MODEL: {
                "window": "60s",
                "allowed_lateness": "20s",
                "min_events": 30,
                "reference": {"source": "file", "path": str(reference)},
                "detectors": {"vae_anomaly": {"max_epochs": 80}},
            }
        },
    )


def produce(broker: EmbeddedBroker, topic: str, events: list[dict[str, Any]], partitions: int = 4) -> None:
    # Spread one model over every partition, the hard case for offsets and event-time order.
    produce_events(broker.bootstrap_servers, topic, events, lambda i, _: i % partitions, linger_ms=5)


def produce_raw(broker: EmbeddedBroker, topic: str, values: list[bytes], partition: int = 2) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for value in values:
        producer.send(topic, value=value, key=MODEL.encode(), partition=partition)
    producer.flush()
    producer.close()


def stored(database_url: str) -> Store:
    engine = make_engine(database_url)
    migrate(engine)
    return Store(engine)


def test_four_partitions_to_stored_window_results(
    broker: EmbeddedBroker, database_url: str, tmp_path: Path
) -> None:
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 4)
    reference = write_reference(tmp_path / "reference.jsonl")
    daemon = DaemonProcess(daemon_config(broker, topic, database_url, reference), tmp_path).start()
    with killed_if_left(daemon):
        daemon.wait_for("assigned partitions", timeout=120)
        plan = [False, True, False]
        produced = 0
        for index, corrupt in enumerate(plan):
            events = windowed_traffic([corrupt], start=T0 + 60 * index, prefix=f"k{index}-")
            if index == 1:
                # Bad messages in the middle of the stream: dead-lettered, and intake goes on.
                produce_raw(
                    broker, topic, [b"{not json", json.dumps({**events[0], "features": "x"}).encode()]
                )
            produce(broker, topic, events)
            produced += len(events)
            time.sleep(0.5)
        # Events of a later window move the event-time watermark past the last window's end + lateness.
        produce(broker, topic, windowed_traffic([False], per_window=8, start=T0 + 60 * 4, prefix="tail-"))
        store = stored(database_url)
        wait_until(
            lambda: len(store.window_results(model=MODEL, detector="vae_anomaly")) >= len(plan),
            180,
            "three stored windows",
        )
        assert daemon.terminate() == 0
    results = sorted(store.window_results(model=MODEL, detector="vae_anomaly"), key=lambda r: r.window_start)
    assert [r.status for r in results[:3]] == ["ok", "alert", "ok"], daemon.log
    assert sum(r.n_events for r in results[:3]) == produced
    assert "stopped" in daemon.log and "Traceback" not in daemon.log
    letters = store.dead_letters()
    assert sorted(d.reason.split(":")[0] for d in letters) == [
        "field 'features' must be an object, got string",
        "invalid JSON",
    ]
    assert all(d.topic == topic and d.partition == 2 and d.offset is not None for d in letters)
    assert b"{not json" in [d.raw for d in letters]


def test_sigkill_mid_window_loses_nothing_and_stores_each_window_once(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 4)
    database_url = f"sqlite:///{tmp_path / 'crash.db'}"
    config = daemon_config(broker, topic, database_url, write_reference(tmp_path / "reference.jsonl"))
    windows = [
        windowed_traffic([corrupt], start=T0 + 60 * i, prefix=f"c{i}-")
        for i, corrupt in enumerate([False, False, True, False])
    ]

    first = DaemonProcess(config, tmp_path).start()
    try:
        first.wait_for("assigned partitions", timeout=120)
        produce(broker, topic, windows[0])
        time.sleep(0.5)
        produce(broker, topic, windows[1])
        produce(broker, topic, windows[2][:120])  # the third window is half produced ...
        store = stored(database_url)
        wait_until(lambda: len(store.window_results(model=MODEL)) >= 1, 120, "the first window to be stored")
        time.sleep(1.0)
    finally:
        first.kill()  # ... when the daemon dies without any chance to clean up
    assert "stopped" not in first.log

    second = DaemonProcess(config, tmp_path).start()
    with killed_if_left(second):
        second.wait_for("assigned partitions", timeout=120)
        produce(broker, topic, windows[2][120:])
        time.sleep(0.5)
        produce(broker, topic, windows[3])
        produce(broker, topic, windowed_traffic([False], per_window=8, start=T0 + 60 * 6, prefix="tail-"))
        wait_until(
            lambda: len(store.window_results(model=MODEL, detector="vae_anomaly")) >= 4,
            180,
            "four stored windows",
        )
        assert second.terminate() == 0
    assert "restored from stored state" in second.log  # the restart did not refit

    results = sorted(store.window_results(model=MODEL, detector="vae_anomaly"), key=lambda r: r.window_start)
    starts = [r.window_start.timestamp() for r in results[:4]]
    assert starts == [T0 + 60 * i for i in range(4)]  # each window once
    assert [r.status for r in results[:4]] == ["ok", "ok", "alert", "ok"]
    produced = sum(len(w) for w in windows)
    assert sum(w.n_events for w in store.windows(MODEL) if w.start.timestamp() < T0 + 240) == produced
    assert count_events(store, MODEL) >= produced
