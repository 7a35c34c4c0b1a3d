"""Hostile use of the HTTP API and the webhook secrets: tokens and scopes on every endpoint, SQL injection in
every filter, oversize requests, and secrets that never show in logs, responses or the database.

Which endpoints are open without a token, and why: ``/healthz`` and ``/readyz`` are probed by the kubelet and
load balancers, which carry no credentials; ``/metrics`` is scraped by Prometheus the same way. None of them
returns alerts, events or subscriptions: counts, model names and component states only. Every other path of
the OpenAPI document needs a token (``read`` for GET, ``admin`` for writes), which the first test checks by
iterating the document, so a new endpoint added without a dependency fails it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient

from monitor.alerting.delivery import DeliveryWorker
from monitor.alerting.settings import AlertingSettings, DeliverySettings
from monitor.alerting.webhook_guard import WebhookGuard
from monitor.api.app import create_app
from monitor.api.server import ApiServer
from monitor.api.settings import ApiSettings
from monitor.config import load_config
from monitor.errors import ConfigError
from storage import (
    AlertStore,
    DeadLetterIn,
    EventRow,
    ResultRow,
    Store,
    SubscriptionIn,
    WindowRecord,
    make_engine,
    migrate,
)
from storage.crypto import SECRET_KEY_ENV, SecretKeyError, generate_key, key_file_for
from storage.migrate import alembic_config
from tests.test_ssrf import Hook, enqueue

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
READ, ADMIN = "read-token-7f3a", "admin-token-91c2"
SECRET = "webhook-secret-do-not-leak-5e8b"
CONFIG_SECRET = "config-secret-do-not-leak-2a9d"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/subscriptions": {"url": "https://hooks.example/x", "secret": "s"},
    "/v1/silences": {"ends_at": "2026-12-01T00:00:00Z", "model": "fraud"},
}
INJECTIONS = [
    "' OR '1'='1",
    "fraud' OR 1=1 --",
    "1; DROP TABLE alerts; --",
    "'; DELETE FROM subscriptions; --",
    "fraud' UNION SELECT secret, url, name FROM subscriptions --",
    '" OR ""="',
    "1) OR (1=1",
    "%' OR '%'='",
    "robustness' OR threat IS NOT NULL --",
    "2026-11-28T10:00:00Z' OR '1'='1",
    "-1 OR 1=1",
    "YTo1OyBEUk9QIFRBQkxFIGFsZXJ0cw",  # a "cursor": base64 of "a:5; DROP TABLE alerts"
]


@dataclass
class Api:
    engine: sa.Engine
    store: Store
    alerts: AlertStore
    client: TestClient


def seed(store: Store, alerts: AlertStore) -> None:
    """Two windows with results and anomalies, two alerts, a dead letter and a subscription."""
    for k in range(2):
        start = T0 + k * MIN
        store.store_window(
            WindowRecord(
                model="fraud",
                start=start,
                end=start + MIN,
                n_late=0,
                events=[EventRow(f"e-{k}", start, "c1", "a", None)],
                results=[ResultRow("vae_anomaly", "robustness", "alert", 1, 0.2, 0.1, 1e-4, {}, None)],
                anomalies=(),
                closed_at=start + MIN,
            )
        )
    store.add_dead_letters(
        [DeadLetterIn("preds", 0, 7, None, b"not json", "invalid JSON", None, T0)]  # type: ignore[arg-type]
    )
    sub = alerts.create_subscription(
        SubscriptionIn(name="ops", url="https://hooks.example/o", secret=SECRET), T0
    )
    enqueue(alerts, sub.id, T0)
    enqueue(alerts, sub.id, T0 + MIN)


def make_api(database_url: str, settings: ApiSettings | None = None) -> Api:
    engine = make_engine(database_url)
    migrate(engine)
    store, alerts = Store(engine), AlertStore(engine)
    seed(store, alerts)
    app = create_app(store, alerts, settings or ApiSettings(read_tokens=[READ], admin_tokens=[ADMIN]))
    return Api(engine, store, alerts, TestClient(app, raise_server_exceptions=False))


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    built = make_api(database_url)
    yield built
    built.engine.dispose()


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[Api]:
    built = make_api(f"sqlite:///{tmp_path / 'api.db'}")
    yield built
    built.engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def row_counts(engine: sa.Engine) -> dict[str, int]:
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
            for name, table in metadata.tables.items()
        }


# ----------------------------------------------------------------------------------- tokens and scopes


def test_every_endpoint_needs_a_token_and_writes_need_the_admin_scope(sqlite_api: Api) -> None:
    client = sqlite_api.client
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    seen_open = set()
    checked = 0
    for template, operations in paths.items():
        path = (
            template.replace("{alert_id}", "1").replace("{subscription_id}", "1").replace("{silence_id}", "1")
        )
        for method in operations:
            body = BODIES.get(template) if method == "post" else None

            def call(
                headers: dict[str, str], method: str = method, path: str = path, body: Any = body
            ) -> Any:
                return client.request(method.upper(), path, json=body, headers=headers)

            if template in OPEN_PATHS:
                seen_open.add(template)
                assert call({}).status_code in (200, 503), template  # readyz may be 503, never 401
                continue
            missing, wrong = call({}), call(bearer("not-a-token"))
            assert (missing.status_code, wrong.status_code) == (401, 401), (method, template)
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert call({"Authorization": f"Basic {READ}"}).status_code == 401  # the scheme matters too
            if method in ("post", "delete", "put", "patch"):
                assert call(bearer(READ)).status_code == 403, (method, template)
            checked += 1
    assert seen_open == OPEN_PATHS
    assert checked >= 12  # every /v1 operation of the document was exercised
    # And the tokens do work: the probes above were not passing because everything is open.
    assert client.get("/v1/alerts", headers=bearer(READ)).status_code == 200
    created = client.post("/v1/subscriptions", json=BODIES["/v1/subscriptions"], headers=bearer(ADMIN))
    assert created.status_code == 201


# ----------------------------------------------------------------------------------- SQL injection


def query_parameters(client: TestClient) -> list[tuple[str, str]]:
    """Every (path, query parameter) of the OpenAPI document's GET operations."""
    found = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        get = operations.get("get", {})
        for parameter in get.get("parameters", []):
            if parameter["in"] == "query":
                found.append((path, parameter["name"]))
    return found


def test_sql_injection_in_every_filter_returns_no_rows_or_422_and_leaves_the_tables_intact(api: Api) -> None:
    client = api.client
    before = row_counts(api.engine)
    parameters = query_parameters(client)
    named = {name for path, name in parameters if path == "/v1/alerts"}
    assert named >= {"model", "detector", "threat", "severity", "state", "since", "until", "cursor", "limit"}
    outcomes: dict[int, int] = {}
    for path, name in parameters:
        for payload in INJECTIONS:
            response = client.get(path, params={name: payload}, headers=bearer(READ))
            outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
            assert response.status_code in (200, 422), (path, name, payload, response.text)
            if response.status_code == 200:
                assert response.json()["items"] == [], (path, name, payload)
    assert outcomes.get(200, 0) > 0 and outcomes.get(422, 0) > 0  # both kinds of refusal happened
    assert row_counts(api.engine) == before
    assert len(client.get("/v1/alerts", headers=bearer(READ)).json()["items"]) == 2
    assert len(client.get("/v1/windows", headers=bearer(READ)).json()["items"]) == 2


def test_a_nul_byte_in_a_text_filter_is_a_client_error_not_a_server_error(api: Api) -> None:
    # PostgreSQL refuses NUL in text parameters: the API's patterns on model/detector keep it from SQL.
    for path in ("/v1/alerts", "/v1/windows", "/v1/anomalies"):
        for name in ("model", "detector"):
            if (path, name) not in query_parameters(api.client):
                continue
            response = api.client.get(path, params={name: "fraud\x00' OR 1=1"}, headers=bearer(READ))
            assert response.status_code in (200, 422), (path, name, response.text)


# ----------------------------------------------------------------------------------- oversize requests


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, AlertStore]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'served.db'}")
    migrate(engine)
    alerts = AlertStore(engine)
    api = ApiServer(create_app(Store(engine), alerts, ApiSettings()), "127.0.0.1", 0, graceful_timeout=1)
    api.start()
    base = f"http://127.0.0.1:{api.port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    yield base, alerts
    api.stop()
    engine.dispose()


def test_a_10_mb_subscription_body_is_refused_and_the_server_lives_on(server: tuple[str, AlertStore]) -> None:
    base, alerts = server
    ten_mb = 10 * 1024 * 1024
    bodies = [
        {"url": "https://hooks.example/x", "secret": "s" * ten_mb},
        {"url": "https://hooks.example/x", "models": ["m" * 100] * (ten_mb // 104)},
        {"url": "https://hooks.example/" + "x" * ten_mb},
    ]
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            response = client.post(f"{base}/v1/subscriptions", json=body)
            assert response.status_code in (413, 422), response.text[:200]
        garbage = client.post(
            f"{base}/v1/subscriptions", content=b"[" * ten_mb, headers={"Content-Type": "application/json"}
        )
        assert garbage.status_code in (400, 413, 422)
        assert client.get(f"{base}/healthz").status_code == 200
    assert alerts.subscriptions() == []


def test_a_100_kb_query_string_is_refused(server: tuple[str, AlertStore]) -> None:
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    # Sent by hand: httpx itself refuses to build a URL this long.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        target = "/v1/alerts?model=" + "a" * 100_000
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert status in (413, 414, 422, 431), reply[:200]


# ----------------------------------------------------------------------------------- secrets


def database_text(engine: sa.Engine) -> bytes:
    """Everything the database holds, as bytes: the SQLite files themselves, or every PostgreSQL row."""
    if engine.dialect.name == "sqlite":
        path = Path(str(engine.url.database))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    metadata = sa.MetaData()
    metadata.reflect(engine)
    parts = []
    with engine.connect() as conn:
        for name in metadata.tables:
            parts += [str(r[0]) for r in conn.execute(sa.text(f'SELECT t::text FROM "{name}" t'))]
    return "\n".join(parts).encode()


def test_the_webhook_secret_never_appears_in_logs_responses_or_the_database(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = make_engine(database_url)
    migrate(engine)
    store, alerts = Store(engine), AlertStore(engine)
    # The receiver listens on loopback, which the webhook guard refuses unless allowed.
    settings = DeliverySettings.model_validate({"allowed_networks": ["127.0.0.0/8"], "timeout": 5})
    app = create_app(store, alerts, ApiSettings(), webhook_guard=WebhookGuard.from_settings(settings))
    client = TestClient(app, raise_server_exceptions=False)
    hook = Hook().start()
    try:
        url = f"http://127.0.0.1:{hook.port}/hook"
        created = client.post("/v1/subscriptions", json={"name": "api", "url": url, "secret": SECRET})
        assert created.status_code == 201, created.text
        alerts.sync_config_subscriptions([SubscriptionIn(name="cfg", url=url, secret=CONFIG_SECRET)], T0)
        for subscription in alerts.subscriptions():
            enqueue(alerts, subscription.id)
        worker = DeliveryWorker(alerts, settings)
        try:
            assert worker.run_once(now=T0) == 2
        finally:
            worker.close()
        assert [d.state for d in alerts.deliveries()] == ["delivered", "delivered"]
        responses = [created.text]
        for path in (
            "/v1/subscriptions",
            "/v1/subscriptions/1",
            "/v1/subscriptions/2",
            "/v1/alerts",
            "/metrics",
        ):
            responses.append(client.get(path).text)
        responses += [client.get(f"/v1/alerts/{d.alert_id}").text for d in alerts.deliveries()]
        stored = database_text(engine)
    finally:
        hook.stop()
        engine.dispose()
    # The deliveries were signed with the plain secrets (so they were there when needed) ...
    assert sorted(r.headers["x-sentinel-signature"][:7] for r in hook.requests) == ["sha256=", "sha256="]
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "delivered" in logged  # the log was captured at all
    for secret in (SECRET, CONFIG_SECRET):
        assert secret not in logged
        assert all(secret not in text for text in responses)
        assert secret.encode() not in stored
    assert b"aesgcm1:" in stored  # ... and are at rest in their sealed form


def test_a_delivery_signed_from_a_sealed_secret_verifies(tmp_path: Path) -> None:
    from monitor.alerting.rendering import verify_signature

    engine = make_engine(f"sqlite:///{tmp_path / 'sign.db'}")
    migrate(engine)
    alerts = AlertStore(engine, secret_key=generate_key())
    hook = Hook().start()
    try:
        sub = alerts.create_subscription(
            SubscriptionIn(name="r", url=f"http://127.0.0.1:{hook.port}/hook", secret=SECRET), T0
        )
        enqueue(alerts, sub.id)
        worker = DeliveryWorker(
            alerts, DeliverySettings.model_validate({"allowed_networks": ["127.0.0.1/32"]})
        )
        worker.run_once(now=T0)
        worker.close()
    finally:
        hook.stop()
        engine.dispose()
    [request] = hook.requests
    assert verify_signature(SECRET, request.body, request.headers["x-sentinel-signature"])
    assert not verify_signature(SECRET + "x", request.body, request.headers["x-sentinel-signature"])


def test_existing_plain_text_secrets_are_sealed_by_the_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(
        SECRET_KEY_ENV, raising=False
    )  # the embedded default: the key file beside the database
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.execute(
            sa.text(
                "INSERT INTO subscriptions (name, url, secret, format, models, detectors, threats,"
                " min_severity, source, created_at, updated_at) VALUES ('old', 'https://hooks.example/o',"
                " :secret, 'native', '[]', '[]', '[]', 'info', 'config', :t, :t)"
            ),
            {"secret": SECRET, "t": T0},
        )
    assert SECRET.encode() in database_text(engine)  # the starting point: plain text
    migrate(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # old pages of the WAL are gone with it
        [sealed] = conn.execute(sa.text("SELECT secret FROM subscriptions")).scalars()
    assert sealed.startswith("aesgcm1:") and SECRET not in sealed
    assert SECRET.encode() not in database_text(engine)
    key_file = key_file_for(engine)
    assert key_file is not None and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    # The store opens it with the same key file: an unchanged configured secret is recognised, not resealed.
    alerts = AlertStore(engine)
    [before] = alerts.subscriptions()
    alerts.sync_config_subscriptions(
        [SubscriptionIn(name="old", url="https://hooks.example/o", secret=SECRET)], T0 + MIN
    )
    [after] = alerts.subscriptions()
    assert after.updated_at == before.updated_at
    assert alerts.secret_box.open(sealed) == SECRET
    engine.dispose()


def test_a_wrong_key_fails_the_attempt_with_a_clear_error_and_retries_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    right, wrong = generate_key(), generate_key()
    hook = Hook().start()
    settings = DeliverySettings.model_validate(
        {"allowed_networks": ["127.0.0.1/32"], "backoff_initial": 10.0, "jitter": 0.0}
    )
    try:
        alerts = AlertStore(engine, secret_key=right)
        sub = alerts.create_subscription(
            SubscriptionIn(name="r", url=f"http://127.0.0.1:{hook.port}/hook", secret=SECRET), T0
        )
        enqueue(alerts, sub.id)
        misconfigured = DeliveryWorker(AlertStore(engine, secret_key=wrong), settings)
        with caplog.at_level(logging.ERROR, logger="sentinel.delivery"):
            assert misconfigured.run_once(now=T0) == 1  # returns: no exception escapes the worker
            assert misconfigured.run_once(now=T0 + timedelta(seconds=1)) == 0  # backing off, not spinning
        misconfigured.close()
        [delivery] = alerts.deliveries()
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert delivery.last_error is not None and "alerting.secret_key" in delivery.last_error
        assert "sealed with key" in delivery.last_error and SECRET not in delivery.last_error
        assert any("alerting.secret_key" in r.getMessage() for r in caplog.records)
        assert hook.requests == []  # nothing unsigned went out
        fixed = DeliveryWorker(AlertStore(engine, secret_key=right), settings)
        fixed.run_once(now=T0 + timedelta(seconds=10))
        fixed.close()
        assert [d.state for d in alerts.deliveries()] == ["delivered"]
    finally:
        hook.stop()
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_without_a_key_refuses_secrets_naming_the_setting(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    engine = make_engine(postgres_url)
    try:
        migrate(engine)
        alerts = AlertStore(engine)
        with pytest.raises(SecretKeyError, match=f"alerting.secret_key.*{SECRET_KEY_ENV}"):
            alerts.create_subscription(
                SubscriptionIn(name="s", url="https://hooks.example/s", secret=SECRET), T0
            )
        assert alerts.subscriptions() == []
        # Unsigned subscriptions need no key.
        alerts.create_subscription(SubscriptionIn(name="u", url="https://hooks.example/u"), T0)
        # With the key in the environment the same call works, and the row holds the sealed form.
        monkeypatch.setenv(SECRET_KEY_ENV, generate_key())
        AlertStore(engine).create_subscription(
            SubscriptionIn(name="s", url="https://hooks.example/s", secret=SECRET), T0
        )
        assert SECRET.encode() not in database_text(engine)
    finally:
        engine.dispose()


def test_a_malformed_key_in_the_configuration_is_named_without_its_value() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("alerting.secret_key: must be base64 of 32 random bytes")
    ) as refused:
        load_config(environ={SECRET_KEY_ENV: "c2hvcnQta2V5"})  # "short-key"
    assert "c2hvcnQta2V5" not in str(refused.value)
    assert AlertingSettings.model_validate({"secret_key": generate_key()}).secret_key is not None
