"""The command line: bad config fails at start naming the key; unreachable services are retried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from monitor.broker import free_port
from monitor.cli import main
from storage import AlertStore, make_engine
from storage.crypto import generate_key, key_file_for
from storage.migrate import alembic_config
from tests.daemon_process import DaemonProcess
from tests.test_config import service_links

SENTINEL = str(Path(sys.executable).with_name("sentinel"))


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
