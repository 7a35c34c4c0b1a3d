"""Alerting end to end: the real `sentinel run` process, the real broker, a real webhook receiver, SIGKILL.

The receiver is down when the alert fires, so its delivery stays pending (refused connections, recorded). The
daemon is then killed without warning, the receiver comes up, and a second daemon delivers the pending
notification (with the same delivery id), then the resolution. Each notification is acknowledged once, every
request carries a valid signature, and the alerts topic holds both notifications keyed by fingerprint.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from monitor.alerting import verify_signature
from monitor.broker import EmbeddedBroker, create_topic, free_port
from storage import AlertStore, make_engine, migrate
from tests.daemon_process import DaemonProcess
from tests.helpers import MODEL, T0, only_detectors, windowed_traffic, write_reference
from tests.test_alerting_delivery import Receiver
from tests.test_kafka_end_to_end import daemon_config, produce, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

SECRET = "e2e-secret-5b1c"


def alerting_config(port: int, alerts_topic: str) -> dict[str, Any]:
    return {
        "resolve_after": 1,
        "kafka_topic": alerts_topic,
        "subscriptions": [{"name": "e2e", "url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}],
        # Short waits so that the test runs in seconds; the logic is the same as with the defaults.
        "delivery": {
            "timeout": "2s",
            "backoff_initial": "0.2s",
            "backoff_max": "0.5s",
            "poll_interval": "0.2s",
            "allowed_networks": ["127.0.0.0/8"],  # the receiver listens on loopback
        },
    }


def consume_alerts(broker: EmbeddedBroker, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_a_delivery_pending_at_sigkill_is_delivered_after_restart_once_and_signed(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    alerts_topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 4)
    create_topic(broker.bootstrap_servers, alerts_topic, 1)
    database_url = f"sqlite:///{tmp_path / 'alerts.db'}"
    port = free_port()
    config = daemon_config(broker, topic, database_url, write_reference(tmp_path / "reference.jsonl"))
    # One detector, so the test follows one alert; the other default detectors are switched off.
    config["models"][MODEL]["detectors"] = only_detectors(vae_anomaly={"max_epochs": 80})
    config["alerting"] = alerting_config(port, alerts_topic)
    engine = make_engine(database_url)
    receiver = Receiver(port=port)  # down for now

    first = DaemonProcess(config, tmp_path).start()
    try:
        first.wait_for("assigned partitions", timeout=120)
        # A clean window, a corrupted one (the alert), and a few events later to close both. One window at a
        # time, as in test_kafka_end_to_end: over 4 partitions a later window's events could otherwise be read
        # first and close a window early (its other events then count as late ones of the next window).
        for index, corrupt in enumerate([False, True]):
            produce(broker, topic, windowed_traffic([corrupt], start=T0 + 60 * index, prefix=f"a{index}-"))
            time.sleep(1.0)
        produce(broker, topic, windowed_traffic([False], per_window=8, start=T0 + 180, prefix="tail-"))
        migrate(engine)
        alerts = AlertStore(engine)

        def firing_delivery_pending() -> bool:
            pending = [d for d in alerts.deliveries(state="pending") if d.channel == "webhook"]
            return bool(pending) and pending[0].attempts >= 2  # the receiver refused it, twice

        wait_until(firing_delivery_pending, 180, "an alert whose webhook delivery is pending")
    finally:
        first.kill()  # between the alert write and the webhook delivery, without any chance to clean up
    assert "stopped" not in first.log

    [alert] = alerts.list_alerts()
    assert (alert.state, alert.detector, alert.model) == ("firing", "vae_anomaly", MODEL)
    [pending] = [d for d in alerts.deliveries() if d.channel == "webhook"]
    assert pending.state == "pending" and pending.reason == "firing"
    refused = alerts.attempts(pending.id)
    assert refused and all(a.outcome == "retry" and "ConnectError" in (a.error or "") for a in refused)

    receiver.start()
    second = DaemonProcess(config, tmp_path).start()
    try:
        second.wait_for("assigned partitions", timeout=120)
        wait_until(
            lambda: alerts.deliveries()[0].state == "delivered", 60, "the pending delivery, after the restart"
        )
        # The rest of the window after the tail, then later events: a clean window resolves the alert.
        produce(broker, topic, windowed_traffic([False], start=T0 + 180, prefix="b"))
        time.sleep(1.0)
        produce(broker, topic, windowed_traffic([False], per_window=8, start=T0 + 300, prefix="tail2-"))
        wait_until(
            lambda: any(d.reason == "resolved" and d.state == "delivered" for d in alerts.deliveries()),
            120,
            "the resolved notification",
        )
        assert second.terminate() == 0
    finally:
        if second.process and second.process.poll() is None:
            second.kill()
        receiver.stop()
    assert "Traceback" not in second.log and "stopped" in second.log

    [alert] = alerts.list_alerts()
    assert alert.state == "resolved" and alert.count >= 1
    webhook = [d for d in alerts.deliveries() if d.channel == "webhook"]
    # firing, then resolved (an escalation in between only if the traffic made one); all delivered.
    reasons = [d.reason for d in webhook]
    assert reasons[0] == "firing" and reasons[-1] == "resolved" and set(reasons[1:-1]) <= {"escalated"}
    assert {d.state for d in webhook} == {"delivered"}
    assert webhook[0].uuid == pending.uuid  # the same delivery, not a new one
    # Delivered by the second process; the refusals recorded by the first one are kept.
    attempts = alerts.attempts(webhook[0].id)
    assert attempts[: len(refused)] == refused and attempts[-1].outcome == "delivered"
    assert attempts[-1].worker != refused[0].worker

    # The receiver: each notification acknowledged once, under its delivery id, signed over the exact body.
    acked = receiver.acknowledged()
    assert Counter(r.delivery for r in acked) == Counter({d.uuid: 1 for d in webhook})
    for request in receiver.requests:
        assert verify_signature(SECRET, request.body, request.headers["x-sentinel-signature"])
    documents = [r.document for r in acked]  # in order (one target: each waits for the one before)
    assert {d["alert"]["id"] for d in documents} == {alert.id}
    assert [d["status"] for d in documents] == ["firing"] * (len(webhook) - 1) + ["resolved"]
    assert documents[-1]["alert"]["state"] == "resolved" and documents[-1]["alert"]["resolved_at"]
    assert set(documents[0]) == {"version", "status", "alert"}

    # The alerts topic: the same native bodies, keyed by the fingerprint.
    kafka = [d for d in alerts.deliveries() if d.channel == "kafka"]
    assert [d.reason for d in kafka] == reasons and {d.state for d in kafka} == {"delivered"}
    records = consume_alerts(broker, alerts_topic, expected=len(kafka))
    assert {r.key for r in records} == {alert.fingerprint.encode()}
    statuses = [json.loads(r.value)["status"] for r in records]
    # At least once: a record produced just before the SIGKILL may come twice, then byte for byte the same.
    assert set(statuses) == {"firing", "resolved"}
    assert {r.value for r in records} == {d.body for d in kafka}
    engine.dispose()
