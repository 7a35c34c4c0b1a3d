"""The webhook SSRF guard: internal addresses are refused at subscription time and again at each delivery.

Name resolution is replaced (``socket.getaddrinfo`` monkeypatched) where a test needs a name to point
somewhere; the receiver is a real HTTP server on 127.0.0.1, reached only where the policy allows loopback.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from monitor.alerting.delivery import DeliveryWorker
from monitor.alerting.rendering import render_body, verify_signature
from monitor.alerting.settings import DeliverySettings
from monitor.alerting.webhook_guard import UnsafeWebhookUrl, WebhookGuard, address_class
from monitor.api.app import create_app
from monitor.api.settings import ApiSettings
from storage import AlertState, AlertStore, DeliveryIn, Store, SubscriptionIn, make_engine, migrate

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SECRET = "ssrf-test-secret-7d1e"
PUBLIC_V4 = "93.184.216.34"


# ----------------------------------------------------------------------------------- helpers


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Hook:
    """A webhook receiver on 127.0.0.1 answering every POST with ``status`` (and ``location`` on a 3xx)."""

    status: int = 200
    location: str | None = None
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Hook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.requests.append(
                    Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(hook.status)
                if hook.location is not None:
                    self.send_header("Location", hook.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def alerts(tmp_path: Any) -> Iterator[AlertStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ssrf.db'}")
    migrate(engine)
    yield AlertStore(engine)
    engine.dispose()


def enqueue(alerts: AlertStore, subscription_id: int, at: datetime = T0) -> None:
    """One firing alert and one pending webhook delivery of it to ``subscription_id``."""
    state = AlertState(
        id=None,
        fingerprint=f"fp-{subscription_id}-{at.timestamp()}",
        model="fraud",
        detector="evasion",
        threat="robustness",
        severity="warning",
        state="firing",
        title="evasion on fraud",
        summary="client c1 sends confident anomalies",
        window_start=at - timedelta(minutes=1),
        window_end=at,
        statistic=0.3,
        threshold=0.1,
        p_value=1e-4,
        details={"subject": "c1"},
        first_seen=at,
        last_seen=at,
        count=1,
        resolved_at=None,
        subject="c1",
        clean_streak=0,
        streak_window=None,
    )
    with alerts.evaluation(at) as work:
        assert work is not None
        saved = work.save_alert(state)
        assert saved.id is not None
        work.add_delivery(
            DeliveryIn(
                alert_id=saved.id,
                target=f"subscription:{subscription_id}",
                channel="webhook",
                subscription_id=subscription_id,
                topic=None,
                status="firing",
                reason="firing",
                severity="warning",
                body=render_body("native", saved.public()),
                created_at=at,
            )
        )


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Callable[[], list[str]]]) -> list[str]:
    """Make ``socket.getaddrinfo`` answer the names in ``answers`` (each call asks the callable again);
    returns the log of names looked up. Other names (and IP literals) resolve as usual."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if host in answers:
            asked.append(host)
            infos = []
            for text in answers[host]():
                family = socket.AF_INET6 if ":" in text else socket.AF_INET
                sockaddr = (
                    (text, int(port or 0), 0, 0) if family == socket.AF_INET6 else (text, int(port or 0))
                )
                infos.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return infos
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def worker_for(alerts: AlertStore, **delivery: Any) -> DeliveryWorker:
    settings = DeliverySettings.model_validate({"timeout": 2.0, "jitter": 0.0, **delivery})
    return DeliveryWorker(alerts, settings)


# ----------------------------------------------------------------------------------- the address policy


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.1.2.3/hook", "private (RFC 1918)"),
        ("http://172.16.9.9/hook", "private (RFC 1918)"),
        ("http://192.168.1.10:8080/hook", "private (RFC 1918)"),
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.8.8.8/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "the cloud metadata service"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "the cloud metadata service"),
        ("http://169.254.7.7/hook", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd12:3456:789a::1]/hook", "unique-local IPv6"),
        ("http://0.0.0.0:8080/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://[::ffff:10.0.0.1]/hook", "private (RFC 1918)"),  # IPv4-mapped: judged as the IPv4 address
        ("http://[::ffff:169.254.169.254]/hook", "the cloud metadata service"),
        ("http://100.64.0.1/hook", "shared address space (RFC 6598)"),
        ("http://0.1.2.3/hook", "not globally routable"),
        ("http://240.0.0.1/hook", "not globally routable"),
    ],
)
def test_each_class_of_internal_address_is_refused_by_default(url: str, kind: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as refused:
        WebhookGuard().check(url)
    assert kind in str(refused.value)
    assert "alerting.delivery.allowed_networks" in str(refused.value)  # the message says how to allow it


@pytest.mark.parametrize("address", [PUBLIC_V4, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    target = WebhookGuard().check(f"https://{host}/hook")
    assert target is not None and target.address == ipaddress.ip_address(address)


def test_the_allow_list_lets_only_its_networks_through() -> None:
    settings = DeliverySettings.model_validate({"allowed_networks": ["10.20.0.0/16", "fd00:1::/64"]})
    guard = WebhookGuard.from_settings(settings)
    assert guard.check("http://10.20.3.4/hook") is not None
    assert guard.check("http://[fd00:1::5]/hook") is not None
    for outside in (
        "http://10.21.0.1/hook",
        "http://[fd00:2::5]/hook",
        "http://169.254.169.254/",
        "http://127.0.0.1/",
    ):
        with pytest.raises(UnsafeWebhookUrl):
            guard.check(outside)
    # The switch for a laptop: everything passes.
    anything = WebhookGuard.from_settings(DeliverySettings(allow_private_addresses=True))
    assert anything.check("http://169.254.169.254/latest/meta-data/") is not None


def test_a_bad_cidr_in_the_configuration_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.300/8' is not a CIDR network")):
        DeliverySettings.model_validate({"allowed_networks": ["10.0.0.300/8"]})


def test_a_name_is_judged_by_every_address_it_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # One public and one internal answer: the connection could go to either, so the name is refused.
    fake_dns(monkeypatch, {"mixed.test": lambda: [PUBLIC_V4, "10.0.0.5"], "public.test": lambda: [PUBLIC_V4]})
    with pytest.raises(UnsafeWebhookUrl, match=r"'mixed.test' resolves to 10.0.0.5, private \(RFC 1918\)"):
        WebhookGuard().check("https://mixed.test/hook")
    target = WebhookGuard().check("https://public.test/hook")
    assert target is not None and str(target.address) == PUBLIC_V4
    assert target.host_header == "public.test"


def test_a_name_that_does_not_resolve_is_left_to_the_delivery_time_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    assert WebhookGuard().check("https://not-yet.test/hook", unresolved_ok=True) is None
    with pytest.raises(socket.gaierror):
        WebhookGuard().check("https://not-yet.test/hook")


# ----------------------------------------------------------------------------------- at delivery time


def test_dns_rebinding_is_caught_at_delivery_time(
    alerts: AlertStore, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At subscription time the name is public; by the time of the delivery it points at loopback.
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])
    asked = fake_dns(monkeypatch, {"rebind.test": lambda: next(answers)})
    url = f"http://rebind.test:{hook.port}/hook"
    assert WebhookGuard().check(url, unresolved_ok=True) is not None
    sub = alerts.create_subscription(SubscriptionIn(name="rebind", url=url, secret=SECRET), T0)
    enqueue(alerts, sub.id)
    worker = worker_for(alerts)
    try:
        assert worker.run_once(now=T0) == 1
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    assert delivery.state == "failed"
    assert delivery.last_error is not None
    assert "refused: webhook host 'rebind.test' resolves to 127.0.0.1, loopback" in delivery.last_error
    assert hook.requests == []  # nothing reached the loopback receiver
    assert asked == ["rebind.test", "rebind.test"]


def test_the_request_goes_to_the_checked_address_with_the_original_host(
    alerts: AlertStore, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Allowed through the allow-list; resolution happens once per attempt, by the guard: httpx connects to
    # the address it checked and never asks DNS again (a second, different answer could not be used).
    asked = fake_dns(monkeypatch, {"hooks.internal.test": lambda: ["127.0.0.1"]})
    url = f"http://hooks.internal.test:{hook.port}/hook"
    sub = alerts.create_subscription(SubscriptionIn(name="internal", url=url, secret=SECRET), T0)
    enqueue(alerts, sub.id)
    worker = worker_for(alerts, allowed_networks=["127.0.0.1/32"])
    try:
        worker.run_once(now=T0)
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    assert delivery.state == "delivered", delivery.last_error
    [request] = hook.requests
    assert request.headers["host"] == f"hooks.internal.test:{hook.port}"
    assert verify_signature(SECRET, request.body, request.headers["x-sentinel-signature"])
    assert asked == ["hooks.internal.test"]


def test_redirects_are_not_followed_so_a_receiver_cannot_bounce_a_delivery_inward(
    alerts: AlertStore, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook.status, hook.location = 307, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    connected: list[Any] = []
    real_connect = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address[0])
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    sub = alerts.create_subscription(
        SubscriptionIn(name="bouncer", url=f"http://127.0.0.1:{hook.port}/hook"), T0
    )
    enqueue(alerts, sub.id)
    worker = worker_for(alerts, allowed_networks=["127.0.0.0/8"])
    try:
        worker.run_once(now=T0)
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    assert (delivery.state, delivery.last_status_code) == ("failed", 307)  # a redirect is no acknowledgement
    assert len(hook.requests) == 1
    assert connected == ["127.0.0.1"]  # the metadata address was never dialled


def test_a_private_address_is_refused_at_delivery_without_retrying(alerts: AlertStore) -> None:
    # A subscription made before the guard existed (or written to the database directly).
    sub = alerts.create_subscription(SubscriptionIn(name="meta", url="http://169.254.169.254/latest"), T0)
    enqueue(alerts, sub.id)
    worker = worker_for(alerts)
    try:
        worker.run_once(now=T0)
    finally:
        worker.close()
    [delivery] = alerts.deliveries()
    assert delivery.state == "failed" and delivery.attempts == 1
    assert delivery.last_error is not None and "the cloud metadata service" in delivery.last_error


# ----------------------------------------------------------------------------------- at subscription time


def test_the_api_refuses_internal_urls_with_422_and_the_reason(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"metadata.test": lambda: ["169.254.169.254"], "ok.test": lambda: [PUBLIC_V4]})
    engine = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    migrate(engine)
    alerts = AlertStore(engine)
    guard = WebhookGuard.from_settings(DeliverySettings.model_validate({"allowed_networks": ["10.9.0.0/16"]}))
    app = create_app(Store(engine), alerts, ApiSettings(), webhook_guard=guard)
    client = TestClient(app, raise_server_exceptions=False)
    for url, reason in (
        ("http://127.0.0.1:8080/x", "loopback"),
        ("http://metadata.test/latest", "the cloud metadata service"),
        ("http://[fd00::1]/x", "unique-local IPv6"),
        ("http://10.1.0.1/x", "private (RFC 1918)"),
    ):
        response = client.post("/v1/subscriptions", json={"url": url})
        assert response.status_code == 422, (url, response.text)
        assert reason in response.text
    for url in ("https://ok.test/hook", "http://10.9.1.1/hook", "https://not-resolvable.invalid/x"):
        assert client.post("/v1/subscriptions", json={"url": url}).status_code == 201, url
    assert [s.url for s in alerts.subscriptions()] == [
        "https://ok.test/hook",
        "http://10.9.1.1/hook",
        "https://not-resolvable.invalid/x",
    ]
    engine.dispose()
