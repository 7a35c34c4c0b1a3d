"""``sentinel demo``: the main job on embedded defaults, a digits classifier under a scripted attack.

Starts the embedded Kafka-compatible broker and a SQLite database in ``./sentinel-demo/`` (or uses
``--bootstrap-servers`` and ``--db``), trains a classifier on scikit-learn's digits and runs the daemon on its
prediction logs with all twelve detectors, the alert engine, a webhook subscription and the HTTP API with the
dashboard. Twenty benign clients (``app-01`` .. ``app-20``) send natural traffic throughout, each input at
most once per client, with a ``region`` group; on top of it the timeline plays, one phase after another
(:func:`timeline`): clean traffic, drift (a broken feature pipeline), a poisoned training feed, model
extraction, probing, evasion, a backdoor trigger, one region's outcomes forced, and clean traffic again.

The terminal shows each phase as it starts, each window as it closes, each alert as it fires and resolves
(with its key evidence) and each webhook delivery a local receiver gets (its HMAC signature checked). The
summary says, per injected attack, whether the detector built for it caught it, when, and with which alert,
and lists the false alarms: alerts opened on the clean phases and alerts naming a benign client. It is also
written to ``sentinel-demo/summary.json``. The exit code is 0 whatever was caught (it is a demo); Ctrl-C stops
everything cleanly (130).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.alerting import AlertingSettings, DeliverySettings
from monitor.broker import EmbeddedBroker, create_topic, free_port
from monitor.config import AppConfig
from monitor.daemon import Daemon
from monitor.demo.alert_watcher import AlertWatcher
from monitor.demo.assessment import PhaseSpan, assess
from monitor.demo.console import BOLD, DIM, YELLOW, Console, window_line
from monitor.demo.data import REGIONS, reference_events
from monitor.demo.summary import RunRecord, report
from monitor.demo.timeline import (
    BENIGN_CLIENTS,
    BENIGN_PER_WINDOW,
    DEFAULT,
    FAST,
    MODEL,
    Pace,
    Phase,
    TrafficScript,
    WindowPlan,
    stamp,
    timeline,
)
from monitor.demo.webhook_receiver import WebhookReceiver
from monitor.logs import configure_logging
from monitor.pipeline import ClosedWindow
from storage import AlertStore

TOPIC = "predictions"
WORKDIR = Path("sentinel-demo")
WEBHOOK_SECRET = "sentinel-demo-secret"  # signs the deliveries to the local receiver; a demo value only


def demo_config(
    *,
    database_url: str,
    bootstrap_servers: str,
    reference_path: Path,
    window: float,
    api_port: int,
    webhook_url: str,
) -> AppConfig:
    """The daemon's configuration: every default detector and the production alarm rules (2 of 3 windows,
    or at once below p = 1e-6; resolve after 3 clean windows), plus the demo's webhook and API port."""
    delivery: dict[str, Any] = {"poll_interval": 0.5, "timeout": 5}
    alerting: dict[str, Any] = {
        "delivery": delivery,
        "subscriptions": [{"name": "demo-receiver", "url": webhook_url, "secret": WEBHOOK_SECRET}],
    }
    if "allowed_networks" in DeliverySettings.model_fields:
        # The SSRF guard refuses loopback webhooks by default; the demo's receiver is on this machine.
        delivery["allowed_networks"] = ["127.0.0.1/32"]
    if "secret_key" in AlertingSettings.model_fields:
        # Webhook secrets are stored sealed; a key of this run's own (PostgreSQL refuses secrets without one).
        alerting["secret_key"] = base64.b64encode(os.urandom(32)).decode()
    return AppConfig.model_validate(
        {
            "database_url": database_url,
            "kafka": {
                "bootstrap_servers": bootstrap_servers,
                "topic": TOPIC,
                "group_id": f"sentinel-demo-{int(time.time())}",
            },
            "tick_interval": 0.5,
            "models": {
                MODEL: {
                    "window": window,
                    "allowed_lateness": 1,
                    "reference": {"source": "file", "path": str(reference_path)},
                }
            },
            "alerting": alerting,
            "api": {"host": "127.0.0.1", "port": api_port},
        }
    )


def run_demo(
    *, fast: bool = False, bootstrap_servers: str | None = None, database_url: str | None = None
) -> int:
    """Run the demo in ``./sentinel-demo``; returns the exit code (0, or 130 when interrupted)."""
    configure_logging("WARNING")
    # kafka-python logs its own slow polls as warnings; they say nothing about the demo.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    console = Console()
    pace = FAST if fast else DEFAULT
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    WORKDIR.mkdir()
    reference_path = WORKDIR / "reference.jsonl"
    reference = reference_events(MODEL)
    reference_path.write_text("\n".join(json.dumps(e) for e in reference) + "\n")
    script = TrafficScript(MODEL, pace)
    phases = timeline(pace, script.target)

    broker = None
    if bootstrap_servers is None:
        console.plain("starting the embedded Kafka-compatible broker (Tansu) ...")
        broker = EmbeddedBroker().start()
        bootstrap_servers = broker.bootstrap_servers
    receiver = WebhookReceiver(WEBHOOK_SECRET, console)
    receiver.start()
    daemon = None
    runner = None
    try:
        create_topic(bootstrap_servers, TOPIC, 4)
        database_url = database_url or f"sqlite:///{WORKDIR / 'sentinel.db'}"
        api_port = free_port()
        config = demo_config(
            database_url=database_url,
            bootstrap_servers=bootstrap_servers,
            reference_path=reference_path,
            window=pace.window,
            api_port=api_port,
            webhook_url=receiver.url,
        )
        dashboard = f"http://127.0.0.1:{api_port}/dashboard"
        _introduce(
            console, phases, pace, dashboard, database_url, bootstrap_servers, receiver.url, len(reference)
        )

        def show(closed: ClosedWindow) -> None:
            text, flagged = window_line(closed)
            console.line(text, YELLOW if flagged else DIM)

        daemon = Daemon(config, on_window=show)
        runner = threading.Thread(target=daemon.run, name="sentinel-daemon")
        runner.start()
        plans = script.plans(phases)  # built while the detectors fit
        _wait_ready(daemon, console)
        assert daemon.pipeline is not None
        watcher = AlertWatcher(AlertStore(daemon.pipeline.store.engine), MODEL, console)
        watcher.start()
        spans, sent, lag = _play(console, bootstrap_servers, phases, plans, pace.window)
        console.line(f"producing done ({sent} events); waiting for the last windows to close", DIM)
        time.sleep(pace.window + 3.0)
        daemon.request_stop()
        runner.join(timeout=60)
        watcher.stop()
        time.sleep(1.0)  # the delivery worker's last sends, made during the daemon's stop
        alerts = list(watcher.seen.values())
        assessment = assess(spans, alerts, pace.window, BENIGN_CLIENTS)
        record = RunRecord(
            pace=pace,
            spans=spans,
            alerts=alerts,
            deliveries=receiver.deliveries,
            counters=dict(daemon.pipeline.counters) if daemon.pipeline is not None else {},
            repeating_clients=sorted(script.benign.wrapped),
            lag=lag,
            dashboard=dashboard,
        )
        report(console, assessment, record, WORKDIR)
        return 0
    except KeyboardInterrupt:
        console.plain("\ninterrupted: stopping")
        return 130
    finally:
        if daemon is not None:
            daemon.request_stop()
        if runner is not None:
            runner.join(timeout=60)
        receiver.stop()
        if broker is not None:
            broker.stop()


def _introduce(
    console: Console,
    phases: Sequence[Phase],
    pace: Pace,
    dashboard: str,
    database_url: str,
    bootstrap_servers: str,
    webhook_url: str,
    n_reference: int,
) -> None:
    console.plain(f"dashboard:  {dashboard}", BOLD)
    console.plain(f"database:   {database_url}")
    console.plain(f"broker:     {bootstrap_servers}, topic {TOPIC!r} (4 partitions)")
    console.plain(
        f"webhook:    {webhook_url} (a local receiver; deliveries are signed, each signature checked)"
    )
    console.plain(
        f"model:      {MODEL!r}, a logistic regression on scikit-learn's digits; reference of {n_reference} "
        "predictions; all 12 detectors (three fit a VAE at start: a few seconds)"
    )
    console.plain(
        "alert rule: the production defaults: a detector alerts when 2 of its last 3 windows fail, at once "
        "when p < 1e-6; an alert resolves after 3 clean windows of its detector"
    )
    console.plain(
        f"traffic:    {len(BENIGN_CLIENTS)} benign clients {BENIGN_CLIENTS[0]}..{BENIGN_CLIENTS[-1]}, "
        f"{BENIGN_PER_WINDOW} inputs each per {pace.window:.0f} s window (no input twice per client), "
        f"groups region in {', '.join(REGIONS)}"
    )
    console.plain("timeline:")
    for number, phase in enumerate(phases, 1):
        expected = f"  -> {phase.detector}" if phase.detector else ""
        console.plain(f"  {number}. {phase.name:<24} {phase.windows} windows  {phase.story}{expected}", DIM)
    console.plain()


def _wait_ready(daemon: Daemon, console: Console) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        pipeline, intake = daemon.pipeline, daemon.intake
        if pipeline is not None and intake is not None and pipeline.ready and intake.assigned:
            console.plain(f"daemon ready: detectors fitted, partitions {len(intake.assigned)} assigned\n")
            return
        if daemon.state.value == "crashed":
            raise SystemExit("the daemon crashed during start-up; see the log above")
        time.sleep(0.2)
    raise SystemExit("the daemon did not become ready within 300 s")


def _producer(bootstrap_servers: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), linger_ms=5)


def _play(
    console: Console,
    bootstrap_servers: str,
    phases: Sequence[Phase],
    plans: Sequence[WindowPlan],
    window: float,
) -> tuple[list[PhaseSpan], int, float]:
    """Send every window's events at their times (event time = wall time); returns the phases' spans, the
    events sent and the largest lag behind the schedule."""
    producer = _producer(bootstrap_servers)
    # Start on a window boundary, so that each phase fills whole windows.
    start = (int(time.time() / window) + 1) * window
    time.sleep(max(0.0, start - time.time()))
    console.started = start
    spans: list[PhaseSpan] = []
    sent, lag = 0, 0.0
    try:
        for number, plan in enumerate(plans):
            begin = start + number * window
            phase = phases[plan.phase]
            if plan.index == 0:
                spans.append(PhaseSpan(phase, begin, begin + phase.windows * window, number))
                expected = f" (expected: {phase.detector})" if phase.detector else ""
                console.line(
                    f"--- phase {plan.phase + 1}/{len(phases)} {phase.name}: {phase.story}{expected}", BOLD
                )
            n = len(plan.events)
            for i, event in enumerate(plan.events):
                due = begin + i * window / n
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                    now = due
                lag = max(lag, now - due)
                # Event time is the sending time; a late sender keeps it inside its window (the window
                # closes 1 s after its end), so each event counts in the phase it belongs to.
                producer.send(
                    TOPIC,
                    key=MODEL.encode(),
                    value=json.dumps(stamp(event, min(now, begin + window - 0.001))).encode(),
                )
                if plan.malformed and i == n // 2:
                    for bad in plan.malformed:
                        producer.send(TOPIC, key=MODEL.encode(), value=bad)
            sent += n
            producer.flush()
    finally:
        producer.close()
    return spans, sent, lag
