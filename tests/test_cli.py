"""The command line: bad config fails at start naming the key; unreachable services are retried."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from monitor.broker import free_port
from monitor.cli import main
from storage import AlertStore, DeadLetterIn, Store, make_engine, migrate
from storage.crypto import generate_key, key_file_for
from storage.migrate import alembic_config
from tests.daemon_process import DaemonProcess
from tests.test_config import service_links

SENTINEL = str(Path(sys.executable).with_name("sentinel"))
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T1, T2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    environ.update(env or {})
    return subprocess.run([SENTINEL, *args], capture_output=True, text=True, env=environ, timeout=120)


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kafka:\n  session_timeout_ms: soon\nmodels:\n  m1:\n    window: -1m\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "kafka.session_timeout_ms" in result.stderr
    assert "models.m1.window" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_detector_parameter_fails_run_at_start_but_not_a_reading_command(tmp_path: Path) -> None:
    # Checking a parameter takes building the detector: only the commands that run detectors do it.
    config = tmp_path / "sentinel.yaml"
    detectors = "defaults:\n  detectors:\n    vae_anomaly: {quantile: 7}\n"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'x.db'}\n{detectors}")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "defaults.detectors" in result.stderr and "quantile" in result.stderr
    assert run_cli("migrate", "--config", str(config)).returncode == 0
    assert run_cli("alerts", "--config", str(config)).stdout == "no alerts\n"


def test_bad_environment_fails_naming_the_key() -> None:
    result = run_cli("run", env={"SENTINEL_DEFAULTS__MIN_EVENTS": "many"})
    assert result.returncode == 2
    assert "defaults.min_events" in result.stderr


def test_service_links_and_unknown_variables_do_not_stop_a_command(tmp_path: Path) -> None:
    # What a kubelet adds for the chart's Service (`helm install sentinel ./helm`) and for another one.
    links = {
        **service_links("sentinel", "10.96.0.10", [("http", 8080, "TCP")]),
        **service_links("sentinel-api", "10.96.0.11", [("http", 80, "TCP"), ("metrics", 9100, "TCP")]),
    }
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert run_cli("migrate", "--db", db, env=links).returncode == 0
    result = run_cli("alerts", "--db", db, env=links)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # service links are ignored silently
    result = run_cli("alerts", "--db", db, env={**links, "SENTINEL_KAFKA_TOPIC": "x"})
    assert result.returncode == 0, result.stderr
    assert "SENTINEL_KAFKA_TOPIC" in result.stderr and "SENTINEL_KAFKA__TOPIC" in result.stderr


def test_bad_environment_value_fails_naming_the_variable() -> None:
    result = run_cli("run", env={"SENTINEL_KAFKA__MAX_POLL_RECORDS": "lots"})
    assert result.returncode == 2
    assert "SENTINEL_KAFKA__MAX_POLL_RECORDS: kafka.max_poll_records:" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli("migrate", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.db").exists()


# ------------------------------------------------------------------------------------ database URLs and paths


@pytest.mark.parametrize("bare", ["x.db", "/tmp/sentinel-x.db"])
def test_a_bare_path_for_db_is_refused_showing_the_url_form(bare: str) -> None:
    result = run_cli("alerts", "--db", bare)
    assert result.returncode == 2
    assert repr(bare) in result.stderr and f"sqlite:///{bare}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["migrate", "alerts"])
def test_a_sqlite_file_in_a_missing_directory_is_named(tmp_path: Path, command: str) -> None:
    path = tmp_path / "missing" / "x.db"
    result = run_cli(command, "--db", f"sqlite:///{path}")
    assert result.returncode == 2
    assert str(path) in result.stderr and "no directory" in result.stderr


@pytest.mark.parametrize("command", ["alerts", "dead-letters"])
def test_a_read_only_command_creates_no_database(tmp_path: Path, command: str) -> None:
    path = tmp_path / "typo.db"
    result = run_cli(command, "--db", f"sqlite:///{path}")
    assert result.returncode == 2
    assert f"no database at '{path}'" in result.stderr
    assert not path.exists()


def test_a_database_without_the_schema_says_to_migrate(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    make_engine(f"sqlite:///{path}").dispose()
    sqlite3.connect(path).close()
    result = run_cli("dead-letters", "--db", f"sqlite:///{path}")
    assert result.returncode == 2
    assert "sentinel migrate" in result.stderr


# -------------------------------------------------------------------------------------------- dead letters


def _database_with_dead_letters(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        migrate(engine)
        Store(engine).add_dead_letters(
            [
                DeadLetterIn("events", 0, 7, None, b'{"model": "m1", "features"', "invalid JSON", "m1", T0),
                DeadLetterIn("events", 1, 8, b"k", b"\x1b[2J\xff" + b"y" * 200, "not UTF-8", None, T1),
                DeadLetterIn("events", 0, 9, None, b"{}", "model 'm2' is not configured", "m2", T2),
            ]
        )
    finally:
        engine.dispose()
    return url


def test_dead_letters_are_listed_newest_first_with_a_safe_preview(tmp_path: Path) -> None:
    url = _database_with_dead_letters(tmp_path / "x.db")
    result = run_cli("dead-letters", "--db", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "reason" in lines[0] and "topic/partition/offset" in lines[0]
    reasons = [line for line in lines[1:] if "events/" in line]  # each is followed by its preview
    assert ["configured" in reasons[0], "UTF-8" in reasons[1], "invalid JSON" in reasons[2]] == [True] * 3
    assert "events/1/8" in reasons[1] and "events/0/7" in reasons[2]
    assert "\x1b" not in result.stdout  # the escape byte itself never reaches the terminal
    assert "\\x1b[2J\\xff" in result.stdout and "(205 bytes)" in result.stdout


def test_dead_letters_filter_by_model_time_and_limit(tmp_path: Path) -> None:
    url = _database_with_dead_letters(tmp_path / "x.db")
    result = run_cli("dead-letters", "--db", url, "--json", "--model", "m1")
    assert [d["offset"] for d in json.loads(result.stdout)] == [7]
    result = run_cli("dead-letters", "--db", url, "--json", "--since", T1.isoformat())
    assert [d["offset"] for d in json.loads(result.stdout)] == [9, 8]
    result = run_cli("dead-letters", "--db", url, "--json", "--limit", "1")
    [newest] = json.loads(result.stdout)
    assert newest["reason"] == "model 'm2' is not configured"
    assert base64.b64decode(newest["raw_base64"]) == b"{}" and newest["size"] == 2
    assert run_cli("dead-letters", "--db", url, "--since", "soon").returncode == 2
    assert run_cli("dead-letters", "--db", url, "--model", "nobody").stdout == "no dead letters\n"


# ------------------------------------------------------------------------------ the configured secret key

OLD_SECRET = "plain-text-secret-of-an-old-version"


def _database_of_an_old_version(path: Path) -> str:
    """A SQLite database at schema revision 0002, where webhook secrets were stored in plain text."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    subscription = {
        "name": "old",
        "url": "https://hooks.example/o",
        "secret": OLD_SECRET,
        "format": "native",
        **dict.fromkeys(("models", "detectors", "threats"), "[]"),
        "min_severity": "info",
        "source": "config",
        **dict.fromkeys(("created_at", "updated_at"), "2026-11-28 10:00:00"),
    }
    subscriptions = sa.table("subscriptions", *map(sa.column, subscription))
    with engine.begin() as conn:
        alembic = alembic_config()
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "0002")
        conn.execute(sa.insert(subscriptions).values(subscription))
    engine.dispose()
    return url


def _assert_sealed_with(url: str, key: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            [sealed] = conn.execute(sa.text("SELECT secret FROM subscriptions")).scalars()
        assert sealed != OLD_SECRET
        assert AlertStore(engine, secret_key=key).secret_box.open(sealed) == OLD_SECRET
        key_file = key_file_for(engine)
        assert key_file is not None and not key_file.exists()  # no second key was made up beside it
    finally:
        engine.dispose()


@pytest.mark.parametrize("command_line", [["migrate"], ["replay", "EVENTS"]])
def test_every_command_seals_secrets_with_the_configured_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command_line: list[str]
) -> None:
    # The daemon holds alerting.secret_key: a migration run by another command must seal with that same key,
    # not with a key file it creates, or the daemon could never sign with the subscription's secret.
    for name in [name for name in os.environ if name.startswith("SENTINEL_")]:
        monkeypatch.delenv(name)
    key = generate_key()
    url = _database_of_an_old_version(tmp_path / "old.db")
    config = tmp_path / "sentinel.yaml"
    config.write_text(f"database_url: {url}\nalerting:\n  secret_key: {key}\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    argv = [str(events) if part == "EVENTS" else part for part in command_line]
    assert main([*argv, "--config", str(config)]) == 0
    _assert_sealed_with(url, key)


@pytest.mark.slow
def test_unreachable_broker_is_retried_with_a_clear_log_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    daemon = DaemonProcess(
        {
            "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "kafka": {
                "bootstrap_servers": f"127.0.0.1:{port}",
                "bootstrap_timeout": "2s",
                "retry_backoff_initial": "0.2s",
                "retry_backoff_max": "0.5s",
            },
        },
        tmp_path,
    ).start()
    try:
        line = daemon.wait_for("unreachable", timeout=90)
        assert f"127.0.0.1:{port}" in line and "retrying in" in line
        daemon.wait_for_count("unreachable", 2, timeout=60)
        assert daemon.process is not None and daemon.process.poll() is None  # still up, not a crash loop
        assert daemon.terminate() == 0
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()
    assert daemon.count("unreachable") >= 2
    assert "Traceback" not in daemon.log


@pytest.mark.slow
def test_unreachable_database_is_retried_with_a_clear_log_line(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        {
            "database_url": f"postgresql+psycopg://sentinel@127.0.0.1:{port}/sentinel",
            "db_retry_initial": "0.2s",
            "db_retry_max": "0.5s",
            "api": {"port": api_port},
        },
        tmp_path,
    ).start()
    try:
        line = daemon.wait_for("database unreachable", timeout=90)
        assert "retrying in" in line and "Traceback" not in daemon.log
        daemon.wait_for_count("database unreachable", 2, timeout=60)
        # Alive (a liveness probe must not restart it in a loop), not ready, and saying why.
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
        assert daemon.process is not None and daemon.process.poll() is None
        assert daemon.terminate() == 0
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()
    assert daemon.count("database unreachable") >= 2
    assert "Traceback" not in daemon.log
