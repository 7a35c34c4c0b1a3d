"""Helpers shared by the data-poisoning indicators (``label_consistency``, ``group_outcome``, ``backdoor``).

* :func:`holm`: Holm's step-down adjusted p-values (family-wise error at most ``alpha`` under any
  dependence, never less powerful than Bonferroni);
* :func:`beta_binomial_sf`: the upper tail of a count whose rate is only known from a finite reference
  sample (see :mod:`detectors.anomaly.vae` for why treating such a rate as exact raises false alarms);
* :func:`window_digest`: a stable digest of a window's event ids, to seed per-window randomness;
* :func:`bounded_ids`: event ids for the evidence, at most :data:`MAX_IDS` of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["MAX_IDS", "beta_binomial_sf", "bounded_ids", "holm", "window_digest"]

MAX_IDS = 20
"""Most event ids reported per finding: enough to start an investigation, small enough for an alert."""


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order of ``p_values``.

    A test rejects at family-wise level ``alpha`` iff its adjusted p-value is ``<= alpha``. The smallest
    adjusted p-value equals Bonferroni's (``m p``); the others are smaller than Bonferroni's, so a second
    flagged subject in the same window needs less evidence than the first.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (m - np.arange(m))
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def beta_binomial_sf(k: int, n: int, successes: int, trials: int) -> float:
    """``P(X >= k)``, ``X`` the count among ``n`` new events of a rate seen ``successes`` of ``trials`` times.

    The rate is not known exactly: after ``successes`` of ``trials`` reference events (uniform prior) it is
    Beta(successes + 1, trials - successes + 1) distributed, so the new count is beta-binomial. Its mean is
    ``n (successes + 1) / (trials + 2)``, close to ``n successes / trials``, but its tail is heavier than
    the binomial's by exactly the reference's sampling uncertainty.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    a, b = successes + 1.0, trials - successes + 1.0
    return float(min(1.0, max(0.0, stats.betabinom.sf(k - 1, n, a, b))))


def window_digest(event_ids: Sequence[str]) -> int:
    """A stable 64-bit digest of a window's event ids (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update("\x00".join(map(str, event_ids)).encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "little")


def bounded_ids(event_ids: Sequence[str], indices: Sequence[int] | np.ndarray) -> list[str]:
    """The ids of the events at ``indices`` (in that order), at most :data:`MAX_IDS`."""
    return [str(event_ids[int(i)]) for i in list(indices)[:MAX_IDS]]
