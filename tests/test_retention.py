"""Retention: history older than its age is deleted in bounded batches, with what belongs to it, on SQLite and
PostgreSQL; everything younger, and resolved alerts whose notice is still pending, stay. Ages count from
when Sentinel stored the data (a window's ``closed_at``, a dead letter's ``received_at``, an alert's
``resolved_at``), never from event time: a replayed backfill of last year's events is kept for the
configured period."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from monitor.config import RetentionSettings
from monitor.retention import purge_expired
from storage import (
    AlertStore,
    DeadLetterIn,
    DeliveryIn,
    EventRow,
    ResultRow,
    Store,
    WindowRecord,
    make_engine,
    migrate,
)
from storage.migrate import alembic_config, current_revision
from storage.models import Base
from storage.purge import Retention
from tests.stored_state import alert_states
from tests.test_api import MIN, T0, add_alert, add_window, resolve

DAY = timedelta(days=1)
YEAR = 365 * DAY
# A week's retention for every kind, as an operator would configure it.
WEEK = RetentionSettings(windows=7 * 86400.0, dead_letters=7 * 86400.0, resolved_alerts=7 * 86400.0)


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, AlertStore, Retention]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine), AlertStore(engine), Retention(engine)
    engine.dispose()


def count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())


def test_old_history_goes_in_batches_with_its_children_and_the_rest_stays(
    stores: tuple[Store, AlertStore, Retention],
) -> None:
    store, alerts, retention = stores
    for k in range(7):  # windows 0..6 end at T0 + (k+1) min, each with 3 events, results and an anomaly
        add_window(store, k, detectors=("vae_anomaly", "feature_drift"))
    store.add_dead_letters(
        [DeadLetterIn("t", 0, i, None, b"x", "invalid JSON", None, T0 + i * MIN) for i in range(5)]
    )
    old = resolve(alerts, add_alert(alerts, at=T0), T0 + MIN)
    old_but_pending = resolve(alerts, add_alert(alerts, at=T0), T0 + MIN)
    assert old_but_pending.id is not None
    with alerts.evaluation(T0 + MIN) as work:
        assert work is not None
        work.add_delivery(
            DeliveryIn(
                old_but_pending.id,
                "kafka:alerts",
                "kafka",
                None,
                "alerts",
                "resolved",
                "resolved",
                "warning",
                b"{}",
                T0,
            )
        )
    young = resolve(alerts, add_alert(alerts, at=T0 + 10 * MIN), T0 + 10 * MIN)
    firing = add_alert(alerts, at=T0)

    # Keep what is younger than the 4th minute: windows 0-2 (ending at minutes 1-3) go, 3-6 stay.
    now = T0 + 4 * MIN + 2 * DAY
    settings = RetentionSettings(
        windows=2 * 86400.0, dead_letters=2 * 86400.0, resolved_alerts=2 * 86400.0, batch=2
    )
    deleted = purge_expired(retention, settings, now)

    assert deleted == {"windows": 3, "dead_letters": 4, "resolved_alerts": 1}
    assert sorted(w.start for w in store.windows("fraud")) == [T0 + k * MIN for k in range(3, 7)]
    # The windows' events, results and anomalies went with them.
    assert count(store, "events") == 4 * 3
    assert count(store, "window_results") == 4 * 2
    assert count(store, "anomalies") == 4
    assert [d.offset for d in store.dead_letters()] == [4]
    kept = {a.id for a in alert_states(alerts)}
    assert old.id not in kept
    assert {old_but_pending.id, young.id, firing.id} <= kept  # a pending resolution notice keeps its alert
    # A second run finds nothing more to do.
    assert purge_expired(retention, settings, now) == {"windows": 0, "dead_letters": 0, "resolved_alerts": 0}


def test_null_ages_keep_everything_and_a_run_is_bounded(stores: tuple[Store, AlertStore, Retention]) -> None:
    store, _, retention = stores
    for k in range(5):
        add_window(store, k)
    keep = RetentionSettings(windows=None, dead_letters=None, resolved_alerts=None)
    assert purge_expired(retention, keep, T0 + 365 * DAY) == {}
    assert len(store.windows("fraud")) == 5
    # One row per batch, at most MAX_BATCHES_PER_RUN batches a run: a run does a bounded amount of work.
    import monitor.retention

    original = monitor.retention.MAX_BATCHES_PER_RUN
    monitor.retention.MAX_BATCHES_PER_RUN = 2
    try:
        one_by_one = RetentionSettings(windows=1.0, dead_letters=None, resolved_alerts=None, batch=1)
        assert purge_expired(retention, one_by_one, T0 + DAY) == {"windows": 2}
        assert purge_expired(retention, one_by_one, T0 + DAY) == {"windows": 2}
        assert purge_expired(retention, one_by_one, T0 + DAY) == {"windows": 1}
    finally:
        monitor.retention.MAX_BATCHES_PER_RUN = original
    assert store.windows("fraud") == []


# ----------------------------------------------------------- ages count from when Sentinel stored the data


def store_backfilled_window(store: Store, start: datetime, stored_at: datetime) -> None:
    """A window of events from ``start``, closed and stored at ``stored_at`` (as a replay of old history
    does)."""
    events = [EventRow(f"old-{i}", start + timedelta(seconds=i), None, "a", None) for i in range(3)]
    result = ResultRow("vae_anomaly", "robustness", "ok", 3, 0.1, 0.05, 0.01, {}, None)
    store.store_window(
        WindowRecord("fraud", start, start + MIN, 0, events, [result], (), closed_at=stored_at)
    )


def test_a_backfilled_window_is_kept_for_the_period_from_when_it_was_stored(
    stores: tuple[Store, AlertStore, Retention],
) -> None:
    store, _, retention = stores
    now = T0 + YEAR
    store_backfilled_window(store, start=T0, stored_at=now)  # events a year old, stored just now

    assert purge_expired(retention, WEEK, now)["windows"] == 0
    assert purge_expired(retention, WEEK, now + 6 * DAY)["windows"] == 0
    assert [w.start for w in store.windows("fraud")] == [T0]
    assert count(store, "events") == 3

    # Stored more than a week ago: now it goes, with its events and results.
    assert purge_expired(retention, WEEK, now + 7 * DAY + MIN)["windows"] == 1
    assert store.windows("fraud") == []
    assert (count(store, "events"), count(store, "window_results")) == (0, 0)


def test_a_window_with_recent_events_stored_long_ago_goes(
    stores: tuple[Store, AlertStore, Retention],
) -> None:
    # The other way round, so that event time cannot be what decides.
    store, _, retention = stores
    store_backfilled_window(store, start=T0 + YEAR, stored_at=T0)
    assert purge_expired(retention, WEEK, T0 + YEAR + 2 * MIN)["windows"] == 1


def test_dead_letters_age_from_when_they_were_received(stores: tuple[Store, AlertStore, Retention]) -> None:
    store, _, retention = stores
    now = T0 + YEAR
    store.add_dead_letters([DeadLetterIn("t", 0, 1, None, b"x", "invalid JSON", None, now)])

    assert purge_expired(retention, WEEK, now + 6 * DAY)["dead_letters"] == 0
    assert [d.offset for d in store.dead_letters()] == [1]
    assert purge_expired(retention, WEEK, now + 7 * DAY + MIN)["dead_letters"] == 1
    assert store.dead_letters() == []


def test_resolved_alerts_age_from_their_resolution(stores: tuple[Store, AlertStore, Retention]) -> None:
    _, alerts, retention = stores
    now = T0 + YEAR
    alert = resolve(alerts, add_alert(alerts, at=T0), now)  # first seen a year ago, resolved just now

    assert purge_expired(retention, WEEK, now + 6 * DAY)["resolved_alerts"] == 0
    assert [a.id for a in alert_states(alerts)] == [alert.id]
    assert purge_expired(retention, WEEK, now + 7 * DAY + MIN)["resolved_alerts"] == 1
    assert alert_states(alerts) == []


def move_schema(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    """Upgrade or downgrade (``step``) the schema to ``revision``."""
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        step(config, revision)


def test_upgrading_a_database_with_history_indexes_the_stored_time_and_keeps_its_rows(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        move_schema(engine, command.upgrade, "0003")
        store = Store(engine)
        store_backfilled_window(store, start=T0, stored_at=T0 + YEAR)  # written by the previous version

        migrate(engine)

        assert current_revision(engine) == "0004"
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("windows")}
        assert indexes["ix_windows_closed_at"] == ["closed_at"]
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        retention = Retention(engine)
        assert purge_expired(retention, WEEK, T0 + YEAR + DAY)["windows"] == 0
        assert [w.start for w in store.windows("fraud")] == [T0]
        assert purge_expired(retention, WEEK, T0 + YEAR + 8 * DAY)["windows"] == 1
        move_schema(engine, command.downgrade, "0003")  # and back down
        assert "ix_windows_closed_at" not in {ix["name"] for ix in inspect(engine).get_indexes("windows")}
    finally:
        engine.dispose()
