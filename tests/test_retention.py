"""Retention: history older than its age is deleted in bounded batches, with what belongs to it, on SQLite and
PostgreSQL; everything younger, and resolved alerts whose notice is still pending, stay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from monitor.config import RetentionSettings
from monitor.retention import purge_expired
from storage import AlertStore, DeadLetterIn, DeliveryIn, Store, make_engine, migrate
from storage.purge import Retention
from tests.stored_state import alert_states
from tests.test_api import MIN, T0, add_alert, add_window, resolve

DAY = timedelta(days=1)


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
