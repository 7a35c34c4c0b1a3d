"""Webhook delivery: signing, formats, retries, leases and ordering, against a real HTTP receiver.

The receiver is a real ``http.server.ThreadingHTTPServer`` on 127.0.0.1 answering from a script (fail for a
while, then recover). Time is injected into the engine and the worker, so backoff is skipped over, not slept
through; only the HTTP exchanges are real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor.alerting import (
    AlertEngine,
    AlertingSettings,
    DeliverySettings,
    DeliveryWorker,
    classify_status,
    open_alert,
    render_body,
    retry_delay,
    sign,
    verify_signature,
)
from monitor.broker import free_port
from storage import (
    AlertStore,
    AttemptIn,
    DeliveryIn,
    ResultEvent,
    ResultRow,
    Store,
    SubscriptionIn,
    WindowRecord,
    make_engine,
    migrate,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
MODEL = "fraud-scorer"
SECRET = "wh-secret-0123456789"
CONTRACT_FIELDS = {
    "id", "fingerprint", "model", "detector", "threat", "severity", "state", "title", "summary",
    "window_start", "window_end", "statistic", "threshold", "p_value", "details", "first_seen",
    "last_seen", "count", "resolved_at",
}  # fmt: skip


# ----------------------------------------------------------------------------------- the receiver


@dataclass
class Received:
    """One request as the receiver saw it, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None  # None: the receiver was too slow to be heard (the sender timed out)

    @property
    def delivery(self) -> str:
        return self.headers["x-sentinel-delivery"]

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers the first requests from ``script`` and 200 after.

    A script entry is a status code, or ``("slow", seconds, status)``: answer only after that long.
    """

    port: int = 0
    script: deque[Any] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    action = receiver.script.popleft() if receiver.script else 200
                    received = Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, None
                    )
                    receiver.requests.append(received)
                status = action
                if isinstance(action, tuple):
                    _, seconds, status = action
                    time.sleep(seconds)
                else:
                    received.answered = status
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sentinel"

    def acknowledged(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.answered is not None and 200 <= r.answered < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


# ----------------------------------------------------------------------------------- pure parts


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"version":"1"}'
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == expected
    assert verify_signature(SECRET, body, expected)
    assert not verify_signature(SECRET, body + b" ", expected)
    assert not verify_signature("other", body, expected)
    assert not verify_signature(SECRET, body, None)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (429, "retry"), (500, "retry"), (503, "retry"),
     (301, "failed"), (400, "failed"), (401, "failed"), (404, "failed"), (410, "failed")],
)  # fmt: skip
def test_status_classification(status: int, outcome: str) -> None:
    assert classify_status(status) == outcome


def test_retry_delay_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (40, 300.0)]:
        for _ in range(50):
            delay = retry_delay(attempt, initial=1.0, maximum=300.0, jitter=0.2, rng=rng)
            assert 0.8 * base <= delay <= base
    assert retry_delay(3, initial=1.0, maximum=300.0, jitter=0.0) == 4.0
    draws = {round(retry_delay(5, initial=1.0, maximum=300.0, jitter=0.5, rng=rng), 6) for _ in range(20)}
    assert len(draws) > 10  # jitter spreads the retries
    with pytest.raises(ValueError):
        retry_delay(0, initial=1.0, maximum=2.0, jitter=0.0)


def _alert_record() -> Any:
    event = ResultEvent(
        id=3, revision=3, window_id=2, model=MODEL, detector="evasion", threat="robustness", status="alert",
        statistic=0.3, threshold=0.1, p_value=1e-8, n_events=500, evidence={"subject": "api-key-42"},
        reason=None, window_start=T0, window_end=T0 + MIN, updated_at=T0,
    )  # fmt: skip
    state = open_alert(event, "critical", T0 + MIN)
    return type(state)(**{**{k: getattr(state, k) for k in state.__dataclass_fields__}, "id": 11}).public()


def test_payload_formats() -> None:
    alert = _alert_record()
    native = json.loads(render_body("native", alert))
    assert set(native) == {"version", "status", "alert"} and native["version"] == "1"
    assert native["status"] == "firing" and set(native["alert"]) == CONTRACT_FIELDS
    assert native["alert"]["window_start"] == "2026-11-28T10:00:00Z"
    assert native["alert"]["details"]["subject"] == "api-key-42" and native["alert"]["resolved_at"] is None
    assert render_body("native", alert) == render_body("native", alert)  # stable bytes

    slack = json.loads(render_body("slack", alert))
    assert set(slack) == {"text"} and slack["text"].startswith(
        "[FIRING:CRITICAL] evasion alert on fraud-scorer"
    )

    am = json.loads(render_body("alertmanager", alert, receiver="oncall"))
    assert (am["version"], am["status"], am["receiver"]) == ("4", "firing", "oncall")
    assert am["groupKey"] and am["truncatedAlerts"] == 0
    [one] = am["alerts"]
    assert set(one) >= {"status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"}
    assert one["labels"] == {
        "alertname": "evasion", "model": MODEL, "detector": "evasion", "threat": "robustness",
        "severity": "critical", "subject": "api-key-42",
    }  # fmt: skip
    assert (one["startsAt"], one["endsAt"]) == ("2026-11-28T10:01:00Z", "0001-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="format"):
        render_body("xml", alert)


# ----------------------------------------------------------------------------------- with a database


@pytest.fixture
def db(database_url: str) -> Iterator[tuple[Store, AlertStore]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine), AlertStore(engine)
    engine.dispose()


def put(store: Store, k: int, status: str, *, subject: str | None = None, p: float = 1e-4) -> None:
    evidence: dict[str, Any] = {"subject": subject} if subject else {}
    store.store_window(
        WindowRecord(
            model=MODEL,
            start=T0 + k * MIN,
            end=T0 + (k + 1) * MIN,
            n_late=0,
            events=(),
            results=[ResultRow("evasion", "robustness", status, 100, 0.3, 0.1, p, evidence, None)],
            anomalies=(),
            closed_at=T0 + (k + 1) * MIN,
            n_events=100,
        )
    )


def fast(**changes: Any) -> DeliverySettings:
    values: dict[str, Any] = {
        "timeout": 2.0,
        "backoff_initial": 1.0,
        "backoff_max": 8.0,
        "max_age": 3600.0,
        "allowed_networks": ["127.0.0.0/8"],  # the test receivers listen on loopback
    }
    values.update(changes)
    return DeliverySettings.model_validate(values)


def drain(
    worker: DeliveryWorker, alerts: AlertStore, start: datetime, step: timedelta, limit: int = 60
) -> datetime:
    """Run the worker with the clock stepping on until nothing is pending; returns the final time."""
    now = start
    for _ in range(limit):
        worker.run_once(now=now)
        if not alerts.deliveries(state="pending"):
            return now
        now += step
    raise AssertionError(f"deliveries still pending: {alerts.deliveries(state='pending')}")


def test_a_receiver_that_fails_for_a_while_then_recovers_gets_every_notification_signed(
    db: tuple[Store, AlertStore],
) -> None:
    store, alerts = db
    port = free_port()
    down = Receiver(port=port)  # not started yet: connections are refused at first
    native = alerts.create_subscription(
        SubscriptionIn(name="native", url=f"http://127.0.0.1:{port}/native", secret=SECRET), T0
    )
    manager = alerts.create_subscription(
        SubscriptionIn(name="am", url=f"http://127.0.0.1:{port}/am", secret=SECRET, format="alertmanager"), T0
    )
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    worker = DeliveryWorker(alerts, fast(), rng=random.Random(1))
    try:
        # Two alerts (two clients); one escalates; both resolve: 5 notifications to each subscription.
        put(store, 0, "alert", subject="client-a")
        put(store, 0 + 1, "alert", subject="client-b")
        now = T0 + 2 * MIN
        engine.run_once(now=now)
        worker.run_once(now=now)  # receiver down: connection refused, retried later
        put(store, 2, "alert", subject="client-a", p=1e-9)
        engine.run_once(now=now + MIN)
        down.start()
        down.script.extend([503, 500, 429, 502])  # then it recovers
        worker.run_once(now=now + MIN)
        put(store, 3, "ok")
        engine.run_once(now=now + 2 * MIN)
        drain(worker, alerts, now + 3 * MIN, timedelta(seconds=10))
    finally:
        worker.close()
        down.stop()

    delivered = alerts.deliveries()
    assert len(delivered) == 10 and {d.state for d in delivered} == {"delivered"}
    acked = down.acknowledged()
    # Every notification acknowledged exactly once, under its stable delivery id.
    assert Counter(r.delivery for r in acked) == Counter({d.uuid: 1 for d in delivered})
    for request in down.requests:  # failed attempts included: all signed over their exact bytes
        assert verify_signature(SECRET, request.body, request.headers["x-sentinel-signature"])
        assert int(request.headers["x-sentinel-timestamp"]) > 0
    by_uuid = {d.uuid: d for d in delivered}
    for request in down.requests:  # each attempt sent the body stored with its delivery, unchanged
        assert request.body == by_uuid[request.delivery].body
    # Every attempt is recorded: the refused connections, the 5xx/429 answers and the successes.
    attempts = [a for d in delivered for a in alerts.attempts(d.id)]
    # + one refused connection for each of the 4 deliveries (2 alerts x 2 subscriptions) due while it was down
    assert len(attempts) == len(down.requests) + 4
    assert Counter(a.outcome for a in attempts)["delivered"] == 10
    assert sorted(a.status_code for a in attempts if a.status_code not in (None, 200)) == [429, 500, 502, 503]
    assert sum("ConnectError" in (a.error or "") for a in attempts) == 4
    # Order per alert and subscription: firing, escalated, resolved, as they happened.
    for sub, path in [(native.id, "/native"), (manager.id, "/am")]:
        for alert_id in {d.alert_id for d in delivered}:
            reasons = [by_uuid[r.delivery].reason for r in acked if r.path == path]
            ours = [
                by_uuid[r.delivery]
                for r in acked
                if r.path == path and by_uuid[r.delivery].alert_id == alert_id
            ]
            assert all(d.subscription_id == sub for d in ours)
            expected = [x.reason for x in delivered if x.alert_id == alert_id and x.subscription_id == sub]
            assert [d.reason for d in ours] == expected
            assert reasons.count("resolved") == 2
    am_bodies = [r.document for r in acked if r.path == "/am"]
    assert all(b["version"] == "4" and b["alerts"][0]["fingerprint"] for b in am_bodies)
    native_bodies = [r.document for r in acked if r.path == "/native"]
    assert all(set(b) == {"version", "status", "alert"} for b in native_bodies)
    assert Counter(b["status"] for b in native_bodies) == Counter({"firing": 3, "resolved": 2})


def test_client_errors_fail_for_good_and_unblock_the_next_notification(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="r", url=receiver.url, secret=SECRET), T0)
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    put(store, 0, "alert")
    engine.run_once(now=T0 + MIN)
    put(store, 1, "ok")
    engine.run_once(now=T0 + 2 * MIN)
    receiver.script.extend([410])
    worker = DeliveryWorker(alerts, fast())
    try:
        worker.run_once(now=T0 + 2 * MIN)  # the firing one: 410, failed for good
        worker.run_once(now=T0 + 2 * MIN)  # the resolved one may go now
    finally:
        worker.close()
    firing, resolved = alerts.deliveries()
    assert (firing.state, firing.attempts, firing.last_status_code, firing.last_error) == (
        "failed",
        1,
        410,
        "HTTP 410",
    )
    assert resolved.state == "delivered"
    assert [a.outcome for a in alerts.attempts(firing.id)] == ["failed"]
    assert [r.answered for r in receiver.requests] == [410, 200]


def test_a_later_notification_waits_for_the_earlier_one_to_the_same_target(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="r", url=receiver.url), T0)
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    put(store, 0, "alert")
    engine.run_once(now=T0 + MIN)
    put(store, 1, "ok")
    engine.run_once(now=T0 + MIN)
    receiver.script.extend([503])
    worker = DeliveryWorker(alerts, fast(jitter=0.0))
    try:
        worker.run_once(now=T0 + 2 * MIN)  # firing: 503; resolved is due but must not overtake it
        assert [r.document["status"] for r in receiver.requests] == ["firing"]
        worker.run_once(now=T0 + 2 * MIN + timedelta(seconds=0.5))  # backoff not over: nothing
        assert len(receiver.requests) == 1
        worker.run_once(now=T0 + 2 * MIN + timedelta(seconds=1))
        worker.run_once(now=T0 + 2 * MIN + timedelta(seconds=1))
    finally:
        worker.close()
    assert [(r.document["status"], r.answered) for r in receiver.requests] == [
        ("firing", 503),
        ("firing", 200),
        ("resolved", 200),
    ]
    assert "x-sentinel-signature" not in receiver.requests[0].headers  # no secret: unsigned
    assert [r.headers["x-sentinel-event"] for r in receiver.requests] == ["firing", "firing", "resolved"]


def test_retries_stop_at_max_age_with_a_last_attempt_at_that_age(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="r", url=receiver.url), T0)
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings()).run_once(now=T0)
    receiver.script.extend([503] * 100)
    worker = DeliveryWorker(alerts, fast(backoff_initial=10.0, backoff_max=1000.0, jitter=0.0, max_age=60.0))
    times = []
    now = T0
    try:
        for _ in range(20):
            if worker.run_once(now=now):
                times.append(now)
            if not alerts.deliveries(state="pending"):
                break
            now += timedelta(seconds=5)
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    assert delivery.state == "failed" and "max_age" in (delivery.last_error or "")
    # Attempts at 0, 10 s, 30 s, then the last one at exactly 60 s (the 40 s wait was cut to the deadline).
    assert [(t - T0).total_seconds() for t in times] == [0, 10, 30, 60]
    assert [a.outcome for a in alerts.attempts(delivery.id)] == ["retry", "retry", "retry", "failed"]


def test_an_unacknowledged_send_is_resent_with_the_same_delivery_id(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="r", url=receiver.url, secret=SECRET), T0)
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings()).run_once(now=T0)
    receiver.script.append(("slow", 1.0, 200))  # processed, but the answer comes after the timeout
    worker = DeliveryWorker(alerts, fast(timeout=0.3, jitter=0.0))
    try:
        worker.run_once(now=T0)
        worker.run_once(now=T0 + timedelta(seconds=1))
    finally:
        worker.close()
    first, second = receiver.requests
    assert first.delivery == second.delivery and first.body == second.body
    [delivery] = alerts.deliveries()
    assert delivery.uuid == first.delivery and delivery.state == "delivered"
    assert ["ReadTimeout" in (a.error or "") for a in alerts.attempts(delivery.id)] == [True, False]


def test_a_worker_that_dies_holding_a_lease_delays_but_does_not_lose_or_double_the_delivery(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="r", url=receiver.url), T0)
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings()).run_once(now=T0)
    [claimed] = alerts.claim_deliveries("dead-worker", T0, lease=timedelta(seconds=60))  # ... and it dies
    survivor = DeliveryWorker(alerts, fast(), worker_id="survivor")
    try:
        assert survivor.run_once(now=T0 + timedelta(seconds=59)) == 0  # still leased
        assert survivor.run_once(now=T0 + timedelta(seconds=60)) == 1
    finally:
        survivor.close()
    [request] = receiver.requests
    assert request.delivery == claimed.uuid
    assert [a.worker for a in alerts.attempts(claimed.id)] == ["survivor"]
    # The dead worker's late record of a retry cannot reopen a delivered row.
    assert not alerts.record_attempt(
        claimed.id,
        "dead-worker",
        AttemptIn(T0, 1.0, 503, "HTTP 503", "retry"),
        next_attempt_at=T0 + MIN,
    )
    assert alerts.deliveries()[0].state == "delivered"


def test_concurrent_workers_never_claim_the_same_delivery(db: tuple[Store, AlertStore]) -> None:
    _, alerts = db
    sub = alerts.create_subscription(SubscriptionIn(name="r", url="http://127.0.0.1:9/x"), T0).id
    with alerts.evaluation(T0) as work:
        assert work is not None
        for i in range(120):
            event = ResultEvent(
                id=i, revision=i, window_id=i, model=MODEL, detector="evasion", threat="robustness",
                status="alert", statistic=1.0, threshold=0.5, p_value=1e-4, n_events=10,
                evidence={"subject": f"c{i}"}, reason=None, window_start=T0, window_end=T0 + MIN,
                updated_at=T0,
            )  # fmt: skip
            alert = work.save_alert(open_alert(event, "warning", T0))
            assert alert.id is not None
            target = f"subscription:{sub}"
            work.add_delivery(
                DeliveryIn(alert.id, target, "webhook", sub, None, "firing", "firing", "warning", b"{}", T0)
            )
    claims: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claim(name: str) -> None:
        try:
            while True:
                got = alerts.claim_deliveries(name, T0, limit=7)
                if not got:
                    return
                with lock:
                    claims.extend(j.id for j in got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(claims) == 120 and len(set(claims)) == 120


def test_deleted_subscriptions_are_given_up_and_secrets_never_logged(
    db: tuple[Store, AlertStore], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    store, alerts = db
    token_url = receiver.url + "?token=url-token-xyz"
    keep = alerts.create_subscription(SubscriptionIn(name="keep", url=token_url, secret=SECRET), T0)
    gone = alerts.create_subscription(SubscriptionIn(name="gone", url=receiver.url, secret=SECRET), T0)
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings()).run_once(now=T0)
    alerts.delete_subscription(gone.id, T0)
    receiver.script.extend([500])
    worker = DeliveryWorker(alerts, fast(jitter=0.0))
    caplog.set_level(logging.DEBUG)
    try:
        jobs = alerts.claim_deliveries("peek", T0, lease=timedelta(0))
        assert all(SECRET not in repr(j) and "url-token" not in repr(j) for j in jobs)
        drain(worker, alerts, T0, timedelta(seconds=2))
    finally:
        worker.close()
    states = {d.subscription_id: (d.state, d.attempts, d.last_error) for d in alerts.deliveries()}
    assert states[gone.id] == ("failed", 0, "subscription deleted")
    assert states[keep.id][0] == "delivered"
    assert len(receiver.requests) == 2 and all(
        r.path.endswith("token=url-token-xyz") for r in receiver.requests
    )
    assert "delivered" in caplog.text and "'keep'" in caplog.text
    assert SECRET not in caplog.text and "url-token-xyz" not in caplog.text


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Stands in for kafka.KafkaProducer: fails the first send, then records."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.failures = 1

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        from kafka.errors import KafkaTimeoutError

        if self.failures:
            self.failures -= 1
            return FakeFuture(KafkaTimeoutError("broker away"))
        self.sent.append((topic, key, value))
        return FakeFuture(None)

    def close(self, timeout: float | None = None) -> None:
        pass


def test_kafka_topic_delivery_is_retried_and_keyed_by_fingerprint(db: tuple[Store, AlertStore]) -> None:
    from monitor.config import KafkaSettings

    store, alerts = db
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings(kafka_topic="sentinel-alerts")).run_once(now=T0)
    producers: list[FakeProducer] = []

    def factory(**options: Any) -> FakeProducer:
        producers.append(FakeProducer(**options))
        producers[-1].failures = 1 if len(producers) == 1 else 0
        return producers[-1]

    worker = DeliveryWorker(alerts, fast(jitter=0.0), kafka=KafkaSettings(), producer_factory=factory)
    try:
        drain(worker, alerts, T0, timedelta(seconds=2))
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    [alert] = alerts.list_alerts()
    assert delivery.state == "delivered" and delivery.attempts == 2
    [(topic, key, value)] = producers[-1].sent  # a failed producer is replaced, not reused
    assert (topic, key) == ("sentinel-alerts", alert.fingerprint.encode())
    assert value == delivery.body and json.loads(value)["alert"]["id"] == alert.id
    assert producers[0].options["acks"] == "all"


def test_a_stopping_worker_gives_back_what_it_claimed_but_did_not_send(
    db: tuple[Store, AlertStore], receiver: Receiver
) -> None:
    store, alerts = db
    alerts.create_subscription(SubscriptionIn(name="a", url=receiver.url), T0)
    alerts.create_subscription(SubscriptionIn(name="b", url=receiver.url), T0)
    put(store, 0, "alert")
    AlertEngine(alerts, AlertingSettings()).run_once(now=T0)
    stopping = DeliveryWorker(alerts, fast(), now=lambda: T0, worker_id="stopping")
    stopping._stop.set()  # stop requested while it claims: it sends nothing and releases both at once
    assert stopping.run_once() == 2
    stopping.close()
    assert receiver.requests == []
    assert not alerts.deliveries(state="delivered")
    assert alerts.has_due_deliveries(T0)
    other = DeliveryWorker(alerts, fast(), worker_id="other")
    try:
        assert other.run_once(now=T0) == 2  # no lease to wait for
    finally:
        other.close()
    assert len(receiver.acknowledged()) == 2 and len(alerts.deliveries(state="delivered")) == 2
    assert not alerts.has_due_deliveries(T0 + timedelta(days=1))


def test_retry_after_header_is_read_as_seconds_or_an_http_date() -> None:
    import httpx

    from monitor.alerting.delivery import _retry_after

    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "120"}), now) == 120.0
    assert (
        _retry_after(httpx.Response(503, headers={"Retry-After": "Sat, 28 Nov 2026 10:00:30 GMT"}), now)
        == 30.0
    )
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "soon"}), now) is None
    assert _retry_after(httpx.Response(503), now) is None
