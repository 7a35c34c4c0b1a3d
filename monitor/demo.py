"""``sentinel demo``: the main job on embedded defaults.

Starts the embedded Kafka-compatible broker and a SQLite database, trains a classifier on scikit-learn's
digits, streams its predictions to a 4-partition topic (clean traffic, then corrupted inputs, then clean
again, plus a few malformed messages), runs the daemon on it and prints each window result as it is stored.
Ends with a table of what was injected and what was flagged. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from monitor.broker import EmbeddedBroker, create_topic
from monitor.cli import format_window
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.demo_data import live_events, reference_events
from monitor.logs import configure_logging
from monitor.pipeline import ClosedWindow

MODEL = "digits-classifier"
TOPIC = "predictions"
BOLD, RED, GREEN, DIM, RESET = "\033[1m", "\033[31m", "\033[32m", "\033[2m", "\033[0m"


@dataclass(frozen=True)
class Phase:
    name: str
    windows: int
    corrupt: bool


def _color(text: str, code: str) -> str:
    return f"{code}{text}{RESET}" if sys.stdout.isatty() else text


def run_demo(
    *, fast: bool = False, bootstrap_servers: str | None = None, database_url: str | None = None
) -> int:
    configure_logging("WARNING")
    window = 4.0 if fast else 10.0
    rate = 80.0 if fast else 60.0  # events per second
    phases = [Phase("clean", 3, False), Phase("corrupted inputs", 2, True), Phase("clean again", 2, False)]
    workdir = Path("sentinel-demo")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir()
    reference_path = workdir / "reference.jsonl"
    reference_path.write_text("\n".join(json.dumps(e) for e in reference_events(MODEL)) + "\n")

    broker = None
    if bootstrap_servers is None:
        print("starting the embedded Kafka-compatible broker (Tansu) ...")
        broker = EmbeddedBroker().start()
        bootstrap_servers = broker.bootstrap_servers
    create_topic(bootstrap_servers, TOPIC, 4)
    database_url = database_url or f"sqlite:///{workdir / 'sentinel.db'}"
    config = load_config(
        environ={
            "SENTINEL_DATABASE_URL": database_url,
            "SENTINEL_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
            "SENTINEL_KAFKA__TOPIC": TOPIC,
            "SENTINEL_KAFKA__GROUP_ID": f"sentinel-demo-{int(time.time())}",
            "SENTINEL_TICK_INTERVAL": "0.5",
            "SENTINEL_MODELS__" + MODEL + "__WINDOW": str(window),
            "SENTINEL_MODELS__" + MODEL + "__ALLOWED_LATENESS": "1",
            "SENTINEL_MODELS__" + MODEL + "__REFERENCE__SOURCE": "file",
            "SENTINEL_MODELS__" + MODEL + "__REFERENCE__PATH": str(reference_path),
        }
    )
    injected: list[tuple[float, float, str, bool]] = []  # (from, to, phase, corrupt)
    stored: list[ClosedWindow] = []

    def show(closed: ClosedWindow) -> None:
        stored.append(closed)
        line = format_window(closed)
        flagged = any(r.alerting for r in closed.results)
        print(_color("ALERT  " + line, RED + BOLD) if flagged else _color("ok     " + line, GREEN))

    daemon = Daemon(config, on_window=show)
    runner = threading.Thread(target=daemon.run, name="sentinel-daemon")
    print(f"database: {database_url}\nbroker:   {bootstrap_servers}, topic {TOPIC!r} (4 partitions)")
    print(
        f"model {MODEL!r}: reference of {len(reference_events(MODEL))} digits predictions; "
        f"windows of {window:.0f} s; the VAE is fitted at start (a few seconds)\n"
    )
    runner.start()
    try:
        _wait_ready(daemon)
        producer = _producer(bootstrap_servers)
        # Start on a window boundary so each phase fills whole windows.
        start = (int(time.time() / window) + 1) * window
        time.sleep(max(0.0, start - time.time()))
        for sequence, phase in enumerate(phases):
            banner = f"--- {time.strftime('%H:%M:%S', time.gmtime())} producing: {phase.name}"
            print(_color(f"{banner} ({phase.windows} windows of {window:.0f} s)", DIM))
            began = time.time()
            n = int(phase.windows * window * rate)
            events = live_events(
                MODEL,
                n,
                start=began,
                spacing=1.0 / rate,
                id_prefix=f"live-{sequence}-",
                corrupt=phase.corrupt,
                seed=sequence,
            )
            for i, event in enumerate(events):
                due = began + i / rate
                time.sleep(max(0.0, due - time.time()))
                event["timestamp"] = time.time()
                producer.send(TOPIC, key=MODEL.encode(), value=json.dumps(event).encode())
                if i == n // 2 and phase.corrupt:
                    for bad in (b"{not json", b'{"model": "digits-classifier", "features": {}}'):
                        producer.send(TOPIC, key=MODEL.encode(), value=bad)
            producer.flush()
            injected.append((began, time.time(), phase.name, phase.corrupt))
        producer.close()
        print(_color("--- producing done; waiting for the last windows to close", DIM))
        deadline = time.time() + window + 5
        while time.time() < deadline:
            time.sleep(0.5)
        _summary(stored, injected, daemon)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping")
        return 130
    finally:
        daemon.request_stop()
        runner.join(timeout=60)
        if broker is not None:
            broker.stop()


def _wait_ready(daemon: Daemon) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        pipeline, intake = daemon.pipeline, daemon.intake
        if pipeline is not None and intake is not None and pipeline.ready and intake.assigned:
            status = pipeline.status().get(MODEL, {})
            print(f"daemon ready: model {MODEL} {status.get('phase')}, partitions {sorted(intake.assigned)}")
            return
        if daemon.state.value == "crashed":
            raise SystemExit("the daemon crashed during start-up; see the log above")
        time.sleep(0.2)
    raise SystemExit("the daemon did not become ready within 300 s")


def _producer(bootstrap_servers: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), linger_ms=5)


def _summary(
    stored: list[ClosedWindow], injected: list[tuple[float, float, str, bool]], daemon: Daemon
) -> None:
    print(f"\n{BOLD}Summary{RESET}")
    print(f"{'phase':<18} {'windows':>7} {'flagged':>7}")
    false_alarms = 0
    for began, ended, name, corrupt in injected:
        inside = [
            c
            for c in stored
            if c.stored.start.timestamp() >= began - 0.5 and c.stored.end.timestamp() <= ended + 0.5
        ]
        flagged = sum(any(r.alerting for r in c.results) for c in inside)
        if not corrupt:
            false_alarms += flagged
        verdict = (
            ("caught" if flagged else "MISSED")
            if corrupt
            else ("no false alarm" if not flagged else "false alarm")
        )
        print(f"{name:<18} {len(inside):>7} {flagged:>7}   {verdict}")
    pipeline = daemon.pipeline
    if pipeline is not None:
        c = pipeline.counters
        print(
            f"\nmessages: {c['consumed']} consumed, {c['accepted']} accepted, {c['rejected']} dead-lettered "
            f"(malformed messages kept with their reason), {c['duplicates']} duplicates"
        )
    print(f"false alarms on clean windows: {false_alarms}")
    if pipeline is not None:
        from storage import AlertStore

        alerts = AlertStore(pipeline.store.engine).list_alerts(model=MODEL, limit=50)
        print(f"\nalerts opened by the alert engine ({len(alerts)}; `sentinel alerts --db ...` lists them):")
        for alert in sorted(alerts, key=lambda a: a.first_seen):
            print(
                f"  {alert.state:<9} {alert.severity:<9} {alert.detector:<14} {alert.threat:<11} "
                f"count={alert.count}  {alert.title}"
            )
    logging.getLogger("sentinel").info("demo finished")
