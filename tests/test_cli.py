"""The command line: bad config fails at start naming the key; unreachable services are retried."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from monitor.broker import free_port
from tests.daemon_process import DaemonProcess

SENTINEL = str(Path(sys.executable).with_name("sentinel"))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

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


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli("migrate", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.db").exists()


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
