"""Load soak (issue 9): 20 models at a sustained rate through the real `sentinel run`, broker and PostgreSQL.

Events carry wall-clock timestamps and windows close on the wall clock, as in production. While the producer
holds the rate, the test samples the daemon's resident memory (``/proc/<pid>/status``) and its consumer lag
(``sentinel_consumer_lag`` on ``/metrics``). It asserts that memory is flat after warm-up, that the lag stays
bounded (intake keeps up), that windows keep being stored for every model, and that the log holds no error.

Length: ``SOAK_SECONDS`` (45 s), or 10 minutes with ``SENTINEL_LONG_FAULTS=1``; the rate is
``SENTINEL_SOAK_RATE`` events/s (default :data:`RATE`, below the highest rate this machine held, recorded
in docs/reliability.md). The figures of each run are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.broker import EmbeddedBroker, create_topic, free_port
from monitor.demo.data import live_events
from storage import Store, make_engine, migrate
from tests.daemon_process import DaemonProcess
from tests.faults import lag_from_metrics, readiness, rss_kib
from tests.helpers import file_references, kafka_settings, log_tail, only_detectors, wait_until
from tests.stored_state import count_events

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]

LONG = os.environ.get("SENTINEL_LONG_FAULTS") == "1"
SOAK_SECONDS = 600.0 if LONG else 45.0
RATE = float(os.environ.get("SENTINEL_SOAK_RATE", "400"))  # events per second, all models together
MODELS = [f"soak-{i:02d}" for i in range(20)]
PARTITIONS = 4
WINDOW = 10.0
SAMPLE_EVERY = 2.0


def soak_config(
    bootstrap: str, topic: str, database_url: str, tmp_path: Path, api_port: int
) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "tick_interval": "0.5s",
        "kafka": kafka_settings(bootstrap, topic),
        "api": {"port": api_port},
        "defaults": {
            "window": f"{WINDOW:.0f}s",
            "allowed_lateness": "2s",
            "min_events": 30,
            # The VAE (the costliest detector per event) and two cheap ones, on every model.
            "detectors": only_detectors(vae_anomaly={"max_epochs": 40}, output_drift={}, feature_drift={}),
        },
        "models": file_references(tmp_path, MODELS),
    }


class Producer(threading.Thread):
    """Produce ``rate`` events/s spread over the models, stamped with the wall clock, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144)
        self.topic = topic
        self.rate = rate
        # Real digits traffic per model, replayed with fresh ids and times.
        self.pool = {
            m: live_events(m, 400, start=0.0, spacing=0.01, id_prefix=f"{m}-", seed=i)
            for i, m in enumerate(MODELS)
        }
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.is_set():
            due = int((time.monotonic() - started) * self.rate)
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            while self.sent < due:
                model = MODELS[self.sent % len(MODELS)]
                pool = self.pool[model]
                event = {**pool[self.sent % len(pool)], "event_id": f"e{self.sent}", "timestamp": stamp}
                self.producer.send(
                    self.topic,
                    value=json.dumps(event).encode(),
                    key=model.encode(),
                    partition=MODELS.index(model) % PARTITIONS,
                )
                self.sent += 1
            time.sleep(0.05)
        self.producer.flush()
        self.producer.close()


@pytest.mark.timeout(SOAK_SECONDS + 400)  # fitting 20 models, the soak, the drain and the stop
def test_twenty_models_at_a_sustained_rate_keep_memory_flat_and_lag_bounded(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, PARTITIONS)
    api_port = free_port()
    daemon = DaemonProcess(
        soak_config(broker.bootstrap_servers, topic, postgres_url, tmp_path, api_port), tmp_path
    )
    daemon.start()
    samples: list[tuple[float, int, int | None]] = []  # (seconds into the soak, RSS KiB, lag)
    producer = Producer(broker.bootstrap_servers, topic, RATE)
    try:
        wait_until(lambda: readiness(api_port)[0] == 200, 300, "20 fitted models", log_tail(daemon))
        assert daemon.process is not None
        producer.start()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            samples.append((elapsed, rss_kib(daemon.process.pid), lag_from_metrics(api_port)))
            time.sleep(SAMPLE_EVERY)
        producer.halt.set()
        producer.join(timeout=60)
        held = producer.sent / (time.monotonic() - started)
        # Intake catches up once the producer stops: the lag drains.
        wait_until(lambda: (lag_from_metrics(api_port) or 0) == 0, 60, "the lag to drain", log_tail(daemon))
        assert daemon.terminate() == 0, daemon.log[-4000:]
    finally:
        producer.halt.set()
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()

    warm = [s for s in samples if s[0] >= SOAK_SECONDS / 3]
    rss = [s[1] for s in warm]
    lags = [s[2] or 0 for s in warm]
    half = len(rss) // 2
    early, late = statistics.median(rss[:half]), statistics.median(rss[half:])
    print(
        f"\nsoak: {SOAK_SECONDS:.0f} s, {len(MODELS)} models, rate held {held:.0f}/s (target {RATE:.0f}/s); "
        f"RSS after warm-up {min(rss) / 1024:.0f}-{max(rss) / 1024:.0f} MiB (median {early / 1024:.0f} then "
        f"{late / 1024:.0f} MiB); consumer lag max {max(lags)}, median {statistics.median(lags):.0f}"
    )
    assert held >= 0.95 * RATE, f"the producer held only {held:.0f}/s"
    # Memory flat: the second half of the warm soak is within 5 % (or 20 MiB) of the first half.
    assert late - early <= max(0.05 * early, 20 * 1024), (early, late, samples)
    # Lag bounded: never more than two windows' worth of events behind.
    assert max(lags) <= 2 * WINDOW * RATE, samples
    # Windows kept closing for every model throughout (wall-clock windows of WINDOW seconds).
    engine = make_engine(postgres_url)
    migrate(engine)
    store = Store(engine)
    expected_windows = int(SOAK_SECONDS / WINDOW) - 2
    assert all(len(store.windows(m)) >= expected_windows for m in MODELS), {
        m: len(store.windows(m)) for m in MODELS
    }
    assert sum(count_events(store, m) for m in MODELS) <= producer.sent
    engine.dispose()
    errors = [line for line in daemon.lines if " ERROR " in line or "Traceback" in line or "CRITICAL" in line]
    assert not errors, errors[:20]
