"""The storage API the monitor uses: :class:`Store`, composed of one class per concern.

* :mod:`~storage.store.windows`: closed windows with their events, results and anomalies;
* :mod:`~storage.store.labels`: late ground truth, attached or parked;
* :mod:`~storage.store.references`: reference data sets and fitted detector state;
* :mod:`~storage.store.dead_letters`: messages the intake rejected;
* :mod:`~storage.store.history`: the read side (windows, results, anomalies).

Every public method is one database transaction: it either commits completely or rolls back
completely and raises :class:`~storage.errors.StorageError` (or its subclass
:class:`~storage.errors.StorageUnavailable`, which the monitor retries). Inputs and outputs are
the frozen records of :mod:`storage.records`; ORM objects never leave this package.

Concurrency: writers that must not interleave per model (:meth:`Store.store_window` and
:meth:`Store.label_event`) first lock the model's row in ``models`` (``FOR UPDATE`` /
``FOR SHARE`` on PostgreSQL); on SQLite every write transaction starts with ``BEGIN IMMEDIATE``,
which serialises writers anyway. Single-row idempotent writes use ``INSERT ... ON CONFLICT``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import literal, select

from storage import models as orm
from storage.store.dead_letters import DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetterStore
from storage.store.history import HistoryReader
from storage.store.labels import LabelStore
from storage.store.references import ReferenceStore
from storage.store.registry import ensure_model
from storage.store.windows import WindowStore
from storage.tables import IN_CHUNK

__all__ = ["DEFAULT_MAX_DEAD_LETTER_BYTES", "IN_CHUNK", "Store"]


class Store(DeadLetterStore, WindowStore, LabelStore, ReferenceStore, HistoryReader):
    """Sentinel's persistent state on one engine (see :func:`storage.make_engine`).

    The schema must exist (:func:`storage.migrate`). Thread-safe: each call uses its own
    pooled connection. Constructed as ``Store(engine, max_dead_letter_bytes=...)`` (see
    :class:`~storage.store.dead_letters.DeadLetterStore`).
    """

    def ensure_model(self, name: str) -> None:
        """Register model ``name`` (idempotent)."""
        with self._transaction("registering a model", write=True) as session:
            ensure_model(session, name)

    def closed_until(self, model: str) -> datetime | None:
        """The end of the latest stored window of ``model`` (None if none was stored)."""
        with self._transaction("reading closed_until") as session:
            return session.scalar(
                select(orm.MonitoredModel.last_window_end).where(orm.MonitoredModel.name == model)
            )

    def ping(self) -> None:
        """Check that the database answers (``SELECT 1``); raises StorageUnavailable if not."""
        with self._transaction("ping") as session:
            session.execute(select(literal(1))).one()
