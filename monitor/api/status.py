"""What the running daemon tells the API that the database cannot: :class:`RuntimeStatus`.

The daemon hands :func:`monitor.api.app.create_app` a :data:`StatusProvider`; the readiness probe, the
Prometheus scrape and the model list call it once per request. Tests and ``replay`` pass none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.metrics import HistogramSnapshot

__all__ = ["RuntimeStatus", "StatusProvider"]


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """What the daemon knows that the database does not: for ``/readyz``, ``/metrics`` and ``/v1/models``.

    ``broker_connected``/``partitions_assigned`` are None when there is no broker (e.g. tests, replay).
    """

    state: str | None = None  # the daemon's run state; ready only while "running"
    broker_connected: bool | None = None
    partitions_assigned: int | None = None
    models_ready: bool = True
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    events_by_model: Mapping[tuple[str, ...], int] = field(default_factory=dict)  # (model, outcome) -> count
    consumer_lag: Mapping[tuple[str, int], int] = field(
        default_factory=dict
    )  # (topic, partition) -> messages
    # metric name -> label value (model or detector id) -> histogram
    histograms: Mapping[str, Mapping[str, HistogramSnapshot]] = field(default_factory=dict)


StatusProvider = Callable[[], RuntimeStatus]
