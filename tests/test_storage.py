"""Tests of the storage package, run against SQLite and PostgreSQL alike.

The PostgreSQL half needs a server at 127.0.0.1:5432 (trust auth, user ``postgres``); each test
module gets its own freshly created database, and each test an empty ``public`` schema. Without
a server the PostgreSQL tests are skipped, unless ``SENTINEL_REQUIRE_SERVICES=1`` (CI), where
they fail.
"""

from __future__ import annotations

import enum
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

import storage
from storage import (
    AlertStore,
    AnomalyRow,
    DeadLetterIn,
    DetectorStateRow,
    EventRow,
    ResultRow,
    StorageError,
    StorageUnavailable,
    Store,
    WindowRecord,
    make_engine,
    migrate,
)
from storage.migrate import current_revision, head_revision
from storage.models import Alert, Base, UTCDateTime
from tests.stored_state import count_events

# The server's maintenance database (TEST_POSTGRES_URL, as in conftest.py); this module creates its own there.
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CLOSED_PORT_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped (forcibly) at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        admin.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = make_url(PG_ADMIN_URL)
        message = f"PostgreSQL not reachable at {where.host}:{where.port or 5432}: {reason}"
        if os.environ.get("SENTINEL_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    name = f"sentinel_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a temporary SQLite file, or a wiped PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sentinel.db'}"
    url: str = request.getfixturevalue("pg_database")
    wipe = create_engine(url)
    try:
        with wipe.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        wipe.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    migrate(engine)
    return Store(engine)


# ---------------------------------------------------------------------- builders


def ev(event_id: str, at: datetime = T0, label: str | None = None, client: str | None = "c1") -> EventRow:
    return EventRow(event_id=event_id, event_time=at, client_id=client, predicted="cat", label=label)


def result(
    detector: str = "ks", status: str = "ok", statistic: float | None = 0.1, **evidence: Any
) -> ResultRow:
    return ResultRow(
        detector=detector,
        threat="drift",
        status=status,
        n_events=10,
        statistic=statistic,
        threshold=0.5,
        p_value=0.2,
        evidence=evidence or {"feature": "x"},
        reason=None,
    )


def anomaly(event_id: str, score: float, at: datetime = T0, detector: str = "iforest") -> AnomalyRow:
    return AnomalyRow(
        detector=detector,
        event_id=event_id,
        score=score,
        event_time=at,
        client_id="c1",
        features={"x": score},
    )


def window(
    start: datetime = T0,
    events: Sequence[EventRow] = (),
    results: Sequence[ResultRow] = (),
    anomalies: Sequence[AnomalyRow] = (),
    model: str = "m",
    n_late: int = 0,
    length: timedelta = MINUTE,
    n_events: int | None = None,
) -> WindowRecord:
    return WindowRecord(
        model=model,
        start=start,
        end=start + length,
        n_late=n_late,
        events=list(events),
        results=list(results),
        anomalies=list(anomalies),
        closed_at=start + length + timedelta(seconds=5),
        n_events=n_events,
    )


def events(prefix: str, n: int, start: datetime = T0) -> list[EventRow]:
    return [ev(f"{prefix}-{i}", start + timedelta(milliseconds=i)) for i in range(n)]


def table_count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())


# ---------------------------------------------------------------------- schema and migrations


def test_migrations_match_metadata_and_are_idempotent(engine: Engine) -> None:
    assert current_revision(engine) is None
    migrate(engine)
    migrate(engine)  # second run: nothing to do, no error
    assert current_revision(engine) == head_revision()

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []

    # Control: the comparison does see a difference when there is one.
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_events_window_id"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d[0] for d in diff] == ["add_index"]


def test_migrate_accepts_url_and_in_memory_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    migrate(url)
    eng = make_engine(url)
    try:
        assert current_revision(eng) == head_revision()
    finally:
        eng.dispose()

    memory = make_engine("sqlite://")
    try:
        migrate(memory)
        s = Store(memory)
        s.store_window(window(events=[ev("a")]))
        assert count_events(s, "m") == 1
    finally:
        memory.dispose()


def test_sqlite_engine_pragmas(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        eng.dispose()


def test_storage_does_not_import_monitor_or_detectors() -> None:
    code = (
        "import sys, storage; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('monitor', 'detectors')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_public_api_exports() -> None:
    for name in storage.__all__:
        assert hasattr(storage, name), name
    assert issubclass(StorageUnavailable, StorageError)


# ---------------------------------------------------------------------- store_window


def test_store_window_roundtrip_and_second_store_is_a_noop(store: Store, engine: Engine) -> None:
    rec = window(
        events=[ev("a"), ev("b"), ev("c", label="dog")],
        results=[result("ks", "alert", 0.9), result("mmd")],
        anomalies=[anomaly("a", 3.0)],
        n_late=2,
    )
    first = store.store_window(rec)
    assert first.created
    assert (first.model, first.start, first.end) == ("m", rec.start, rec.end)
    assert (first.n_events, first.n_duplicates) == (3, 0)

    before = store.window_results(model="m")
    second = store.store_window(rec)
    assert not second.created
    assert second.id == first.id
    assert (second.n_events, second.n_duplicates) == (3, 0)
    assert store.window_results(model="m") == before  # untouched, updated_at included
    assert count_events(store, "m") == 3
    assert table_count(engine, "windows") == 1
    assert table_count(engine, "anomalies") == 1

    [w] = store.windows("m")
    assert (w.id, w.n_events, w.n_late, w.n_duplicates, w.n_labelled) == (first.id, 3, 2, 0, 1)
    assert w.closed_at == rec.closed_at


def test_restore_with_extra_events_adds_them_and_replaces_results(store: Store, engine: Engine) -> None:
    first = store.store_window(
        window(
            events=[ev("a"), ev("b")],
            results=[result("ks", statistic=0.1), result("old-detector")],
            anomalies=[anomaly("a", 1.0), anomaly("b", 2.0)],
            n_late=3,
        )
    )
    ids = {r.detector: r.id for r in store.window_results(model="m")}

    # Re-evaluation after a crash: the replay holds the old events plus new ones.
    again = store.store_window(
        window(
            events=[ev("a"), ev("b"), ev("c"), ev("d")],
            results=[result("ks", "alert", statistic=0.8), result("mmd")],
            anomalies=[anomaly("d", 5.0)],
            n_late=1,
        )
    )
    assert not again.created
    assert again.id == first.id
    assert (again.n_events, again.n_duplicates) == (4, 0)  # a and b were this window's own events
    assert count_events(store, "m") == 4

    by_detector = {r.detector: r for r in store.window_results(model="m")}
    assert set(by_detector) == {"ks", "mmd"}  # old-detector's result replaced away
    assert by_detector["ks"].id == ids["ks"]  # updated in place
    assert (by_detector["ks"].status, by_detector["ks"].statistic) == ("alert", 0.8)
    assert by_detector["ks"].updated_at >= by_detector["ks"].created_at
    assert [a.event_id for a in store.anomalies(model="m")] == ["d"]
    [w] = store.windows("m")
    assert (w.n_events, w.n_late) == (4, 3)
    assert table_count(engine, "windows") == 1


def test_duplicates_across_windows_are_counted_once(store: Store) -> None:
    store.store_window(window(T0, events=[ev("a"), ev("b")]))
    second = store.store_window(window(T0 + MINUTE, events=[ev("b"), ev("c"), ev("c"), ev("d")]))
    assert second.created
    # "b" was stored in the first window; the second "c" repeats within the record.
    assert (second.n_events, second.n_duplicates) == (2, 2)
    assert count_events(store, "m") == 4
    assert store.known_event_ids("m", ["a", "b", "c", "d", "zz"]) == {"a", "b", "c", "d"}
    # Event ids are per model: the same id in another model is not a duplicate.
    other = store.store_window(window(T0, events=[ev("a")], model="other"))
    assert (other.n_events, other.n_duplicates) == (1, 0)


def test_explicit_n_events_minus_dropped(store: Store) -> None:
    store.store_window(window(T0, events=[ev("a")]))
    # The monitor counted 100 events but hands over only a sample, one of them already stored.
    stored = store.store_window(window(T0 + MINUTE, events=[ev("a"), ev("b")], n_events=100))
    assert (stored.n_events, stored.n_duplicates) == (99, 1)


def test_empty_window_with_results_only(store: Store) -> None:
    stored = store.store_window(window(results=[result("ks", "skipped", statistic=None)]))
    assert stored.created and stored.n_events == 0
    [r] = store.window_results()
    assert (r.status, r.statistic, r.window_id) == ("skipped", None, stored.id)
    assert not store.store_window(window(results=[result("ks", "skipped", statistic=None)])).created


def test_failed_store_window_leaves_nothing_behind(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: Any) -> None:
        raise SQLAlchemyError("simulated failure after the window and its events were inserted")

    monkeypatch.setattr(storage.store.windows, "_replace_results", explode)
    with pytest.raises(StorageError):
        store.store_window(window(events=[ev("a")], results=[result()], anomalies=[anomaly("a", 1.0)]))
    monkeypatch.undo()
    for table in ("windows", "events", "window_results", "anomalies"):
        assert table_count(engine, table) == 0, table
    assert store.closed_until("m") is None
    assert store.store_window(window(events=[ev("a")])).created


def test_invalid_records_are_refused_before_sql(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        ev("a", at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="not after start"):
        window(length=timedelta(0))
    with pytest.raises(ValueError, match="two results"):
        store.store_window(window(results=[result("ks"), result("ks")]))
    with pytest.raises(ValueError, match="status"):
        store.store_window(window(results=[result("ks", status="maybe")]))
    assert store.windows("m") == []


class _Status(enum.Enum):
    ALERT = "alert"


class _Threat(enum.StrEnum):
    DRIFT = "drift"


def test_enums_numpy_like_values_and_nan_are_normalised(store: Store) -> None:
    class FakeNumpyScalar:
        def item(self) -> float:
            return 1.5

    evidence: dict[Any, Any] = {
        "nan": float("nan"),
        "scalar": FakeNumpyScalar(),
        "tuple": (1, 2),
        3: "int key",
    }
    rec = window(
        results=[
            ResultRow(
                detector="ks",
                threat=_Threat.DRIFT,
                status=_Status.ALERT,  # type: ignore[arg-type]
                n_events=3,
                statistic=float("nan"),
                threshold=float("inf"),
                p_value=None,
                evidence=evidence,
                reason="r",
            )
        ]
    )
    store.store_window(rec)
    [r] = store.window_results()
    assert (r.threat, r.status, r.statistic, r.threshold) == ("drift", "alert", None, float("inf"))
    assert r.evidence == {"nan": None, "scalar": 1.5, "tuple": [1, 2], "3": "int key"}


# ---------------------------------------------------------------------- labels


def test_pending_label_is_applied_when_the_event_arrives(store: Store, engine: Engine) -> None:
    assert store.label_event("m", "late", "dog", T0 + 2 * MINUTE) is None  # parked: no stored window
    assert store.label_event("m", "late", "cat", T0 + MINUTE) is None  # older feedback: ignored
    assert table_count(engine, "pending_labels") == 1

    store.store_window(window(T0, events=[ev("late"), ev("other")]))
    assert table_count(engine, "pending_labels") == 0
    [w] = store.windows("m")
    assert w.n_labelled == 1
    with engine.connect() as conn:
        label = conn.execute(text("SELECT label FROM events WHERE event_id = 'late'")).scalar_one()
    assert label == "dog"


def test_label_event_on_a_stored_event(store: Store, engine: Engine) -> None:
    stored = store.store_window(window(events=[ev("a"), ev("b")]))
    assert store.label_event("m", "a", "dog", T0 + MINUTE) == stored.id
    assert store.label_event("m", "a", "cat", T0 + 2 * MINUTE) == stored.id  # relabel: counted once
    assert store.label_event("m", "a", "stale", T0 + 30 * timedelta(seconds=1)) == stored.id  # older: ignored
    [w] = store.windows("m")
    assert w.n_labelled == 1
    with engine.connect() as conn:
        rows: dict[str, str | None] = dict(
            conn.execute(text("SELECT event_id, label FROM events ORDER BY event_id")).tuples().all()
        )
    assert rows == {"a": "cat", "b": None}
    assert table_count(engine, "pending_labels") == 0
    with pytest.raises(ValueError, match="aware"):
        store.label_event("m", "a", "x", datetime(2025, 1, 1))


# ---------------------------------------------------------------------- dead letters, references, state


def test_dead_letters_with_truncation(store: Store) -> None:
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB
    store.add_dead_letters(
        [
            DeadLetterIn("in", 0, 41, b"k", b"{bad json", "invalid JSON", "m", T0),
            DeadLetterIn("in", 1, 42, None, big, "too large", None, T0 + MINUTE),
        ]
    )
    store.add_dead_letters([])  # nothing to do
    newest, oldest = store.dead_letters()
    assert (newest.size, newest.truncated, len(newest.raw)) == (len(big), True, 1 << 20)
    assert newest.raw == big[: 1 << 20]
    assert (newest.key, newest.model, newest.offset, newest.partition) == (None, None, 42, 1)
    assert (oldest.raw, oldest.size, oldest.truncated, oldest.key) == (b"{bad json", 9, False, b"k")
    assert (oldest.topic, oldest.reason, oldest.model, oldest.received_at) == ("in", "invalid JSON", "m", T0)
    assert newest.id != oldest.id
    assert store.dead_letters(limit=1) == [newest]


def test_dead_letter_limit_is_configurable(engine: Engine) -> None:
    migrate(engine)
    small = Store(engine, max_dead_letter_bytes=4)
    small.add_dead_letters([DeadLetterIn("t", None, None, None, b"123456", "r", None, T0)])
    [d] = small.dead_letters()
    assert (d.raw, d.size, d.truncated, d.partition, d.offset) == (b"1234", 6, True, None, None)


def test_references_and_detector_state_are_idempotent(store: Store) -> None:
    assert store.latest_reference("m") is None
    h1, h2 = "a" * 64, "b" * 64
    r1 = store.save_reference("m", "warmup", h1, b"\x1f\x8bpayload-1", 100)
    assert store.save_reference("m", "warmup", h1, b"ignored", 1) == r1
    r2 = store.save_reference("m", "file", h2, b"payload-2", 200)
    assert r2 != r1
    latest = store.latest_reference("m")
    assert latest is not None
    assert (latest.id, latest.source, latest.content_hash, latest.n_events, latest.payload) == (
        r2,
        "file",
        h2,
        200,
        b"payload-2",
    )
    assert latest.created_at.tzinfo is UTC
    with pytest.raises(ValueError, match="source"):
        store.save_reference("m", "http", h1, b"", 0)

    assert store.load_detector_state("m", "ks", r1, "p" * 64) is None
    store.save_detector_state("m", "ks", r1, "p" * 64, b"state-1")
    store.save_detector_state("m", "ks", r1, "p" * 64, b"state-2")  # upsert
    store.save_detector_state("m", "ks", r2, "p" * 64, b"state-r2")
    assert store.load_detector_state("m", "ks", r1, "p" * 64) == b"state-2"
    assert store.load_detector_state("m", "ks", r2, "p" * 64) == b"state-r2"
    assert store.load_detector_state("m", "ks", r1, "q" * 64) is None


def test_stateful_detector_state_is_stored_with_its_window_or_not_at_all(store: Store) -> None:
    r1 = store.save_reference("m", "warmup", "a" * 64, b"ref", 10)
    store.save_detector_state("m", "extraction", r1, "p" * 64, b"fitted")
    first = replace(
        window(events=events("a", 3)), detector_states=[DetectorStateRow("extraction", r1, "p" * 64, b"w1")]
    )
    store.store_window(first)
    assert store.load_detector_state("m", "extraction", r1, "p" * 64) == b"w1"
    # A window that fails to store (here: an event row too long for its column) leaves the state as it was.
    bad = replace(
        window(T0 + MINUTE, events=[ev("x" * 10_000, T0 + MINUTE)]),
        detector_states=[DetectorStateRow("extraction", r1, "p" * 64, b"w2")],
    )
    with pytest.raises((ValueError, StorageError)):
        store.store_window(bad)
    assert store.load_detector_state("m", "extraction", r1, "p" * 64) == b"w1"


def test_ensure_model_and_closed_until(store: Store) -> None:
    store.ensure_model("m")
    store.ensure_model("m")
    assert store.closed_until("m") is None
    assert store.closed_until("unknown") is None
    store.store_window(window(T0 + 2 * MINUTE))
    store.store_window(window(T0))  # an older window stored late does not move it back
    assert store.closed_until("m") == T0 + 3 * MINUTE
    with pytest.raises(ValueError):
        store.ensure_model("x" * 129)


# ---------------------------------------------------------------------- time zones


def test_times_come_back_aware_utc(store: Store) -> None:
    cet = timezone(timedelta(hours=1))
    start = datetime(2025, 3, 1, 13, 0, tzinfo=cet)  # == 12:00 UTC
    rec = window(
        start, events=[ev("a", at=start)], results=[result()], anomalies=[anomaly("a", 1.0, at=start)]
    )
    stored = store.store_window(rec)
    assert stored.start == T0

    [w] = store.windows("m")
    [r] = store.window_results()
    [a] = store.anomalies()
    closed = store.closed_until("m")
    for value in (
        w.start,
        w.end,
        w.closed_at,
        r.window_start,
        r.window_end,
        r.created_at,
        a.event_time,
        closed,
    ):
        assert value is not None
        assert value.tzinfo is UTC, value
    assert (w.start, r.window_start, a.event_time) == (T0, T0, T0)
    assert store.window_results(since=start) == [r]  # aware filters in any zone


def test_utc_datetime_type_refuses_naive_values(engine: Engine) -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2025, 1, 1), engine.dialect)
    assert UTCDateTime().process_result_value(datetime(2025, 1, 1), engine.dialect) == datetime(
        2025, 1, 1, tzinfo=UTC
    )


# ---------------------------------------------------------------------- history queries


def test_history_queries_order_and_filters(store: Store) -> None:
    for i in range(3):
        start = T0 + i * MINUTE
        store.store_window(
            window(
                start,
                events=events(f"w{i}", 2, start),
                results=[result("ks", statistic=i / 10), result("mmd", "alert" if i == 2 else "ok")],
                anomalies=[anomaly(f"w{i}-0", float(i), start), anomaly(f"w{i}-1", 10.0 + i, start)],
            )
        )
    store.store_window(window(T0, model="other", results=[result("ks")], anomalies=[anomaly("o", 99.0)]))

    rows = store.window_results(model="m")
    assert [(r.window_start, r.detector) for r in rows] == [
        (T0 + 2 * MINUTE, "ks"),
        (T0 + 2 * MINUTE, "mmd"),
        (T0 + MINUTE, "ks"),
        (T0 + MINUTE, "mmd"),
        (T0, "ks"),
        (T0, "mmd"),
    ]
    assert len(store.window_results()) == 7
    assert [r.statistic for r in store.window_results(model="m", detector="ks")] == [0.2, 0.1, 0.0]
    assert [r.window_start for r in store.window_results(model="m", detector="ks", since=T0 + MINUTE)] == [
        T0 + 2 * MINUTE,
        T0 + MINUTE,
    ]
    assert [r.window_start for r in store.window_results(detector="ks", until=T0 + MINUTE)] == [T0, T0]
    assert len(store.window_results(model="m", limit=2)) == 2
    alert = store.window_results(model="m", detector="mmd", limit=1)[0]
    assert (alert.status, alert.window_end, alert.model, alert.threat) == (
        "alert",
        T0 + 3 * MINUTE,
        "m",
        "drift",
    )
    assert alert.evidence == {"feature": "x"}

    assert [a.score for a in store.anomalies(model="m")] == [12.0, 11.0, 10.0, 2.0, 1.0, 0.0]
    assert [a.score for a in store.anomalies()][:2] == [99.0, 12.0]
    assert [a.score for a in store.anomalies(model="m", limit=2)] == [12.0, 11.0]
    in_range = store.anomalies(model="m", since=T0 + MINUTE, until=T0 + 2 * MINUTE)
    assert [a.event_id for a in in_range] == ["w1-1", "w1-0"]
    top = store.anomalies(model="m", limit=1)[0]
    assert (top.detector, top.client_id, top.features) == ("iforest", "c1", {"x": 12.0})

    assert [w.start for w in store.windows("m")] == [T0 + 2 * MINUTE, T0 + MINUTE, T0]
    assert len(store.windows("m", limit=1)) == 1
    assert store.windows("nobody") == []
    with pytest.raises(ValueError, match="limit"):
        store.windows("m", limit=0)


def test_alerts_query(store: Store) -> None:
    # Rows inserted directly: this checks the query, not the lifecycle that writes alerts.
    def row(model: str, last_seen: datetime, state: str = "firing") -> Alert:
        return Alert(
            fingerprint=secrets.token_hex(32),
            model=model,
            detector="ks",
            threat="drift",
            severity="warning",
            state=state,
            title=f"drift on {model}",
            summary="feature x moved",
            window_start=last_seen - MINUTE,
            window_end=last_seen,
            statistic=0.9,
            threshold=0.5,
            p_value=None,
            details={"feature": "x"},
            first_seen=T0,
            last_seen=last_seen,
            count=1,
            resolved_at=None,
        )

    with Session(store.engine) as session, session.begin():
        session.add_all([row("m", T0), row("m", T0 + 2 * MINUTE, "resolved"), row("other", T0 + MINUTE)])
    alerts = AlertStore(store.engine)
    assert [(a.model, a.last_seen) for a in alerts.list_alerts()] == [
        ("m", T0 + 2 * MINUTE),
        ("other", T0 + MINUTE),
        ("m", T0),
    ]
    assert [a.last_seen for a in alerts.list_alerts(model="m")] == [T0 + 2 * MINUTE, T0]
    assert [a.model for a in alerts.list_alerts(since=T0 + MINUTE)] == ["m", "other"]
    [latest] = alerts.list_alerts(limit=1)
    assert (latest.state, latest.details, latest.window_start.tzinfo if latest.window_start else None) == (
        "resolved",
        {"feature": "x"},
        UTC,
    )
    assert latest.as_dict()["title"] == "drift on m"


# ---------------------------------------------------------------------- volume and concurrency


def test_ten_thousand_event_window(store: Store) -> None:
    evs = events("big", 10_000)
    store.label_event("m", "big-9999", "dog", T0)  # forces the pending-label lookup over all ids
    stored = store.store_window(window(events=evs, results=[result()], anomalies=[anomaly("big-1", 4.0)]))
    assert (stored.n_events, stored.n_duplicates) == (10_000, 0)
    assert count_events(store, "m") == 10_000
    ids = [e.event_id for e in evs]
    assert store.known_event_ids("m", [*ids, "missing"]) == set(ids)
    assert store.windows("m")[0].n_labelled == 1
    assert not store.store_window(window(events=evs)).created


def test_concurrent_store_window_calls(store: Store, engine: Engine) -> None:
    rec = window(events=events("e", 200), results=[result()])
    outcomes: list[Any] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(store.store_window(rec))
        except Exception as exc:  # collected and asserted on below
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert sorted(o.created for o in outcomes) == [False, False, False, True]
    assert len({o.id for o in outcomes}) == 1
    assert count_events(store, "m") == 200
    assert table_count(engine, "window_results") == 1


def test_labels_attached_while_the_window_is_stored_are_never_lost(store: Store, engine: Engine) -> None:
    # Feedback racing the window that holds its events: whichever commits first, each label
    # must end up on its event (never stranded in pending_labels).
    store.ensure_model("m")  # an existing model row, so nothing else serialises the two writers
    evs = events("r", 300)
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def label_all() -> None:
        barrier.wait()
        try:
            for e in evs:
                store.label_event("m", e.event_id, "dog", T0 + MINUTE)
        except Exception as exc:  # asserted on below
            errors.append(exc)

    labeller = threading.Thread(target=label_all)
    labeller.start()
    barrier.wait()
    store.store_window(window(events=evs))
    labeller.join()
    assert errors == []
    assert table_count(engine, "pending_labels") == 0
    with engine.connect() as conn:
        unlabelled = conn.execute(text("SELECT count(*) FROM events WHERE label IS NULL")).scalar_one()
    assert unlabelled == 0
    assert store.windows("m")[0].n_labelled == 300


# ---------------------------------------------------------------------- availability


def test_ping(store: Store) -> None:
    store.ping()


def test_postgresql_on_a_closed_port_is_unavailable() -> None:
    eng = make_engine(CLOSED_PORT_URL)
    try:
        s = Store(eng)
        with pytest.raises(StorageUnavailable) as info:
            s.ping()
        assert isinstance(info.value.__cause__, SQLAlchemyError)  # mapped, not a raw driver error
        with pytest.raises(StorageUnavailable):
            s.store_window(window(events=[ev("a")]))
        with pytest.raises(StorageUnavailable):
            s.known_event_ids("m", ["a"])
        with pytest.raises(StorageUnavailable):
            migrate(eng)
    finally:
        eng.dispose()
    with pytest.raises(StorageUnavailable):
        migrate(CLOSED_PORT_URL)


def test_sqlite_unopenable_or_locked_is_unavailable(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    try:
        with pytest.raises(StorageUnavailable):
            Store(eng).ping()
    finally:
        eng.dispose()

    path = tmp_path / "locked.db"
    migrate(f"sqlite:///{path}")
    eng = make_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(StorageUnavailable, match="locked"):
            Store(eng).ensure_model("m")
        holder.execute("ROLLBACK")
        Store(eng).ensure_model("m")
    finally:
        holder.close()
        eng.dispose()


def test_unsupported_backend_and_bad_url() -> None:
    with pytest.raises(StorageError, match="unsupported"):
        make_engine("mysql://u@h/db")
    with pytest.raises(StorageError, match="invalid database URL"):
        make_engine("not a url")


@pytest.mark.postgres
def test_postgresql_reconnects_after_connections_are_dropped(pg_database: str) -> None:
    eng = make_engine(pg_database)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        s = Store(eng)
        s.ping()
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": make_url(pg_database).database},
            ).scalar_one()
        assert killed >= 1
        s.ping()  # pool_pre_ping replaced the dead pooled connection
        assert inspect(eng).get_table_names() is not None
    finally:
        admin.dispose()
        eng.dispose()
