"""The retention job: delete stored history older than its configured age, a bounded amount per run.

An age counts from when Sentinel stored the data, not from event time (see :mod:`storage.purge`): a replay of
last year's events is kept for the configured period, not deleted by the next run.

Safe on every replica at once: each batch is its own short transaction and, on PostgreSQL, takes rows with
``SKIP LOCKED`` (see :mod:`storage.purge`), so two replicas split the work instead of repeating it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from monitor.config import RetentionSettings
from storage.purge import Retention

__all__ = ["MAX_BATCHES_PER_RUN", "purge_expired"]

log = logging.getLogger("sentinel.retention")

# Per kind and run. A backlog (retention switched on over a year of history) is worked off over several runs
# instead of one long job that would hold up the scheduler's other work.
MAX_BATCHES_PER_RUN = 50


def purge_expired(retention: Retention, settings: RetentionSettings, now: datetime) -> dict[str, int]:
    """Delete what was stored longer than its age before ``now``; returns the rows deleted per kind
    (windows, dead letters, resolved alerts). Raises StorageUnavailable if the database goes away (the next
    run goes on)."""
    jobs = (
        ("windows", settings.windows, retention.purge_windows),
        ("dead_letters", settings.dead_letters, retention.purge_dead_letters),
        ("resolved_alerts", settings.resolved_alerts, retention.purge_resolved_alerts),
    )
    deleted: dict[str, int] = {}
    for kind, age, purge in jobs:
        if age is None:
            continue
        before = now - timedelta(seconds=age)
        total = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            n = purge(before, settings.batch)
            total += n
            if n < settings.batch:
                break
        deleted[kind] = total
        if total:
            what = kind.replace("_", " ")
            log.info("retention: deleted %d %s stored before %s", total, what, before.isoformat())
    return deleted
