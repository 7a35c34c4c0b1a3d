"""End-to-end latency: from producing the last event of a corrupted window to receiving its webhook.

    .venv/bin/python -m bench.perf_latency            # 3 corrupted windows (3 models), about 2 minutes
    .venv/bin/python -m bench.perf_latency --quick    # 1 window

A real daemon (``monitor.daemon.Daemon``, in-process, on its own thread) reads the embedded broker and writes
to a SQLite file, with all 12 default detectors and a webhook subscription pointing at a local HTTP receiver.
Each of ``--windows`` models (own reference file: the digits reference) receives one window of corrupted
digits traffic (``live_events(..., corrupt=True)``: 8 features off by 4 standard deviations), produced at
``--rate`` events per second with event time = the wall clock at send, from one window boundary to the
next. ``feature_drift`` (among others) fails with p far below ``immediate_p``, so the alert fires on that
window without waiting for the persistence rule.

Timing (wall clock, one machine):

* produce: when the last event of the window was handed to the producer (then flushed);
* closed: the scheduler's close of the window started (stored time minus the pipeline's own measured
  close duration, ``window_seconds``);
* stored: the window and its 12 results are in the database (``on_window`` callback);
* enqueued: the alert engine's tick created the webhook delivery (``created_at`` of the delivery);
* received: the receiver got the POST.

The window's close waits for ``end + allowed_lateness`` and then for the next scheduler tick; that part is
configuration, not work: the run uses ``--window``, ``--lateness`` and the default tick (1 s) and delivery
poll interval (1 s), and the expected wait under the defaults (60 s windows, 10 s lateness) is stated next
to the measurement.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import benchmark_parser, load_average, machine, reference_files
from monitor.broker import EmbeddedBroker, create_topic, free_port
from monitor.config import AppConfig
from monitor.daemon import Daemon
from monitor.demo.data import live_events
from monitor.pipeline import ClosedWindow
from storage import AlertStore

TOPIC = "perf-latency"


class Receiver:
    """A webhook receiver on 127.0.0.1 that notes when each POST arrived and for which model."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, float] = {}  # model -> first receipt (wall clock)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                try:
                    models = _models_in(json.loads(body))
                except ValueError:
                    models = set()
                with receiver._lock:
                    for model in models:
                        receiver.received.setdefault(model, arrived)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _models_in(payload: Any) -> set[str]:
    """Every string under a ``model`` key anywhere in the payload (the webhook format may nest alerts)."""
    found: set[str] = set()
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "model" and isinstance(value, str):
                found.add(value)
            else:
                found |= _models_in(value)
    elif isinstance(payload, list):
        for item in payload:
            found |= _models_in(item)
    return found


def daemon_config(
    workdir: Path, servers: str, models: list[str], window: float, lateness: float, port: int
) -> AppConfig:
    references = reference_files(workdir, models)
    model_settings = {}
    for model in models:
        model_settings[model] = {
            "window": window,
            "allowed_lateness": lateness,
            "reference": {"source": "file", "path": str(references[model])},
        }
    return AppConfig.model_validate(
        {
            "database_url": f"sqlite:///{workdir / 'latency.db'}",
            "kafka": {
                "bootstrap_servers": servers,
                "topic": TOPIC,
                "group_id": f"perf-latency-{time.time_ns()}",
            },
            "models": model_settings,
            "api": {"enabled": False},
            "alerting": {
                "subscriptions": [{"name": "bench", "url": f"http://127.0.0.1:{port}/hook"}],
                # Webhooks to loopback are refused by default (SSRF guard); the receiver is on loopback.
                "delivery": {"allowed_networks": ["127.0.0.1/32"]},
            },
        }
    )


@dataclass(frozen=True)
class Measurement:
    model: str
    produced: float  # the last event of the window handed to the producer
    closed: float
    stored: float
    enqueued: float
    received: float
    window_end: float

    def phases(self) -> dict[str, float]:
        return {
            "window close wait (end - last event + lateness + tick)": self.closed - self.produced,
            "evaluation + storage (12 detectors)": self.stored - self.closed,
            "alert engine tick": self.enqueued - self.stored,
            "delivery (poll + POST)": self.received - self.enqueued,
            "total": self.received - self.produced,
        }


def run(windows: int, window: float, lateness: float, rate: float, timeout: float) -> list[Measurement]:
    from kafka import KafkaProducer

    models = [f"latency-{i}" for i in range(windows)]
    stored_at: dict[str, tuple[float, ClosedWindow]] = {}

    def on_window(closed: ClosedWindow) -> None:
        stored_at.setdefault(closed.stored.model, (time.time(), closed))

    receiver = Receiver().start()
    with tempfile.TemporaryDirectory(prefix="perf-latency-") as tmp, EmbeddedBroker() as broker:
        create_topic(broker.bootstrap_servers, TOPIC, 1)
        config = daemon_config(Path(tmp), broker.bootstrap_servers, models, window, lateness, receiver.port)
        daemon = Daemon(config, on_window=on_window)
        runner = threading.Thread(target=daemon.run, name="sentinel-daemon")
        started = time.time()
        runner.start()
        try:
            while not (
                daemon.pipeline and daemon.intake and daemon.pipeline.ready and daemon.intake.assigned
            ):
                if time.time() - started > timeout or not runner.is_alive():
                    raise RuntimeError("the daemon did not get ready")
                time.sleep(0.2)
            print(
                f"daemon ready in {time.time() - started:.1f} s (12 detectors fitted per model)", flush=True
            )
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            last_sent: dict[str, tuple[float, float]] = {}
            for index, model in enumerate(models):
                boundary = (int(time.time() / window) + 1) * window
                time.sleep(max(0.0, boundary - time.time()))
                n = int(window * rate)
                events = live_events(
                    model,
                    n,
                    start=boundary,
                    spacing=1 / rate,
                    id_prefix=f"{model}-",
                    corrupt=True,
                    seed=index,
                )
                for i, event in enumerate(events):
                    time.sleep(max(0.0, boundary + i / rate - time.time()))
                    now = time.time()
                    if now >= boundary + window:
                        break  # fell behind: the rest would land in the next window
                    event["timestamp"] = now
                    producer.send(TOPIC, key=model.encode(), value=json.dumps(event).encode())
                    last_sent[model] = (now, boundary + window)
                producer.flush()
            producer.close()
            deadline = time.time() + timeout
            while time.time() < deadline and not all(m in receiver.received for m in models):
                time.sleep(0.05)
            missing = [m for m in models if m not in receiver.received]
            if missing:
                raise RuntimeError(f"no webhook for {missing} within {timeout:.0f} s")
            assert daemon.pipeline is not None
            close_sums = {
                label: snap.total for label, snap in daemon.pipeline.window_seconds.snapshot().items()
            }
            alerts = AlertStore(daemon.pipeline.store.engine)
            created: dict[str, float] = {}
            for delivery in alerts.deliveries():
                alert = [a for a in alerts.list_alerts(limit=1000) if a.id == delivery.alert_id]
                if delivery.channel == "webhook" and alert:
                    created.setdefault(alert[0].model, delivery.created_at.timestamp())
        finally:
            daemon.request_stop()
            runner.join(timeout=120)
            receiver.stop()
    results = []
    for model in models:
        stored, _ = stored_at[model]
        # One window per model: the model's close-duration sum is that window's close.
        closed = stored - close_sums[model]
        produced, end = last_sent[model]
        results.append(
            Measurement(model, produced, closed, stored, created[model], receiver.received[model], end)
        )
    return results


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--windows", type=int, default=3, help="corrupted windows, one per model")
    parser.add_argument("--window", type=float, default=10.0, help="window length, seconds")
    parser.add_argument("--lateness", type=float, default=2.0, help="allowed lateness, seconds")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each stage")
    parser.add_argument("--quick", action="store_true", help="one window")
    args = parser.parse_args()
    if args.quick:
        args.windows = 1
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # "job skipped: maximum number of running instances": ticks that come while the start-up fit runs.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    print(machine(), flush=True)
    results = run(args.windows, args.window, args.lateness, args.rate, args.timeout)
    names = list(results[0].phases())
    print()
    print("| phase | " + " | ".join(r.model for r in results) + " | median |")
    print("|---|" + "---:|" * (len(results) + 1))
    for name in names:
        values = [r.phases()[name] for r in results]
        print(
            f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {statistics.median(values):.2f} |"
        )
    tail = statistics.median(r.window_end - r.produced for r in results)
    print(
        f"\nwindow {args.window:.0f} s, allowed lateness {args.lateness:.0f} s, tick 1 s, delivery poll 1 s, "
        f"{args.rate:.0f} events/s; the last event was produced {tail:.2f} s before its window's end."
    )
    processing = statistics.median(r.received - r.closed for r in results)
    print(
        f"Work after the close starts (evaluation, storage, alert tick, delivery): {processing:.2f} s "
        "median. Under the defaults (lateness 10 s) the close wait is about 10-11 s after a window's end, "
        f"so an alert arrives about {10 + 0.5 + processing:.0f} s after the end of the window that caused it."
    )
    print(load_average())


if __name__ == "__main__":
    main()
