"""The alert lifecycle: pure rules without a database, then the engine on SQLite and PostgreSQL.

Time is always injected: the engine's ``now`` is passed to ``run_once``, nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select, text

from monitor.alerting import (
    AlertEngine,
    AlertingSettings,
    SeverityBands,
    SilenceMatcher,
    Target,
    fingerprint,
    needs_notification,
    observe_clean,
    observe_failure,
    open_alert,
    severity_of,
    silenced,
    subject_of,
)
from monitor.alerting.lifecycle import MAX_SUBJECTS
from monitor.config import load_config
from monitor.errors import ConfigError
from storage import (
    AlertState,
    AlertStore,
    AlertWork,
    NotificationLogEntry,
    ResultEvent,
    ResultRow,
    SilenceIn,
    Store,
    SubscriptionIn,
    SubscriptionRecord,
    WindowRecord,
    make_engine,
    migrate,
)
from storage import models as orm
from storage.migrate import alembic_config, current_revision, head_revision
from tests.stored_state import alert_cursor, alert_states, unprocessed_results

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
MODEL = "fraud-scorer"
HOUR = timedelta(hours=1)


# ----------------------------------------------------------------------------------- builders


def event(
    status: str = "alert",
    *,
    k: int = 0,
    detector: str = "vae_anomaly",
    p: float | None = 1e-4,
    statistic: float | None = 0.2,
    threshold: float | None = 0.05,
    subject: str | None = None,
    model: str = MODEL,
) -> ResultEvent:
    evidence: dict[str, Any] = {"anomalous": 20}
    if subject is not None:
        evidence["subject"] = subject
    return ResultEvent(
        id=k + 1,
        revision=k + 1,
        window_id=k + 1,
        model=model,
        detector=detector,
        threat="robustness",
        status=status,
        statistic=statistic,
        threshold=threshold,
        p_value=p,
        n_events=100,
        evidence=evidence,
        reason=None,
        window_start=T0 + k * MIN,
        window_end=T0 + (k + 1) * MIN,
        updated_at=T0,
    )


def logged(status: str, severity: str, at: datetime) -> NotificationLogEntry:
    return NotificationLogEntry(alert_id=1, target="subscription:1", status=status, severity=severity, at=at)


def sub_record(**changes: Any) -> SubscriptionRecord:
    values: dict[str, Any] = {
        "id": 1,
        "name": "oncall",
        "url": "http://127.0.0.1:1/hook",
        "format": "native",
        "models": (),
        "detectors": (),
        "threats": (),
        "min_severity": "info",
        "source": "api",
        "has_secret": True,
        "created_at": T0,
        "updated_at": T0,
        "deleted_at": None,
    }
    values.update(changes)
    return SubscriptionRecord(**values)


# ----------------------------------------------------------------------------------- pure rules


REPEAT = timedelta(hours=4)


@pytest.mark.parametrize(
    ("last", "state", "severity", "now", "expected"),
    [
        (None, "firing", "warning", T0, "firing"),
        (None, "resolved", "warning", T0, None),  # never told it fired: nothing to resolve
        (logged("firing", "warning", T0), "firing", "warning", T0 + REPEAT - MIN, None),
        (logged("firing", "warning", T0), "firing", "warning", T0 + REPEAT, "repeat"),
        (logged("firing", "warning", T0), "firing", "critical", T0 + MIN, "escalated"),
        (logged("firing", "critical", T0), "firing", "warning", T0 + MIN, None),  # never de-escalates
        (logged("firing", "warning", T0), "resolved", "warning", T0 + MIN, "resolved"),
        (logged("resolved", "warning", T0), "resolved", "warning", T0 + REPEAT * 3, None),  # once only
        (logged("resolved", "warning", T0), "firing", "warning", T0 + MIN, "firing"),
    ],
)
def test_needs_notification_is_a_pure_function_of_the_log_and_now(
    last: NotificationLogEntry | None, state: str, severity: str, now: datetime, expected: str | None
) -> None:
    assert (
        needs_notification(last, state=state, severity=severity, now=now, repeat_interval=REPEAT) == expected
    )


def test_severity_bands_from_p_value_and_effect_size() -> None:
    bands = SeverityBands()
    assert severity_of(event(p=1e-9), bands) == "critical"
    assert severity_of(event(p=1e-4), bands) == "warning"
    assert severity_of(event(p=0.004), bands) == "info"
    assert severity_of(event(p=None, statistic=None), bands) == "warning"  # nothing to grade: the middle
    effect = SeverityBands(critical_effect=4, warning_effect=2)
    assert severity_of(event(p=0.004, statistic=0.2, threshold=0.05), effect) == "critical"  # ratio 4
    assert severity_of(event(p=0.004, statistic=0.11, threshold=0.05), effect) == "warning"
    assert severity_of(event(p=1e-9, statistic=0.06, threshold=0.05), effect) == "critical"  # stronger wins
    # performance: accuracy below its critical accuracy is worse, so the ratio is inverted.
    perf = event(detector="performance", p=0.004, statistic=0.2, threshold=0.9)  # ratio 4.5
    assert severity_of(perf, effect) == "critical"
    assert severity_of(replace(perf, statistic=0.8), effect) == "info"


def test_fingerprint_is_stable_per_model_detector_subject() -> None:
    a = fingerprint(MODEL, "evasion", "client-1")
    assert a == fingerprint(MODEL, "evasion", "client-1") and len(a) == 64
    assert len({a, fingerprint(MODEL, "evasion", "client-2"), fingerprint(MODEL, "probing", "client-1")}) == 3
    assert subject_of({"subject": "client-1"}) == "client-1"
    assert subject_of({"drifted": ["x"]}) == ""


def test_failure_and_clean_windows_transitions() -> None:
    alert = replace(open_alert(event(k=5), "warning", T0), id=1)
    assert (alert.count, alert.streak_window, alert.clean_streak) == (1, T0 + 5 * MIN, 0)
    # A newer failing window: counted, its evidence taken, severity may rise.
    newer = observe_failure(alert, event(k=6, p=1e-9), "critical", T0 + HOUR)
    assert (newer.count, newer.severity, newer.window_start, newer.last_seen) == (
        2,
        "critical",
        T0 + 6 * MIN,
        T0 + HOUR,
    )
    # The same window re-evaluated: evidence updated, not counted again, severity does not fall.
    again = observe_failure(newer, event(k=6, p=1e-5), "warning", T0 + 2 * HOUR)
    assert (again.count, again.severity, again.p_value) == (2, "critical", 1e-5)
    # An older window found failing later: counted, evidence stays the newest window's.
    older = observe_failure(again, event(k=2), "warning", T0 + 3 * HOUR)
    assert (older.count, older.window_start) == (3, T0 + 6 * MIN)

    assert observe_clean(older, T0 + 6 * MIN, T0, 3) is None  # not after the newest counted window
    one = observe_clean(older, T0 + 7 * MIN, T0, 3)
    assert one is not None and one.clean_streak == 1
    assert observe_clean(one, T0 + 7 * MIN, T0, 3) is None  # the same clean window is not counted twice
    two = observe_clean(one, T0 + 8 * MIN, T0, 3)
    assert two is not None and two.state == "firing"
    three = observe_clean(two, T0 + 10 * MIN, T0 + 4 * HOUR, 3)
    assert three is not None and (three.state, three.resolved_at) == ("resolved", T0 + 4 * HOUR)


def test_silences_and_filters() -> None:
    alert = replace(open_alert(event(), "warning", T0), id=1)
    until = T0 + HOUR
    assert silenced(alert, [SilenceMatcher(ends_at=until, model=MODEL)], T0)
    assert not silenced(alert, [SilenceMatcher(ends_at=until, model="other")], T0)
    assert not silenced(alert, [SilenceMatcher(ends_at=until, model=MODEL, detector="probing")], T0)
    assert silenced(alert, [SilenceMatcher(ends_at=until, fingerprint=alert.fingerprint)], T0)
    assert not silenced(alert, [SilenceMatcher(ends_at=until, model=MODEL)], until)  # ended
    assert not silenced(alert, [SilenceMatcher(ends_at=until, starts_at=T0 + MIN, model=MODEL)], T0)

    assert Target.webhook(sub_record()).matches(alert)
    assert not Target.webhook(sub_record(min_severity="critical")).matches(alert)
    assert not Target.webhook(sub_record(models=("other",))).matches(alert)
    assert Target.webhook(sub_record(detectors=("vae_anomaly",), threats=("robustness",))).matches(alert)
    assert not Target.webhook(sub_record(threats=("drift",))).matches(alert)
    assert Target.kafka("alerts").matches(alert)


def test_alerting_configuration_is_validated_by_key(tmp_path: Any) -> None:
    path = tmp_path / "sentinel.yaml"
    path.write_text(
        """
alerting:
  severity: {critical_p: 1.0e-7}
  detector_severity:
    feature_drift: {warning_effect: 2}
  subscriptions:
    - {name: oncall, url: "https://hooks.example.com/x", secret: topsecret, min_severity: warning}
  silences:
    - {model: fraud-scorer, until: "2026-12-01T00:00:00Z"}
  repeat_interval: 2h
"""
    )
    config = load_config(path, environ={"SENTINEL_ALERTING__RESOLVE_AFTER": "5"}).alerting
    assert (config.resolve_after, config.repeat_interval) == (5, 7200.0)
    merged = config.bands("feature_drift")
    assert (merged.critical_p, merged.warning_effect, merged.warning_p) == (1e-7, 2, 1e-3)
    assert config.bands("vae_anomaly").critical_p == 1e-7
    assert "topsecret" not in repr(config) and "topsecret" not in str(config.model_dump())

    path.write_text(
        """
alerting:
  resolve_after: 0
  detector_severity: {nope: {}}
  subscriptions: [{name: a, url: "ftp://x.example"}]
  silences: [{until: "2026-12-01T00:00:00"}]
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    keys = {key for key, _ in info.value.problems}
    assert {"alerting.resolve_after", "alerting.detector_severity", "alerting.subscriptions.0.url"} <= keys
    assert any(key.startswith("alerting.silences.0") for key in keys), keys


# ----------------------------------------------------------------------------------- the engine on a database


@pytest.fixture
def db(database_url: str) -> Iterator[tuple[Store, AlertStore]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine), AlertStore(engine)
    engine.dispose()


def row(
    status: str,
    detector: str = "vae_anomaly",
    p: float | None = 1e-4,
    subject: str | None = None,
    statistic: float = 0.2,
) -> ResultRow:
    evidence: dict[str, Any] = {"anomalous": 20, "top_events": [{"event_id": "e1", "score": 9.0}]}
    if subject is not None:
        evidence["subject"] = subject
    return ResultRow(
        detector=detector,
        threat="integrity" if detector == "performance" else "robustness",
        status=status,
        n_events=100,
        statistic=statistic,
        threshold=0.05,
        p_value=p,
        evidence=evidence,
        reason="too few events" if status == "skipped" else None,
    )


def put(store: Store, k: int, *results: ResultRow, model: str = MODEL) -> int:
    """Store window number ``k`` of ``model`` with these results; returns the window id."""
    stored = store.store_window(
        WindowRecord(
            model=model,
            start=T0 + k * MIN,
            end=T0 + (k + 1) * MIN,
            n_late=0,
            events=(),
            results=list(results),
            anomalies=(),
            closed_at=T0 + (k + 1) * MIN,
            n_events=100,
        )
    )
    return stored.id


def at(k: int) -> datetime:
    """Processing time of window ``k``: just after it closed."""
    return T0 + (k + 1) * MIN + timedelta(seconds=5)


def subscribe(alerts: AlertStore, name: str = "oncall", **filters: Any) -> int:
    return alerts.create_subscription(
        SubscriptionIn(name=name, url="http://127.0.0.1:9/hook", secret="s3cret", **filters), T0
    ).id


def deliveries(alerts: AlertStore) -> list[tuple[str, str, str]]:
    """(target, reason, severity) of every delivery, oldest first."""
    return [(d.target, d.reason, d.severity) for d in alerts.deliveries()]


def test_alert_opens_refreshes_and_resolves_after_consecutive_clean_windows(
    db: tuple[Store, AlertStore],
) -> None:
    store, alerts = db
    sub = subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=3))
    plan = ["ok", "alert", "alert", "skipped", "ok", "ok", "skipped", "alert", "ok", "ok", "ok"]
    states = []
    for k, status in enumerate(plan):
        put(store, k, row(status))
        report = engine.run_once(now=at(k))
        assert report.processed == 1
        [alert] = alert_states(alerts) or [None]  # type: ignore[list-item]
        states.append(None if alert is None else (alert.state, alert.count, alert.clean_streak))
    assert states == [
        None,
        ("firing", 1, 0),
        ("firing", 2, 0),
        ("firing", 2, 0),  # skipped: neither way
        ("firing", 2, 1),
        ("firing", 2, 2),
        ("firing", 2, 2),
        ("firing", 3, 0),  # a failure before the third clean window restarts the count
        ("firing", 3, 1),
        ("firing", 3, 2),
        ("resolved", 3, 3),
    ]
    [alert] = alerts.list_alerts()
    assert (alert.first_seen, alert.last_seen, alert.resolved_at) == (at(1), at(7), at(10))
    assert (alert.window_start, alert.window_end) == (T0 + 7 * MIN, T0 + 8 * MIN)  # newest failing window
    assert alert.details["top_events"] == [{"event_id": "e1", "score": 9.0}]
    assert alert.fingerprint == fingerprint(MODEL, "vae_anomaly", "")
    # One firing and one resolved notification: refreshes do not notify again.
    assert deliveries(alerts) == [
        (f"subscription:{sub}", "firing", "warning"),
        (f"subscription:{sub}", "resolved", "warning"),
    ]
    assert alert_cursor(alerts) == unprocessed_results(alerts) + alert_cursor(alerts) == len(plan)


def test_a_new_failure_after_resolution_opens_a_new_alert(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    for k, status in enumerate(["alert", "ok", "alert"]):
        put(store, k, row(status))
        engine.run_once(now=at(k))
    first, second = alert_states(alerts)
    assert first.fingerprint == second.fingerprint
    assert (first.state, second.state, second.count, second.first_seen) == ("resolved", "firing", 1, at(2))


def test_escalation_notifies_and_severity_never_falls_while_firing(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings())
    for k, p in enumerate([1e-4, 1e-9, 1e-4]):
        put(store, k, row("alert", p=p))
        engine.run_once(now=at(k))
    [alert] = alerts.list_alerts()
    assert (alert.severity, alert.count) == ("critical", 3)
    assert [(r, s) for _, r, s in deliveries(alerts)] == [("firing", "warning"), ("escalated", "critical")]


def test_repeat_notifications_while_firing(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings(repeat_interval=4 * 3600))
    put(store, 0, row("alert"))
    start = at(0)
    engine.run_once(now=start)
    for offset, expected in [
        (timedelta(hours=3, minutes=59), 1),
        (timedelta(hours=4), 2),
        (timedelta(hours=4, minutes=30), 2),
        (timedelta(hours=8), 3),
    ]:
        report = engine.run_once(now=start + offset)
        assert report.processed == 0
        assert len(alerts.deliveries()) == expected, offset
    assert [r for _, r, _ in deliveries(alerts)] == ["firing", "repeat", "repeat"]


def test_subjects_are_separate_alerts_and_another_subject_does_not_reset(
    db: tuple[Store, AlertStore],
) -> None:
    store, alerts = db
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=2))
    put(store, 0, row("alert", subject="client-a"))
    put(store, 1, row("ok"))
    put(store, 2, row("alert", subject="client-b"))  # neutral for client-a's alert
    put(store, 3, row("ok"))
    engine.run_once(now=at(3))
    by_subject = {a.subject: a for a in alert_states(alerts)}
    assert by_subject["client-a"].state == "resolved"  # clean windows 1 and 3
    assert (by_subject["client-b"].state, by_subject["client-b"].clean_streak) == ("firing", 1)
    assert by_subject["client-a"].fingerprint != by_subject["client-b"].fingerprint
    assert by_subject["client-a"].public().details["subject"] == "client-a"


def flagged(*clients: str, detector: str = "extraction") -> ResultRow:
    """A security detector's failing window naming several clients, each with its own finding."""
    findings = [
        {
            "subject": c,
            "statistic": 0.5 + i,
            "threshold": 0.9,
            "p_value": 10.0 ** -(6 - i),
            "event_ids": [f"{c}-1"],
        }
        for i, c in enumerate(clients)
    ]
    return replace(
        row("alert", detector=detector),
        threat="confidentiality",
        evidence={"subjects": list(clients), "findings": findings, "clients_tested": 21},
    )


def test_one_alert_per_flagged_subject_each_resolving_on_its_own(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=2))
    put(store, 0, flagged("attacker-1", "attacker-2"))
    engine.run_once(now=at(0))
    by_subject = {a.subject: a for a in alert_states(alerts)}
    assert set(by_subject) == {"attacker-1", "attacker-2"}
    first = by_subject["attacker-1"].public()
    # Each alert carries its own finding: the statistic, p-value and evidence of that client.
    assert (first.statistic, first.p_value) == (0.5, 1e-6)
    assert first.details["event_ids"] == ["attacker-1-1"] and first.details["clients_tested"] == 21
    assert by_subject["attacker-2"].public().p_value == 1e-5
    assert [reason for _, reason, _ in deliveries(alerts)] == ["firing", "firing"]
    # attacker-2 keeps attacking; attacker-1 stops: the windows that do not name it are clean for it.
    put(store, 1, flagged("attacker-2"))
    put(store, 2, flagged("attacker-2"))
    engine.run_once(now=at(2))
    by_subject = {a.subject: a for a in alert_states(alerts)}
    assert by_subject["attacker-1"].state == "resolved"
    assert (by_subject["attacker-2"].state, by_subject["attacker-2"].count) == ("firing", 3)
    assert len(alert_states(alerts)) == 2  # refreshed, not reopened


def test_a_window_naming_many_subjects_opens_a_bounded_number_of_alerts(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    put(store, 0, flagged(*[f"c{i}" for i in range(100)], detector="probing"))
    AlertEngine(alerts, AlertingSettings()).run_once(now=at(0))
    states = alert_states(alerts)
    assert len(states) == MAX_SUBJECTS and {a.subject for a in states} == {
        f"c{i}" for i in range(MAX_SUBJECTS)
    }
    assert all(a.public().details["subjects_flagged"] == 100 for a in states)


def test_results_updated_after_late_labels_are_processed(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=2))
    ids = [put(store, k, row("ok", detector="performance")) for k in range(3)]
    engine.run_once(now=at(2))
    assert alert_states(alerts) == []
    # Labels arrive late for window 1: performance is re-evaluated in place and now fails.
    store.update_result(ids[1], row("alert", detector="performance", p=1e-4))
    assert unprocessed_results(alerts) == 1
    engine.run_once(now=at(2) + HOUR)
    [alert] = alert_states(alerts)
    assert (alert.state, alert.count, alert.window_start) == ("firing", 1, T0 + MIN)
    # More labels for the same window: the same window re-evaluated, stronger. Not counted twice; escalates.
    store.update_result(ids[1], row("alert", detector="performance", p=1e-9))
    engine.run_once(now=at(2) + 2 * HOUR)
    [alert] = alert_states(alerts)
    assert (alert.count, alert.severity, alert.p_value) == (1, "critical", 1e-9)
    # Window 2 (clean, after the failing window 1) re-evaluated: counted once, and not again the second time.
    store.update_result(ids[2], row("ok", detector="performance"))
    engine.run_once(now=at(2) + 3 * HOUR)
    assert alert_states(alerts)[0].clean_streak == 1
    store.update_result(ids[2], row("ok", detector="performance", statistic=0.3))
    engine.run_once(now=at(2) + 3 * HOUR)
    assert (alert_states(alerts)[0].clean_streak, alert_states(alerts)[0].state) == (1, "firing")
    put(store, 3, row("ok", detector="performance"))
    engine.run_once(now=at(3) + 3 * HOUR)
    assert alert_states(alerts)[0].state == "resolved"
    assert [r for _, r, _ in deliveries(alerts)] == ["firing", "escalated", "resolved"]


def test_a_crash_inside_the_evaluation_leaves_nothing_and_the_retry_does_everything_once(
    db: tuple[Store, AlertStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, alerts = db
    subscribe(alerts)
    engine = AlertEngine(alerts, AlertingSettings())
    put(store, 0, row("alert"))
    put(store, 1, row("alert", subject="client-x"))

    original = AlertWork.add_delivery
    calls = {"n": 0}

    def crash_on_second(self: AlertWork, delivery: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed between the alert write and the second delivery")
        return original(self, delivery)

    monkeypatch.setattr(AlertWork, "add_delivery", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        engine.run_once(now=at(1))
    assert (alert_states(alerts), alerts.deliveries(), alert_cursor(alerts)) == ([], [], 0)

    monkeypatch.setattr(AlertWork, "add_delivery", original)
    engine.run_once(now=at(1))
    engine.run_once(now=at(1) + MIN)  # nothing new: nothing repeated
    assert sorted(a.subject for a in alert_states(alerts)) == ["", "client-x"]
    assert len(alerts.deliveries()) == 2 and alert_cursor(alerts) == 2


def test_silenced_alerts_are_stored_but_notify_no_one_until_the_silence_ends(
    db: tuple[Store, AlertStore],
) -> None:
    store, alerts = db
    subscribe(alerts)
    silence = alerts.create_silence(SilenceIn(ends_at=at(0) + HOUR, model=MODEL, comment="retraining"), T0)
    config_silenced = AlertingSettings.model_validate(
        {"silences": [{"detector": "probing", "until": (at(0) + 2 * HOUR).isoformat()}]}
    )
    engine = AlertEngine(alerts, config_silenced)
    put(store, 0, row("alert"), row("alert", detector="probing"), model="other-model")
    put(store, 0, row("alert"))
    engine.run_once(now=at(0))
    assert len(alert_states(alerts)) == 3
    # Only other-model's vae_anomaly alert is not matched by a silence.
    [only] = alerts.deliveries()
    assert alerts.alert(only.alert_id).model == "other-model"  # type: ignore[union-attr]
    assert [s.id for s in alerts.silences(active_at=at(0))] == [silence.id]

    engine.run_once(now=at(0) + HOUR)  # the database silence ended: its alert notifies now
    engine.run_once(now=at(0) + 2 * HOUR)  # and the configured one
    assert sorted(r for _, r, _ in deliveries(alerts)) == ["firing", "firing", "firing"]
    assert alerts.delete_silence(silence.id) and not alerts.delete_silence(silence.id)


def test_subscription_filters_and_resolution_to_whoever_heard_it_fire(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    everyone = subscribe(alerts, "everyone")
    critical = subscribe(alerts, "critical-only", min_severity="critical")
    other = subscribe(alerts, "other-model", models=["other"])
    drift = subscribe(alerts, "drift-only", threats=["drift"])
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1, kafka_topic="sentinel-alerts"))
    put(store, 0, row("alert", p=1e-4))
    engine.run_once(now=at(0))
    put(store, 1, row("alert", p=1e-9))
    engine.run_once(now=at(1))
    put(store, 2, row("ok"))
    engine.run_once(now=at(2))
    got = deliveries(alerts)
    assert got == [
        (f"subscription:{everyone}", "firing", "warning"),
        ("kafka:sentinel-alerts", "firing", "warning"),
        (f"subscription:{everyone}", "escalated", "critical"),
        (f"subscription:{critical}", "firing", "critical"),  # its first: it never heard of the warning
        ("kafka:sentinel-alerts", "escalated", "critical"),
        (f"subscription:{everyone}", "resolved", "critical"),
        (f"subscription:{critical}", "resolved", "critical"),
        ("kafka:sentinel-alerts", "resolved", "critical"),
    ]
    assert not any(t in (f"subscription:{other}", f"subscription:{drift}") for t, _, _ in got)
    kafka = [d for d in alerts.deliveries() if d.channel == "kafka"]
    assert all(d.topic == "sentinel-alerts" and d.subscription_id is None for d in kafka)


def test_results_stored_before_the_upgrade_are_not_alerted_and_the_schema_matches(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        with engine.begin() as conn:
            conn.execute(insert(orm.MonitoredModel.__table__).values(name=MODEL, created_at=T0))
            window_id = conn.execute(
                insert(orm.Window.__table__)
                .values(
                    model=MODEL,
                    start=T0,
                    end=T0 + MIN,
                    n_events=1,
                    n_late=0,
                    n_duplicates=0,
                    n_labelled=0,
                    closed_at=T0 + MIN,
                )
                .returning(orm.Window.__table__.c.id)
            ).scalar_one()
            results = orm.WindowResult.__table__
            values = {
                "window_id": window_id,
                "model": MODEL,
                "detector": "vae_anomaly",
                "threat": "robustness",
                "status": "alert",
                "n_events": 1,
                "evidence": {},
                "window_start": T0,
                "window_end": T0 + MIN,
                "created_at": T0,
                "updated_at": T0,
            }
            conn.execute(insert(results).values(values))
        migrate(engine)
        assert current_revision(engine) == head_revision() == "0004"
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), orm.Base.metadata
            )
            assert diff == []
            assert conn.execute(select(orm.WindowResult.revision)).scalars().all() == [0]
        store, alerts = Store(engine), AlertStore(engine)
        report = AlertEngine(alerts, AlertingSettings()).run_once(now=at(5))
        assert (report.processed, alert_states(alerts)) == (0, [])
        put(store, 1, row("alert"))
        assert AlertEngine(alerts, AlertingSettings()).run_once(now=at(5)).opened == 1
        with engine.begin() as conn:  # and back down
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
        assert current_revision(engine) == "0001"
    finally:
        engine.dispose()


def test_revisions_are_handed_out_in_commit_order(db: tuple[Store, AlertStore]) -> None:
    store, _ = db
    put(store, 0, row("ok"))
    # Another writer's transaction holds the revision counter (it is about to commit revision 2) ...
    holder = store.engine.connect()
    holder.execution_options(sentinel_sqlite_write=True)
    tx = holder.begin()
    holder.execute(text("UPDATE counters SET value = value + 1 WHERE name = 'window_results'"))
    done = threading.Event()
    writer = threading.Thread(target=lambda: (put(store, 1, row("alert")), done.set()))
    writer.start()
    # ... so a concurrent store_window cannot commit a revision that a reader could see before it.
    assert not done.wait(0.5)
    tx.commit()
    holder.close()
    writer.join(30)
    assert done.is_set()
    with store.engine.connect() as conn:
        revisions = dict(
            conn.execute(select(orm.WindowResult.window_start, orm.WindowResult.revision)).tuples().all()
        )
    assert revisions[T0 + MIN] == 3 and revisions[T0] == 1  # after the holder's 2


def test_concurrent_writers_and_engine_miss_and_repeat_nothing(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    engine = AlertEngine(alerts, AlertingSettings(batch_size=7))
    models = [f"m{i}" for i in range(4)]
    n_windows = 12
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(model: str) -> None:
        try:
            for k in range(n_windows):
                put(store, k, row("alert"), row("ok", detector="output_drift"), model=model)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def evaluate() -> None:
        try:
            while not stop.is_set():
                engine.run_once(now=at(0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(m,)) for m in models]
    evaluator = threading.Thread(target=evaluate)
    evaluator.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    stop.set()
    evaluator.join(60)
    assert not errors, errors
    engine.run_once(now=at(0))
    states = alert_states(alerts)
    # Each model's failing windows all counted, exactly once, into one alert.
    assert sorted((a.model, a.count) for a in states) == [(m, n_windows) for m in models]
    assert unprocessed_results(alerts) == 0 and alert_cursor(alerts) == len(models) * n_windows * 2


@pytest.mark.postgres
def test_a_second_engine_skips_while_the_first_holds_the_cursor(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate(engine)
    try:
        store, alerts = Store(engine), AlertStore(engine)
        put(store, 0, row("alert"))
        first = AlertEngine(alerts, AlertingSettings())
        with alerts.evaluation(at(0)) as work:
            assert work is not None
            started = time.monotonic()
            report = first.run_once(now=at(0))
            assert report.locked and time.monotonic() - started < 5  # skipped, did not wait
        assert first.run_once(now=at(0)).opened == 1
        assert first.run_once(now=at(0)).opened == 0
        assert len(alert_states(alerts)) == 1
    finally:
        engine.dispose()


def test_subscriptions_and_silences_storage(db: tuple[Store, AlertStore]) -> None:
    _, alerts = db
    created = alerts.create_subscription(
        SubscriptionIn(name="oncall", url="https://h.example/x", secret="hunter2", models=["m"]), T0
    )
    plain = alerts.create_subscription(
        SubscriptionIn(name="slack", url="https://h.example/y", format="slack"), T0
    )
    assert (created.has_secret, plain.has_secret, created.models, created.source) == (
        True,
        False,
        ("m",),
        "api",
    )
    listed = alerts.subscriptions()
    assert [s.name for s in listed] == ["oncall", "slack"]
    assert all("hunter2" not in repr(s) and "hunter2" not in str(s.as_dict()) for s in listed)
    assert "hunter2" not in repr(SubscriptionIn(name="x", url="https://h.example/z", secret="hunter2"))
    with pytest.raises(ValueError, match="exists already"):
        alerts.create_subscription(SubscriptionIn(name="oncall", url="https://h.example/z"), T0)
    with pytest.raises(ValueError, match="url"):
        SubscriptionIn(name="bad", url="file:///etc/passwd")
    assert alerts.delete_subscription(created.id, T0 + MIN)
    assert not alerts.delete_subscription(created.id, T0 + MIN)
    assert [s.name for s in alerts.subscriptions()] == ["slack"]
    gone = alerts.subscription(created.id)
    assert gone is not None and gone.deleted_at == T0 + MIN
    # The name is free again once deleted.
    alerts.create_subscription(SubscriptionIn(name="oncall", url="https://h.example/z"), T0 + 2 * MIN)

    # Configured subscriptions: synced by name; changed in place (id kept); removed ones deleted.
    first = alerts.sync_config_subscriptions(
        [
            SubscriptionIn(name="cfg-a", url="https://h.example/a"),
            SubscriptionIn(name="cfg-b", url="https://h.example/b"),
        ],
        T0,
    )
    ids = {s.name: s.id for s in first if s.source == "config"}
    second = alerts.sync_config_subscriptions(
        [SubscriptionIn(name="cfg-a", url="https://h.example/a2", min_severity="critical")], T0 + MIN
    )
    by_name = {s.name: s for s in second}
    assert by_name["cfg-a"].id == ids["cfg-a"] and by_name["cfg-a"].url == "https://h.example/a2"
    assert "cfg-b" not in by_name and {"slack", "oncall"} <= set(by_name)
    with pytest.raises(ValueError, match="API subscription"):
        alerts.sync_config_subscriptions([SubscriptionIn(name="slack", url="https://h.example/s")], T0)

    with pytest.raises(ValueError, match="at least one"):
        SilenceIn(ends_at=T0)
    s1 = alerts.create_silence(SilenceIn(ends_at=T0 + HOUR, fingerprint="f" * 64, created_by="ana"), T0)
    alerts.create_silence(SilenceIn(ends_at=T0 + 3 * HOUR, starts_at=T0 + 2 * HOUR, detector="probing"), T0)
    assert len(alerts.silences()) == 2
    assert [s.id for s in alerts.silences(active_at=T0 + MIN)] == [s1.id]
    assert [s.detector for s in alerts.silences(active_at=T0 + 2 * HOUR)] == ["probing"]


def test_list_alerts_filters(db: tuple[Store, AlertStore]) -> None:
    store, alerts = db
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    put(store, 0, row("alert", p=1e-9), row("alert", detector="output_drift", p=1e-4))
    put(store, 0, row("alert", p=1e-4), model="other")
    engine.run_once(now=at(0))
    put(store, 1, row("ok"))
    engine.run_once(now=at(1))
    assert len(alerts.list_alerts()) == 3
    assert {a.detector for a in alerts.list_alerts(model=MODEL)} == {"vae_anomaly", "output_drift"}
    assert [a.model for a in alerts.list_alerts(state="resolved")] == [MODEL]
    assert {a.model for a in alerts.list_alerts(severities=["warning"])} == {MODEL, "other"}
    assert [a.severity for a in alerts.list_alerts(severities=["critical"])] == ["critical"]
    assert [a.detector for a in alerts.list_alerts(detector="output_drift")] == ["output_drift"]
    assert alerts.list_alerts(since=at(1) + MIN) == []
    assert len(alerts.list_alerts(limit=1)) == 1
    with pytest.raises(ValueError, match="severity"):
        alerts.list_alerts(severities=["fatal"])


def test_alert_state_public_form_is_the_contract_shape() -> None:
    alert = replace(open_alert(event(), "warning", T0), id=7)
    fields = set(alert.public().as_dict())
    assert fields == {
        "id",
        "fingerprint",
        "model",
        "detector",
        "threat",
        "severity",
        "state",
        "title",
        "summary",
        "window_start",
        "window_end",
        "statistic",
        "threshold",
        "p_value",
        "details",
        "first_seen",
        "last_seen",
        "count",
        "resolved_at",
    }
    with pytest.raises(ValueError, match="no id"):
        open_alert(event(), "warning", T0).public()
    assert isinstance(alert, AlertState)


def test_sentinel_alerts_command_filters_and_prints_json_or_a_table(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    migrate(engine)
    store, alerts = Store(engine), AlertStore(engine)
    alert_engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    put(store, 0, row("alert", p=1e-9), row("alert", detector="output_drift", p=1e-4))
    alert_engine.run_once(now=at(0))
    put(store, 1, row("ok"), row("alert", detector="output_drift"))
    alert_engine.run_once(now=at(1))
    engine.dispose()

    assert main(["alerts", "--db", url, "--json"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert {(a["detector"], a["state"], a["severity"]) for a in everything} == {
        ("vae_anomaly", "resolved", "critical"),
        ("output_drift", "firing", "warning"),
    }
    assert all(set(a) == set(alert_document_fields()) for a in everything)
    assert everything[0]["last_seen"].endswith("Z")

    assert main(["alerts", "--db", url, "--json", "--state", "firing", "--model", MODEL]) == 0
    assert [a["detector"] for a in json.loads(capsys.readouterr().out)] == ["output_drift"]
    assert main(["alerts", "--db", url, "--json", "--severity", "critical,info"]) == 0
    assert [a["detector"] for a in json.loads(capsys.readouterr().out)] == ["vae_anomaly"]
    assert (
        main(
            ["alerts", "--db", url, "--json", "--detector", "vae_anomaly", "--since", "2026-11-28T10:00:00Z"]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["alerts", "--db", url, "--json", "--since", "2099-01-01T00:00:00Z"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["alerts", "--db", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["id", "last", "seen", "(UTC)"] and len(table) == 3
    assert "output_drift alert on fraud-scorer" in table[1] and "firing" in table[1]
    assert main(["alerts", "--db", url, "--model", "nobody"]) == 0
    assert capsys.readouterr().out.strip() == "no alerts"
    assert main(["alerts", "--db", url, "--severity", "fatal"]) == 2
    assert main(["alerts", "--db", url, "--since", "yesterday-ish"]) == 2


def alert_document_fields() -> list[str]:
    return [
        "id", "fingerprint", "model", "detector", "threat", "severity", "state", "title", "summary",
        "window_start", "window_end", "statistic", "threshold", "p_value", "details", "first_seen",
        "last_seen", "count", "resolved_at",
    ]  # fmt: skip


def test_a_resolved_episode_s_failing_window_re_evaluated_does_not_reopen_it(
    db: tuple[Store, AlertStore],
) -> None:
    store, alerts = db
    engine = AlertEngine(alerts, AlertingSettings(resolve_after=1))
    ids = [
        put(store, 0, row("alert", detector="performance")),
        put(store, 1, row("ok", detector="performance")),
    ]
    engine.run_once(now=at(1))
    [resolved] = alert_states(alerts)
    assert resolved.state == "resolved"
    store.update_result(ids[0], row("alert", detector="performance", p=1e-5))  # more late labels, same window
    engine.run_once(now=at(1) + HOUR)
    assert len(alert_states(alerts)) == 1  # reported already: no second alert for the same window
    store.update_result(ids[1], row("alert", detector="performance"))  # a window newly found failing
    engine.run_once(now=at(1) + 2 * HOUR)
    first, second = alert_states(alerts)
    assert first.id == resolved.id and first.state == "resolved"
    assert (second.state, second.window_start, second.count) == ("firing", T0 + MIN, 1)
