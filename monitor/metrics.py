"""In-process measurements the daemon exposes on ``/metrics``: duration histograms and labelled counters.

The API renders them in the Prometheus text format itself (see :mod:`monitor.api.prometheus`); these only
count. They are written from the pipeline's threads and read from the API's, so every update and every
snapshot takes a lock: a scrape never sees a histogram whose count disagrees with its buckets.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DURATION_BUCKETS", "Histogram", "HistogramSnapshot", "LabelledCounter"]

# Seconds. Window evaluations run from milliseconds (a few hundred events, cheap tests) to seconds (VAE
# scoring and MMD permutations on 10,000 events), so the buckets span 1 ms to 1 min.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One label set's histogram: cumulative counts per upper bound (the last is +Inf), sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float
    count: int


class Histogram:
    """A Prometheus-style histogram with one series per label value (e.g. per detector id)."""

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be a non-empty, strictly increasing sequence")
        self.bounds = tuple(float(b) for b in bounds)
        self._lock = threading.Lock()
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, value: float, label: str = "") -> None:
        """Count one observation (e.g. a duration in seconds) under ``label``."""
        index = bisect.bisect_left(self.bounds, value)  # first bound >= value; len(bounds) means +Inf
        with self._lock:
            buckets = self._buckets.setdefault(label, [0] * (len(self.bounds) + 1))
            buckets[index] += 1
            self._sums[label] = self._sums.get(label, 0.0) + value

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        """Every label's histogram, with cumulative bucket counts as the exposition format wants them."""
        with self._lock:
            copies = {label: (list(buckets), self._sums[label]) for label, buckets in self._buckets.items()}
        result = {}
        for label, (buckets, total) in copies.items():
            running, cumulative = 0, []
            for count in buckets:
                running += count
                cumulative.append(running)
            result[label] = HistogramSnapshot(self.bounds, tuple(cumulative), total, running)
        return result


class LabelledCounter:
    """Monotonic counts keyed by a tuple of label values (e.g. ``(model, outcome)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def inc(self, *labels: str, by: int = 1) -> None:
        with self._lock:
            self._counts[labels] += by

    def snapshot(self) -> Mapping[tuple[str, ...], int]:
        with self._lock:
            return dict(self._counts)
