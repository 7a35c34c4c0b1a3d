"""Sentinel's persistent state: SQLite (embedded default) or PostgreSQL, via SQLAlchemy 2.

Usage::

    engine = make_engine("sqlite:///sentinel.db")
    migrate(engine)          # alembic upgrade head; a no-op when up to date
    store = Store(engine)

Every :class:`Store` method is one transaction and raises :class:`StorageError` on failure,
:class:`StorageUnavailable` (a subclass) when retrying later may succeed. This package never
imports ``monitor`` or ``detectors``.
"""

from storage.alert_store import AlertStore, AlertWork
from storage.alert_store.evaluation import AlertState, ResultEvent
from storage.alert_store.outbox import (
    AttemptIn,
    AttemptRecord,
    DeliveryIn,
    DeliveryJob,
    DeliveryRecord,
    NotificationLogEntry,
)
from storage.alert_store.silences import SilenceIn, SilenceRecord
from storage.alert_store.subscriptions import SubscriptionIn, SubscriptionRecord
from storage.engine import make_engine
from storage.errors import StorageError, StorageUnavailable, is_unavailable
from storage.migrate import migrate
from storage.records import (
    AlertRecord,
    AnomalyRecord,
    AnomalyRow,
    DeadLetter,
    DeadLetterIn,
    DetectorStateRow,
    EventRow,
    ReferenceRecord,
    ResultRow,
    StoredWindow,
    WindowRecord,
    WindowResultRecord,
    WindowSummary,
)
from storage.store import Store

__all__ = [
    "AlertRecord",
    "AlertState",
    "AlertStore",
    "AlertWork",
    "AnomalyRecord",
    "AnomalyRow",
    "AttemptIn",
    "AttemptRecord",
    "DeadLetter",
    "DeadLetterIn",
    "DeliveryIn",
    "DeliveryJob",
    "DeliveryRecord",
    "DetectorStateRow",
    "EventRow",
    "NotificationLogEntry",
    "ReferenceRecord",
    "ResultEvent",
    "ResultRow",
    "SilenceIn",
    "SilenceRecord",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "StoredWindow",
    "SubscriptionIn",
    "SubscriptionRecord",
    "WindowRecord",
    "WindowResultRecord",
    "WindowSummary",
    "is_unavailable",
    "make_engine",
    "migrate",
]
