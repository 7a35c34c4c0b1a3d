"""The Prometheus text exposition (format 0.0.4) of ``/metrics``: the daemon's counters and the stored totals.

Written directly rather than through a client library: a handful of series, rebuilt on every scrape from a
:class:`~monitor.api.status.RuntimeStatus` snapshot and a few counting queries, with no registry to share
between threads. When the database does not answer, ``sentinel_database_up`` is 0 and the stored totals
read 0, so a scrape still succeeds.
"""

from __future__ import annotations

import math

from monitor.api.status import RuntimeStatus
from monitor.metrics import HistogramSnapshot
from storage import StorageError
from storage.alert_store import ALERT_STATES, DELIVERY_STATES, SEVERITIES
from storage.queries import ReadQueries

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]  # (labels, value)

_EVENT_COUNTERS = (
    ("consumed", "Messages consumed from the broker."),
    ("accepted", "Events accepted into windows."),
    ("rejected", "Messages rejected to the dead-letter store."),
    ("duplicates", "Redelivered events counted once."),
    ("late", "Events that arrived after their window closed."),
)
_HISTOGRAMS = (  # (metric, label name, help)
    ("sentinel_window_close_seconds", "model", "Time to evaluate and store one closed window."),
    ("sentinel_detector_seconds", "detector", "Time one detector takes to evaluate one window."),
)


def render_metrics(queries: ReadQueries, status_now: RuntimeStatus | None) -> str:
    """Every series, in a fixed order: the daemon's counters, the stored totals, then the per-model gauges."""
    status = status_now if status_now is not None else RuntimeStatus()  # no daemon: every count empty
    out = _Exposition()
    _add_runtime_counters(out, status)
    _add_stored_totals(out, queries)
    _add_model_gauges(out, status)
    return out.text()


class _Exposition:
    """The lines of one scrape, written family by family."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[Sample]) -> None:
        self._header(name, kind, help_text)
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self._lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")

    def histogram(
        self, name: str, label_name: str, help_text: str, series: dict[str, HistogramSnapshot]
    ) -> None:
        self._header(name, "histogram", help_text)
        for label, snap in sorted(series.items()):
            base = f'{label_name}="{_escape(label)}"'
            for bound, count in zip((*snap.bounds, math.inf), snap.cumulative, strict=True):
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                self._lines.append(f'{name}_bucket{{{base},le="{le}"}} {count}')
            self._lines.append(f"{name}_sum{{{base}}} {snap.total:.6g}")
            self._lines.append(f"{name}_count{{{base}}} {snap.count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"

    def _header(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")


def _add_runtime_counters(out: _Exposition, status: RuntimeStatus) -> None:
    """What the daemon counted in memory: events, per-model outcomes, consumer lag, durations."""
    for key, help_text in _EVENT_COUNTERS:
        out.family(
            f"sentinel_events_{key}_total", "counter", help_text, [({}, float(status.counters.get(key, 0)))]
        )
    out.family(
        "sentinel_model_events_total",
        "counter",
        "Events per model, accepted into windows or rejected (dead-lettered; model '' when unknown).",
        [
            ({"model": key[0], "outcome": key[1]}, float(n))
            for key, n in sorted(status.events_by_model.items())
        ],
    )
    out.family(
        "sentinel_consumer_lag",
        "gauge",
        "Messages in each owned partition not read yet (high watermark minus the next offset to read).",
        [({"topic": t, "partition": str(p)}, float(n)) for (t, p), n in sorted(status.consumer_lag.items())],
    )
    for name, label_name, help_text in _HISTOGRAMS:
        out.histogram(name, label_name, help_text, dict(status.histograms.get(name, {})))


def _add_stored_totals(out: _Exposition, queries: ReadQueries) -> None:
    """What the database holds; zeros and ``sentinel_database_up 0`` when it does not answer."""
    database_up = 1.0
    try:
        alert_counts = queries.alert_counts()
        deliveries = queries.delivery_counts()
        dead = queries.dead_letter_count()
    except StorageError:
        database_up, alert_counts, deliveries, dead = 0.0, {}, {}, 0
    out.family(
        "sentinel_database_up", "gauge", "Whether the database answered this scrape.", [({}, database_up)]
    )
    out.family(
        "sentinel_alerts",
        "gauge",
        "Stored alerts by state and severity.",
        [
            ({"state": st, "severity": sev}, float(alert_counts.get((st, sev), 0)))
            for st in ALERT_STATES
            for sev in SEVERITIES
        ],
    )
    out.family(
        "sentinel_deliveries",
        "gauge",
        "Webhook/Kafka notifications by delivery state.",
        [({"state": st}, float(deliveries.get(st, 0))) for st in DELIVERY_STATES],
    )
    out.family(
        "sentinel_deliveries_pending",
        "gauge",
        "Notifications waiting to be delivered.",
        [({}, float(deliveries.get("pending", 0)))],
    )
    out.family("sentinel_dead_letters", "gauge", "Stored dead letters.", [({}, float(dead))])


def _add_model_gauges(out: _Exposition, status: RuntimeStatus) -> None:
    """Per model, as the daemon sees it: windows open in memory, detectors fitted."""
    models = sorted(status.models.items())
    out.family(
        "sentinel_open_windows",
        "gauge",
        "Windows open in memory per model.",
        [({"model": name}, float(m.get("open_windows", 0))) for name, m in models],
    )
    out.family(
        "sentinel_model_ready",
        "gauge",
        "1 when the model's detectors are fitted.",
        [({"model": name}, 1.0 if m.get("phase") == "ready" else 0.0) for name, m in models],
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
