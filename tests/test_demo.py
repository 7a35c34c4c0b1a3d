"""``sentinel demo --fast`` as a user runs it: every injected attack caught by its detector, no false alarm.

The demo runs once per module as a real process (embedded broker, SQLite, the daemon, the webhook receiver)
in a temporary directory; the tests read its output, its ``sentinel-demo/summary.json`` and its database.
The two quick tests at the end check the traffic and the bookkeeping the summary relies on.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.demo.alert_watcher import SeenAlert
from monitor.demo.assessment import PhaseSpan, assess
from monitor.demo.data import BenignClients, digits_model
from monitor.demo.timeline import BENIGN_CLIENTS, Phase


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    output: str
    summary: dict[str, Any]
    database: Path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    cwd = tmp_path_factory.mktemp("demo")  # the demo writes ./sentinel-demo/
    sentinel = Path(sys.executable).with_name("sentinel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    done = subprocess.run(
        [str(sentinel), "demo", "--fast"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary_path = cwd / "sentinel-demo" / "summary.json"
    assert summary_path.is_file(), (
        f"no summary written; output:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return DemoRun(
        done.returncode,
        done.stdout,
        json.loads(summary_path.read_text()),
        cwd / "sentinel-demo" / "sentinel.db",
    )


def _alerts(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT id, detector, subject, state FROM alerts")]


@pytest.mark.slow
@pytest.mark.kafka
def test_every_injected_attack_is_caught_by_its_detector(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.output[-3000:]
    attacks = demo_run.summary["attacks"]
    assert {a["detector"] for a in attacks} == {
        "feature_drift",
        "label_consistency",
        "extraction",
        "probing",
        "evasion",
        "backdoor",
        "group_outcome",
    }
    missed = [a["phase"] for a in attacks if not a["caught"]]
    assert not missed, f"missed: {missed}\n{demo_run.output[-3000:]}"
    # The summary's alert ids are real alerts of the right detector and subject in the daemon's database.
    stored = {row["id"]: row for row in _alerts(demo_run.database)}
    for attack in attacks:
        row = stored[attack["alert_id"]]
        assert row["detector"] == attack["detector"]
        assert row["subject"] == ("" if attack["subject"] == "(model)" else attack["subject"])
        # Caught while the attack ran (its own windows), not after it ended.
        phase = next(p for p in demo_run.summary["phases"] if p["name"] == attack["phase"])
        assert 1 <= attack["window"] <= phase["windows"], attack


@pytest.mark.slow
@pytest.mark.kafka
def test_no_false_alarm_on_the_clean_phases(demo_run: DemoRun) -> None:
    clean = [p for p in demo_run.summary["phases"] if p["detector"] is None]
    assert [p["name"] for p in clean] == ["clean", "clean again"]
    opened_clean = [
        a
        for a in demo_run.summary["alerts"]
        if any(p["start"] - 0.5 <= a["window_start"] < p["end"] - 0.5 for p in clean)
    ]
    assert not opened_clean, opened_clean


@pytest.mark.slow
@pytest.mark.kafka
def test_no_benign_client_is_named(demo_run: DemoRun) -> None:
    # From the database itself: no alert of any detector, in any phase, has a benign client as its subject.
    named = sorted(
        f"#{row['id']} {row['detector']} ({row['subject']})"
        for row in _alerts(demo_run.database)
        if row["subject"] in BENIGN_CLIENTS
    )
    assert not named, f"{len(named)} alerts name benign clients: {named}"
    # Probing and extraction judge each client by its history: a benign client must never look like either.
    assert not [a for a in demo_run.summary["benign_named"] if a["detector"] in ("probing", "extraction")]


@pytest.mark.slow
@pytest.mark.kafka
def test_webhook_receiver_gets_signed_deliveries_of_the_caught_attacks(demo_run: DemoRun) -> None:
    webhook = demo_run.summary["webhook"]
    assert webhook["received"] > 0
    assert webhook["valid_signatures"] == webhook["received"]
    firing = {d["alert_id"] for d in webhook["deliveries"] if d["status"] == "firing"}
    caught = {a["alert_id"] for a in demo_run.summary["attacks"] if a["caught"]}
    assert caught <= firing
    assert any(d["status"] == "resolved" for d in webhook["deliveries"])


@pytest.mark.slow
@pytest.mark.kafka
def test_output_names_the_dashboard_and_is_plain_text(demo_run: DemoRun) -> None:
    match = re.search(r"dashboard:\s+(http://127\.0\.0\.1:\d+/dashboard)", demo_run.output)
    assert match is not None, demo_run.output[:2000]
    assert match.group(1) == demo_run.summary["dashboard_url"]
    assert "\x1b[" not in demo_run.output  # not a terminal: no colour codes
    assert "Summary" in demo_run.output and "FIRING" in demo_run.output and "RESOLVED" in demo_run.output


def test_benign_clients_never_repeat_an_input_until_the_pool_is_spent() -> None:
    pool = len(digits_model().live_y)
    traffic = BenignClients(["app-01", "app-02", "app-03"], seed=3)
    per_window = 40
    sent: dict[str, list[int]] = {"app-01": [], "app-02": [], "app-03": []}
    for _ in range(pool // per_window):
        rows, clients, groups = traffic.take(per_window)
        assert len(rows) == len(clients) == len(groups) == 3 * per_window
        for row, client in zip(rows, clients, strict=True):
            sent[client].append(int(row))
    for client, rows in sent.items():
        assert len(set(rows)) == len(rows), client
    assert not traffic.wrapped
    # Clients walk different orders, so the same window does not hold 20 copies of one digit.
    assert sent["app-01"][:per_window] != sent["app-02"][:per_window]
    traffic.take(per_window)  # past the pool: repeats start, and are reported
    assert traffic.wrapped == {"app-01", "app-02", "app-03"}


def test_assessment_separates_catches_side_effects_and_false_alarms() -> None:
    window = 10.0
    clean = Phase("clean", 2, "clean")
    extraction = Phase("extraction", 2, "x", detector="extraction", subject="thief", attacker="thief")
    spans = [PhaseSpan(clean, 0.0, 20.0, 0), PhaseSpan(extraction, 20.0, 40.0, 2)]

    def alert(number: int, detector: str, subject: str, window_start: float) -> SeenAlert:
        return SeenAlert(
            number, detector, "t", subject, "critical", window_start, window_start + window + 1.5, 1e-9, ""
        )

    alerts = [
        alert(1, "backdoor", "class=4", 10.0),  # opened on the clean phase
        alert(2, "extraction", "thief", 30.0),  # the catch, in the attack's second window
        alert(3, "evasion", "thief", 20.0),  # a side effect naming the attacker
        alert(4, "vae_anomaly", "", 20.0),  # a model-wide side effect
        alert(5, "evasion", BENIGN_CLIENTS[0], 20.0),  # names a benign client
        alert(6, "backdoor", "class=7", 30.0),  # a subject the attack does not touch
    ]
    result = assess(spans, alerts, window, BENIGN_CLIENTS)
    (verdict,) = result.verdicts
    assert verdict.caught and verdict.alert_id == 2 and verdict.window == 2
    assert verdict.seconds == pytest.approx(30.0 + window + 1.5 - 20.0)
    assert verdict.also == ["evasion (thief)", "vae_anomaly"]
    assert [a["alert_id"] for a in result.false_alarms] == [1, 5, 6]
    assert [a["alert_id"] for a in result.benign_named] == [5]
    # Without the detector's alert, the attack is reported missed.
    missed = assess(spans, [a for a in alerts if a.id != 2], window, BENIGN_CLIENTS)
    assert not missed.verdicts[0].caught and missed.verdicts[0].alert_id is None
