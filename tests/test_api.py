"""The HTTP API (the `/v1` routes, probes, metrics) through TestClient, on SQLite and PostgreSQL.

Alerts are written the way the alert engine writes them: :meth:`AlertStore.evaluation` and
:meth:`AlertWork.save_alert`, in one transaction each.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from monitor.api.app import RuntimeStatus, StatusProvider, create_app
from monitor.api.server import ApiServer
from monitor.api.settings import ApiSettings, check_exposure, is_loopback
from monitor.config import AppConfig, load_config
from monitor.errors import ConfigError
from monitor.metrics import Histogram
from storage import (
    AlertState,
    AlertStore,
    AnomalyRow,
    AttemptIn,
    DeadLetterIn,
    DeliveryIn,
    EventRow,
    ResultRow,
    Store,
    SubscriptionIn,
    WindowRecord,
    make_engine,
    migrate,
)
from tests.stored_state import alert_states

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SECRET = "hunter2-very-secret"
READ, ADMIN = "read-token-1", "admin-token-1"


@dataclass
class Api:
    store: Store
    alerts: AlertStore
    client: TestClient


def build(
    store: Store,
    alerts: AlertStore,
    settings: ApiSettings | None = None,
    provider: StatusProvider | None = None,
    **kwargs: Any,
) -> TestClient:
    app = create_app(store, alerts, settings or ApiSettings(), status_provider=provider, **kwargs)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, AlertStore]]:
    engine = make_engine(database_url)
    migrate(engine)
    try:
        yield Store(engine), AlertStore(engine)
    finally:
        engine.dispose()


@pytest.fixture
def api(stores: tuple[Store, AlertStore]) -> Api:
    store, alerts = stores
    return Api(store, alerts, build(store, alerts))


@pytest.fixture
def sqlite_stores(tmp_path: Any) -> Iterator[tuple[Store, AlertStore]]:
    """For tests of the API layer alone, where the backend does not matter."""
    engine = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    migrate(engine)
    try:
        yield Store(engine), AlertStore(engine)
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------ builders


def add_alert(
    alerts: AlertStore,
    *,
    at: datetime = T0,
    model: str = "fraud",
    detector: str = "vae_anomaly",
    threat: str = "robustness",
    severity: str = "warning",
) -> AlertState:
    """Open one firing alert through the engine's transaction."""
    state = AlertState(
        id=None,
        fingerprint=uuid.uuid4().hex,
        model=model,
        detector=detector,
        threat=threat,
        severity=severity,
        state="firing",
        title=f"{detector} on {model}",
        summary="something is off",
        window_start=at - MIN,
        window_end=at,
        statistic=0.2,
        threshold=0.05,
        p_value=1e-4,
        details={"anomalous": 20},
        first_seen=at,
        last_seen=at,
        count=1,
        resolved_at=None,
        subject="",
        clean_streak=0,
        streak_window=None,
    )
    with alerts.evaluation(at) as work:
        assert work is not None
        return work.save_alert(state)


def resolve(alerts: AlertStore, alert: AlertState, at: datetime) -> AlertState:
    with alerts.evaluation(at) as work:
        assert work is not None
        return work.save_alert(replace(alert, state="resolved", resolved_at=at))


def add_window(
    store: Store, k: int, model: str = "fraud", detectors: tuple[str, ...] = ("vae_anomaly",)
) -> None:
    start = T0 + k * MIN
    events = [EventRow(f"{model}-{k}-{i}", start + timedelta(seconds=i), None, "a", None) for i in range(3)]
    store.store_window(
        WindowRecord(
            model=model,
            start=start,
            end=start + MIN,
            n_late=0,
            events=events,
            results=[
                ResultRow(d, "robustness", "alert" if k % 2 else "ok", 3, 0.1 * k, 0.05, 0.01, {"k": k}, None)
                for d in detectors
            ],
            anomalies=[AnomalyRow("vae_anomaly", events[0].event_id, 10.0 + k, start, "c1", {"x": 1.0})],
            closed_at=start + MIN,
        )
    )


def all_text(client: TestClient, paths: list[str], headers: dict[str, str] | None = None) -> str:
    return "".join(client.get(p, headers=headers).text for p in paths)


# ------------------------------------------------------------------------------------ alerts


def test_alert_pages_lose_and_repeat_nothing_while_alerts_arrive(api: Api) -> None:
    # last_seen deliberately out of id order: the pages must follow the immutable id, not last_seen.
    original = [add_alert(api.alerts, at=T0 + (i * 7 % 23) * MIN).id or 0 for i in range(23)]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        body = api.client.get("/v1/alerts", params=params).json()
        seen += [a["id"] for a in body["items"]]
        pages += 1
        # Between page requests: a new alert, and a persisting condition updating an old alert (as the
        # engine does: last_seen and count), which moves it to the top of a last_seen ordering.
        add_alert(api.alerts, at=T0 + (100 + pages) * MIN)
        [old] = [a for a in alert_states(api.alerts) if a.id == original[pages]]
        with api.alerts.evaluation(T0) as work:
            assert work is not None
            work.save_alert(replace(old, last_seen=T0 + (200 + pages) * MIN, count=old.count + 1))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(original, reverse=True)  # newest first, each exactly once
    assert pages == 5
    newest = api.client.get("/v1/alerts", params={"limit": 1}).json()["items"][0]
    assert newest["id"] > max(original)


def test_alert_filters_and_times(api: Api) -> None:
    a = add_alert(api.alerts, at=T0, model="fraud", detector="feature_drift", threat="drift", severity="info")
    b = add_alert(api.alerts, at=T0 + MIN, model="fraud", severity="critical")
    c = add_alert(api.alerts, at=T0 + 2 * MIN, model="churn", severity="critical")
    resolve(api.alerts, c, T0 + 3 * MIN)

    def ids(**params: Any) -> list[int]:
        response = api.client.get("/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        return [x["id"] for x in response.json()["items"]]

    assert ids() == [c.id, b.id, a.id]
    assert ids(model="fraud") == [b.id, a.id]
    assert ids(detector="feature_drift") == [a.id]
    assert ids(threat="drift") == [a.id]
    assert ids(severity="critical") == [c.id, b.id]
    assert ids(state="resolved") == [c.id]
    assert ids(state="firing", model="churn") == []
    # since <= last_seen < until, offsets accepted and converted.
    assert ids(since="2026-11-28T10:01:00Z") == [c.id, b.id]
    assert ids(until="2026-11-28T11:01:00+01:00") == [a.id]
    item = api.client.get("/v1/alerts", params={"state": "resolved"}).json()["items"][0]
    assert item["first_seen"] == "2026-11-28T10:02:00Z"
    assert item["resolved_at"] == "2026-11-28T10:03:00Z"
    assert item["window_start"] == "2026-11-28T10:01:00Z"
    assert set(item) >= {
        "fingerprint",
        "title",
        "summary",
        "statistic",
        "threshold",
        "p_value",
        "details",
        "count",
    }


def test_alert_detail_shows_deliveries_and_attempts_but_no_secret(api: Api) -> None:
    created = api.client.post(
        "/v1/subscriptions", json={"name": "oncall", "url": "https://hooks.example/x", "secret": SECRET}
    )
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    alert = add_alert(api.alerts)
    assert alert.id is not None
    with api.alerts.evaluation(T0) as work:
        assert work is not None
        work.add_delivery(
            DeliveryIn(
                alert.id,
                f"subscription:{sub_id}",
                "webhook",
                sub_id,
                None,
                "firing",
                "firing",
                "warning",
                b'{"x": 1}',
                T0,
            )
        )
    [job] = api.alerts.claim_deliveries("w1", T0)
    api.alerts.record_attempt(
        job.id, "w1", AttemptIn(T0, 12.5, 500, "server error", "retry"), next_attempt_at=T0 + MIN
    )
    detail = api.client.get(f"/v1/alerts/{alert.id}")
    assert detail.status_code == 200
    body = detail.json()
    [delivery] = body["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["subscription_id"]) == ("pending", 1, sub_id)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in delivery["attempt_log"]] == [
        (1, 500, "retry")
    ]
    # A subscription from the configuration file carries a secret too.
    api.alerts.sync_config_subscriptions(
        [SubscriptionIn(name="from-config", url="https://hooks.example/c", secret=SECRET + "-config")], T0
    )
    everything = detail.text + created.text
    everything += all_text(
        api.client,
        [
            "/v1/alerts",
            f"/v1/alerts/{alert.id}",
            "/v1/subscriptions",
            f"/v1/subscriptions/{sub_id}",
            "/v1/models",
            "/v1/silences",
            "/v1/dead-letters",
            "/metrics",
            "/openapi.json",
        ],
    )
    assert SECRET not in everything and "hunter2" not in everything
    assert "from-config" in everything  # the listing did include the configured subscription
    assert api.client.get("/v1/subscriptions").json()["items"][0]["has_secret"] is True


def test_unknown_ids_are_404(api: Api) -> None:
    assert api.client.get("/v1/alerts/999").status_code == 404
    assert api.client.delete("/v1/subscriptions/999").status_code == 404
    assert api.client.delete("/v1/silences/999").status_code == 404


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/alerts?limit=0", "limit"),
        ("/v1/alerts?limit=1001", "limit"),
        ("/v1/alerts?since=2026-11-28T10:00:00", "since"),  # no offset: ambiguous
        ("/v1/alerts?until=yesterday", "until"),
        ("/v1/alerts?severity=bad", "severity"),
        ("/v1/alerts?state=open", "state"),
        ("/v1/alerts?cursor=not-a-cursor", "cursor"),
        ("/v1/alerts?cursor=YTo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ", "cursor"),  # an id beyond 64 bits
        ("/v1/windows?cursor=YTox", "cursor"),  # an alert cursor is not a window cursor
        ("/v1/anomalies?limit=-3", "limit"),
        ("/v1/dead-letters?limit=5000", "limit"),
        ("/v1/alerts/abc", "alert_id"),
        ("/v1/alerts/99999999999999999999999", "alert_id"),
    ],
)
def test_invalid_parameters_are_422_naming_the_field(
    sqlite_stores: tuple[Store, AlertStore], path: str, field: str
) -> None:
    client = build(*sqlite_stores)
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert any(field in err["loc"] for err in response.json()["detail"]), response.json()


def test_invalid_bodies_are_422_naming_the_field(sqlite_stores: tuple[Store, AlertStore]) -> None:
    client = build(*sqlite_stores)
    bad_url = client.post("/v1/subscriptions", json={"url": "ftp://x"})
    assert bad_url.status_code == 422 and bad_url.json()["detail"][0]["loc"] == ["body", "url"]
    bad_sev = client.post("/v1/subscriptions", json={"url": "https://x.example", "min_severity": "loud"})
    assert bad_sev.status_code == 422 and bad_sev.json()["detail"][0]["loc"] == ["body", "min_severity"]
    extra = client.post("/v1/subscriptions", json={"url": "https://x.example", "colour": "red"})
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "colour"]
    naive = client.post("/v1/silences", json={"ends_at": "2026-12-01T00:00:00", "model": "m"})
    assert naive.status_code == 422 and naive.json()["detail"][0]["loc"] == ["body", "ends_at"]
    no_matcher = client.post("/v1/silences", json={"ends_at": "2099-12-01T00:00:00Z"})
    assert no_matcher.status_code == 422 and "at least one" in no_matcher.text


# ------------------------------------------------------------------------------------ windows, models, ...


def test_windows_anomalies_and_models(api: Api) -> None:
    for k in range(7):
        add_window(api.store, k, detectors=("vae_anomaly", "feature_drift"))
    add_window(api.store, 0, model="churn")
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"model": "fraud", "limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = api.client.get("/v1/windows", params=params).json()
        seen += [(r["window_start"], r["detector"]) for r in body["items"]]
        if len(seen) == 4:
            add_window(api.store, 50)  # a newer window between pages must not shift the rest
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 14
    assert [s for s, _ in seen] == sorted((s for s, _ in seen), reverse=True)
    assert seen[-1][0] == "2026-11-28T10:00:00Z"

    only = api.client.get(
        "/v1/windows", params={"model": "fraud", "detector": "feature_drift", "since": "2026-11-28T10:05:00Z"}
    ).json()["items"]
    assert [(r["window_start"], r["status"], r["n_events"]) for r in only] == [
        ("2026-11-28T10:06:00Z", "ok", 3),
        ("2026-11-28T10:05:00Z", "alert", 3),
    ]

    anomalies = api.client.get("/v1/anomalies", params={"model": "fraud", "limit": 2}).json()["items"]
    assert [a["score"] for a in anomalies] == [60.0, 16.0]
    assert anomalies[0]["event_time"] == "2026-11-28T10:50:00Z"
    window = api.client.get("/v1/anomalies", params={"until": "2026-11-28T10:01:00Z"}).json()["items"]
    assert sorted(a["model"] for a in window) == ["churn", "fraud"]

    models = {m["name"]: m for m in api.client.get("/v1/models").json()["items"]}
    assert set(models) == {"churn", "fraud"}
    assert models["fraud"]["last_window"]["start"] == "2026-11-28T10:50:00Z"
    assert models["fraud"]["reference"] is None and models["fraud"]["runtime"] is None
    api.store.save_reference("fraud", "file", "a" * 64, b"payload", 123)
    assert api.client.get("/v1/models").json()["items"][1]["reference"]["n_events"] == 123


def test_dead_letters_raw_bytes_and_preview(api: Api) -> None:
    api.store.add_dead_letters(
        [
            DeadLetterIn("preds", 0, 5, b"k", b'{"bad": json', "not JSON", None, T0),
            DeadLetterIn("preds", 1, 9, None, b"\xff\xfe\x00", "not UTF-8", "fraud", T0 + MIN),
        ]
    )
    items = api.client.get("/v1/dead-letters", params={"limit": 10}).json()["items"]
    assert [i["reason"] for i in items] == ["not UTF-8", "not JSON"]
    binary, text = items
    assert base64.b64decode(binary["raw_base64"]) == b"\xff\xfe\x00" and binary["preview"] is None
    assert text["preview"] == '{"bad": json' and text["key_base64"] == base64.b64encode(b"k").decode()
    assert (text["topic"], text["partition"], text["offset"], text["received_at"]) == (
        "preds",
        0,
        5,
        "2026-11-28T10:00:00Z",
    )
    assert len(api.client.get("/v1/dead-letters", params={"limit": 1}).json()["items"]) == 1


def test_subscriptions_and_silences_crud(api: Api) -> None:
    made = api.client.post(
        "/v1/subscriptions",
        json={
            "url": "https://hooks.example/a",
            "format": "slack",
            "models": ["fraud"],
            "threats": ["drift"],
            "min_severity": "warning",
        },
    )
    assert made.status_code == 201, made.text
    sub = made.json()
    assert (sub["has_secret"], sub["models"], sub["threats"], sub["source"]) == (
        False,
        ["fraud"],
        ["drift"],
        "api",
    )
    assert "secret" not in sub
    dup = api.client.post("/v1/subscriptions", json={"name": sub["name"], "url": "https://hooks.example/b"})
    assert dup.status_code == 409
    assert [s["id"] for s in api.client.get("/v1/subscriptions").json()["items"]] == [sub["id"]]
    assert api.client.get(f"/v1/subscriptions/{sub['id']}").json() == sub
    assert api.client.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    assert api.client.delete(f"/v1/subscriptions/{sub['id']}").status_code == 404
    assert api.client.get(f"/v1/subscriptions/{sub['id']}").status_code == 404
    assert api.client.get("/v1/subscriptions").json()["items"] == []

    future = datetime.now(UTC) + timedelta(hours=1)
    silence = api.client.post(
        "/v1/silences", json={"model": "fraud", "ends_at": future.isoformat(), "comment": "retraining"}
    )
    assert silence.status_code == 201, silence.text
    later = api.client.post(
        "/v1/silences",
        json={
            "detector": "probing",
            "starts_at": (future + MIN).isoformat(),
            "ends_at": (future + 2 * MIN).isoformat(),
        },
    ).json()
    assert [s["id"] for s in api.client.get("/v1/silences").json()["items"]] == [
        silence.json()["id"],
        later["id"],
    ]
    assert [s["id"] for s in api.client.get("/v1/silences?active=true").json()["items"]] == [
        silence.json()["id"]
    ]
    assert silence.json()["ends_at"].endswith("Z")
    assert api.client.delete(f"/v1/silences/{later['id']}").status_code == 204
    assert len(api.client.get("/v1/silences").json()["items"]) == 1


# ------------------------------------------------------------------------------------ auth


def test_bearer_tokens_and_scopes(sqlite_stores: tuple[Store, AlertStore]) -> None:
    client = build(*sqlite_stores, ApiSettings(read_tokens=[READ, "other"], admin_tokens=[ADMIN]))
    body = {"url": "https://hooks.example/x"}

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    for path in ("/v1/alerts", "/v1/models", "/v1/windows", "/v1/subscriptions", "/v1/dead-letters"):
        missing = client.get(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert client.get(path, headers=auth("wrong")).status_code == 401
        assert client.get(path, headers={"Authorization": f"Basic {READ}"}).status_code == 401
        assert client.get(path, headers=auth(READ)).status_code == 200
        assert client.get(path, headers=auth(ADMIN)).status_code == 200  # admin can read
    assert client.get("/v1/alerts/stream").status_code == 401
    assert client.post("/v1/subscriptions", json=body).status_code == 401
    assert client.post("/v1/subscriptions", json=body, headers=auth(READ)).status_code == 403
    assert client.post("/v1/silences", json={}, headers=auth(READ)).status_code == 403
    assert client.delete("/v1/silences/1", headers=auth("other")).status_code == 403
    assert client.post("/v1/subscriptions", json=body, headers=auth(ADMIN)).status_code == 201
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(open_path).status_code == 200


def test_no_tokens_means_open_but_only_on_loopback() -> None:
    check_exposure(ApiSettings())  # 127.0.0.1 without tokens: fine
    check_exposure(ApiSettings(host="::1"))
    check_exposure(ApiSettings(host="0.0.0.0", read_tokens=["t"]))
    check_exposure(ApiSettings(host="0.0.0.0", allow_unauthenticated_remote=True))
    with pytest.raises(ConfigError, match=r"api\.host.*0\.0\.0\.0.*tokens"):
        check_exposure(ApiSettings(host="0.0.0.0"))
    for bad in ([""], [" padded "]):
        with pytest.raises(ConfigError, match=r"api\.read_tokens"):
            load_config(None, {"SENTINEL_API__READ_TOKENS": json.dumps(bad)})
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("example.com")
    config = AppConfig.model_validate({"api": {"host": "10.1.2.3"}})
    from monitor.daemon import Daemon

    with pytest.raises(ConfigError):
        Daemon(config)
    Daemon(AppConfig.model_validate({"api": {"host": "10.1.2.3", "enabled": False}}))


# ------------------------------------------------------------------------------------ probes, metrics


def test_readiness_names_the_failing_check(sqlite_stores: tuple[Store, AlertStore]) -> None:
    status = RuntimeStatus(
        state="running",
        broker_connected=True,
        partitions_assigned=2,
        models_ready=True,
        models={"fraud": {"phase": "ready", "open_windows": 2}},
        counters={"consumed": 10, "rejected": 2, "duplicates": 1},
    )
    current = [status]
    client = build(*sqlite_stores, provider=lambda: current[0])
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["checks"].values()) == {"ok"}
    for change, check in (
        ({"broker_connected": False}, "broker"),
        ({"partitions_assigned": 0}, "partitions"),
        ({"models_ready": False, "models": {"fraud": {"phase": "fitting"}}}, "models"),
        ({"state": "stopping"}, "daemon"),
    ):
        current[0] = replace(status, **change)
        response = client.get("/readyz")
        assert response.status_code == 503
        failed = {k for k, v in response.json()["checks"].items() if v != "ok"}
        assert failed == {check}, response.json()


def test_readiness_fails_when_the_database_does_not_answer(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'missing.db'}")  # its directory does not exist
    client = build(Store(engine), AlertStore(engine))
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"] != "ok"
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/alerts").status_code == 503  # database unavailable, not a stack trace


def test_metrics_text_format(sqlite_stores: tuple[Store, AlertStore]) -> None:
    store, alerts = sqlite_stores
    add_alert(alerts, severity="critical")
    add_alert(alerts, severity="critical")
    resolve(alerts, add_alert(alerts, severity="info"), T0 + MIN)
    status = RuntimeStatus(
        models={"fraud": {"phase": "ready", "open_windows": 3}},
        counters={"consumed": 10, "rejected": 2, "duplicates": 1},
    )
    response = build(store, alerts, provider=lambda: status).get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert {
        "sentinel_events_consumed_total 10",
        "sentinel_events_rejected_total 2",
        "sentinel_events_duplicates_total 1",
        'sentinel_alerts{state="firing",severity="critical"} 2',
        'sentinel_alerts{state="resolved",severity="info"} 1',
        'sentinel_alerts{state="firing",severity="info"} 0',
        "sentinel_deliveries_pending 0",
        'sentinel_open_windows{model="fraud"} 3',
        "# TYPE sentinel_events_consumed_total counter",
    } <= lines


def test_metrics_histograms_and_lag(sqlite_stores: tuple[Store, AlertStore]) -> None:
    detector_seconds = Histogram(bounds=(0.01, 0.1, 1.0))
    for seconds in (0.005, 0.05, 0.05, 3.0):
        detector_seconds.observe(seconds, "vae_anomaly")
    status = RuntimeStatus(
        consumer_lag={("events", 0): 0, ("events", 3): 1200},
        events_by_model={("fraud", "accepted"): 90, ("", "rejected"): 4},
        histograms={"sentinel_detector_seconds": detector_seconds.snapshot()},
    )
    lines = build(*sqlite_stores, provider=lambda: status).get("/metrics").text.splitlines()
    assert "# TYPE sentinel_detector_seconds histogram" in lines
    # Cumulative buckets, +Inf equal to the count, and the sum of the observations.
    assert [line for line in lines if line.startswith("sentinel_detector_seconds")] == [
        'sentinel_detector_seconds_bucket{detector="vae_anomaly",le="0.01"} 1',
        'sentinel_detector_seconds_bucket{detector="vae_anomaly",le="0.1"} 3',
        'sentinel_detector_seconds_bucket{detector="vae_anomaly",le="1"} 3',
        'sentinel_detector_seconds_bucket{detector="vae_anomaly",le="+Inf"} 4',
        'sentinel_detector_seconds_sum{detector="vae_anomaly"} 3.105',
        'sentinel_detector_seconds_count{detector="vae_anomaly"} 4',
    ]
    assert 'sentinel_consumer_lag{topic="events",partition="3"} 1200' in lines
    assert 'sentinel_model_events_total{model="fraud",outcome="accepted"} 90' in lines
    assert 'sentinel_model_events_total{model="",outcome="rejected"} 4' in lines


def test_unexpected_errors_are_500_without_details(
    sqlite_stores: tuple[Store, AlertStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, alerts = sqlite_stores

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("internal detail /etc/passwd")

    monkeypatch.setattr(store, "anomalies", boom)
    response = build(store, alerts).get("/v1/anomalies")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"} and "passwd" not in response.text


def test_openapi_document_covers_the_contract(sqlite_stores: tuple[Store, AlertStore]) -> None:
    doc = build(*sqlite_stores).get("/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/v1/alerts",
        "/v1/alerts/{alert_id}",
        "/v1/windows",
        "/v1/anomalies",
        "/v1/subscriptions",
        "/v1/alerts/stream",
        "/v1/dead-letters",
        "/v1/silences",
    ):
        assert path in paths, path
    schemas = doc["components"]["schemas"]
    assert "secret" not in schemas["SubscriptionOut"]["properties"]
    assert schemas["SubscriptionOut"]["properties"]["has_secret"]["type"] == "boolean"
    assert schemas["AlertOut"]["properties"]["first_seen"]["format"] == "date-time"
    stream = paths["/v1/alerts/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    alert_params = {p["name"] for p in paths["/v1/alerts"]["get"]["parameters"]}
    assert alert_params == {
        "model",
        "detector",
        "threat",
        "severity",
        "state",
        "since",
        "until",
        "limit",
        "cursor",
    }
    assert paths["/v1/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AlertPage"
    }


# ------------------------------------------------------------------------------------ SSE


def read_events(
    client: TestClient, headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each event of one (bounded) stream."""
    response = client.get("/v1/alerts/stream", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if fields.get("event") == "alert":
            events.append((fields["id"], json.loads(fields["data"])))
    return events


def test_stream_sends_changes_in_order_and_resumes(stores: tuple[Store, AlertStore]) -> None:
    store, alerts = stores
    before = add_alert(alerts, at=T0)
    assert before.id is not None
    client = build(store, alerts, stream_poll_interval=0.05, stream_duration=0.7)
    [(start_id, first_event)] = read_events(client, {"Last-Event-ID": "0-0-0"})
    assert (first_event["status"], first_event["alert"]["id"]) == ("firing", before.id)

    def later() -> None:
        time.sleep(0.2)  # while the stream below is open (it polls every 0.05 s for 0.7 s)
        first = add_alert(alerts, at=T0 + MIN)
        add_alert(alerts, at=T0 + 2 * MIN)
        resolve(alerts, first, T0 + 3 * MIN)

    writer = threading.Thread(target=later)
    writer.start()
    live = read_events(client, {"Last-Event-ID": start_id})
    writer.join()
    got = [(e["status"], e["alert"]["id"]) for _, e in live]
    assert got == [("firing", before.id + 1), ("firing", before.id + 2), ("resolved", before.id + 1)]
    assert live[-1][1]["alert"]["resolved_at"] == "2026-11-28T10:03:00Z"
    ids = [event_id for event_id, _ in live]
    assert len(set(ids)) == 3

    # Resume after the first live event: exactly the rest, in the same order, with the same ids.
    assert read_events(client, {"Last-Event-ID": live[0][0]}) == live[1:]
    assert read_events(client, {"Last-Event-ID": live[-1][0]}) == []
    everything = read_events(client, {"Last-Event-ID": "0-0-0"})
    assert [(e["status"], e["alert"]["id"]) for _, e in everything] == [("firing", before.id), *got]
    # A new stream without Last-Event-ID starts at the present: nothing old is replayed.
    assert read_events(client) == []
    assert client.get("/v1/alerts/stream", headers={"Last-Event-ID": "nonsense"}).status_code == 422


# ------------------------------------------------------------------------------------ the real server


def test_api_server_serves_on_a_real_socket(sqlite_stores: tuple[Store, AlertStore]) -> None:
    store, alerts = sqlite_stores
    server = ApiServer(create_app(store, alerts, ApiSettings()), "127.0.0.1", 0)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        response = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert response.json() == {"status": "ok"}
        with pytest.raises(OSError):
            ApiServer(create_app(store, alerts, ApiSettings()), "127.0.0.1", server.port)  # port taken
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.kafka
def test_daemon_serves_the_api_and_reports_readiness(broker: Any, database_url: str, tmp_path: Any) -> None:
    from kafka import KafkaProducer

    from monitor.broker import create_topic
    from monitor.daemon import Daemon, RunState
    from tests.helpers import MODEL, windowed_traffic, write_reference

    topic = f"api-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 2)
    config = AppConfig.model_validate(
        {
            "database_url": database_url,
            "tick_interval": "0.3s",
            "close_on_wall_clock": False,
            "kafka": {
                "bootstrap_servers": broker.bootstrap_servers,
                "topic": topic,
                "group_id": f"g-{topic}",
            },
            "models": {
                MODEL: {
                    "reference": {"source": "file", "path": str(write_reference(tmp_path / "ref.jsonl"))},
                    "detectors": {"output_drift": {}},
                }
            },
            "api": {"port": 0, "read_tokens": [READ]},
        }
    )
    daemon = Daemon(config)
    exit_codes: list[int] = []
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while (daemon.api is None or not daemon.api.started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.api is not None
        base = f"http://127.0.0.1:{daemon.api.port}"
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        for event in windowed_traffic([False], per_window=50):
            producer.send(topic, value=json.dumps(event).encode(), key=MODEL.encode())
        producer.flush()
        producer.close()
        ready, metrics = None, ""
        while time.monotonic() < deadline:
            ready = httpx.get(f"{base}/readyz", timeout=5)
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            lag_lines = [f'sentinel_consumer_lag{{topic="{topic}",partition="{p}"}} 0' for p in (0, 1)]
            if ready.status_code == 200 and all(line in metrics for line in lag_lines):
                break
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, ready.text if ready else None
        assert "sentinel_events_consumed_total 50" in metrics
        assert f'sentinel_model_events_total{{model="{MODEL}",outcome="accepted"}} 50' in metrics
        # Both partitions are owned and fully read (measured every few seconds).
        assert all(line in metrics for line in lag_lines), metrics
        assert set(ready.json()["checks"]) == {"database", "daemon", "broker", "partitions", "models"}
        assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
        models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {READ}"}, timeout=5).json()
        [model] = [m for m in models["items"] if m["name"] == MODEL]
        assert model["runtime"]["phase"] == "ready"
    finally:
        daemon.request_stop()
        runner.join(60)
    assert daemon.state is RunState.STOPPED and exit_codes == [0]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)
