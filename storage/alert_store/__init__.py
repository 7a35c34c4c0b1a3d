"""Storage for alerting: :class:`AlertStore`, composed of one class per concern, each module with its records.

* :mod:`~storage.alert_store.evaluation`: the alert engine's transaction (:class:`AlertWork`), its cursor,
  and what it reads and writes (:class:`~storage.alert_store.evaluation.ResultEvent`,
  :class:`~storage.alert_store.evaluation.AlertState`);
* :mod:`~storage.alert_store.outbox`: deliveries and attempts (claim with a lease, record, give up);
* :mod:`~storage.alert_store.subscriptions`: webhook subscriptions with sealed secrets;
* :mod:`~storage.alert_store.silences`: silences;
* :mod:`~storage.alert_store.alerts`: reading alerts;
* :mod:`~storage.alert_store.vocabulary`: severities, states, formats and the like.

:class:`AlertStore` runs on the same engine as :class:`storage.Store`; like it, every public method is
one transaction and raises :class:`~storage.errors.StorageError`
(:class:`~storage.errors.StorageUnavailable` when a retry may succeed). The records are exported by
:mod:`storage`.
"""

from __future__ import annotations

from storage.alert_store.alerts import AlertReads
from storage.alert_store.evaluation import ENGINE_CURSOR, AlertWork, EvaluationStore
from storage.alert_store.outbox import OutboxStore
from storage.alert_store.silences import SilenceStore
from storage.alert_store.subscriptions import SubscriptionStore
from storage.alert_store.vocabulary import (
    ALERT_STATES,
    CHANNELS,
    DELIVERY_STATES,
    FORMATS,
    REASONS,
    SEVERITIES,
)

__all__ = [
    "ALERT_STATES",
    "CHANNELS",
    "DELIVERY_STATES",
    "ENGINE_CURSOR",
    "FORMATS",
    "REASONS",
    "SEVERITIES",
    "AlertStore",
    "AlertWork",
]


class AlertStore(SubscriptionStore, EvaluationStore, OutboxStore, SilenceStore, AlertReads):
    """Alerting state on one engine (the schema must be migrated); thread-safe like :class:`storage.Store`.

    Constructed as ``AlertStore(engine, secret_key=...)`` (see :class:`SubscriptionStore` for the key).
    Two ways in: the alert engine's :meth:`evaluation`, and the delivery worker's
    :meth:`claim_deliveries` and :meth:`record_attempt`; the rest serves the API and the CLI.
    """
