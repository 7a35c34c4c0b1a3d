"""Membership inference and model inversion by one client: bursts of near-duplicate queries.

Black-box attacks that probe a model around a few chosen points (membership inference by perturbation,
model inversion, decision-based adversarial search) send many queries that are tiny variations of one
another. Chen, Carlini and Wagner (*Stateful Detection of Black-Box Adversarial Attacks*, 2019) keep each
client's recent queries and flag a query whose mean distance to its ``k`` nearest earlier queries of the
same client is far below what benign clients produce. Here:

* queries are the events' features encoded and standardised with the reference's :class:`FeatureSchema`;
  "earlier" means the client's previous ``max_history`` queries, from former windows (bounded per-client
  state, see :mod:`detectors.security._clients`) and from earlier in the current window (in event time);
* the per-query threshold ``tau`` is calibrated on the reference: benign pseudo-clients send reference
  events in seeded random order through the same computation, and ``tau`` is the ``duplicate_quantile`` of
  their kNN mean distances. Only the second half of each pseudo-client's queries enters the quantile: later
  queries have more earlier neighbours, hence smaller distances, so this ``tau`` is the conservative one
  for clients with long histories;
* a query below ``tau`` is a *near-duplicate*. A benign query is one with probability about
  ``duplicate_quantile`` (default 0.001: benign near-duplicates come in clusters, e.g. a run of similar
  handwritten ones, which a binomial-type count understates; with 0.01, one benign digits client showed 5
  near-duplicates in 20 queries, p = 0.0003, in 40 windows of the benchmark, and none with 0.001, while the
  attack's queries stay far below either ``tau``); that share is itself estimated from the reference, so the
  number of near-duplicates among a client's ``n`` scored queries of the window is tested against a
  beta-binomial distribution (``BetaBinomial(n, c + 1, m - c)`` with ``m`` the reference size and ``c =
  ceil(duplicate_quantile * m)``, the same conformal treatment as ``vae_anomaly``'s). A client must also have
  at least ``min_duplicates`` of them, so that a handful of retried requests never alerts;
* the p-values are Bonferroni-corrected over the clients tested in the window; the window alerts when the
  smallest is ``<= alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy import stats

from detectors._checks import check_float, check_int
from detectors.base import Batch, DetectionResult, Threat
from detectors.drift._stats import plain
from detectors.encoding import FeatureSchema
from detectors.security._clients import (
    ClientHistoryDetector,
    ClientHistoryState,
    client_result,
    earlier_distances,
    group_by_client,
    pseudo_client_streams,
)

__all__ = ["ProbingDetector", "ProbingState"]

# Evidence lists at most this many event ids per finding.
_MAX_IDS = 20


def _knn_mean(distances: np.ndarray, k: int) -> np.ndarray:
    """Per row, the mean of the ``k`` smallest finite distances; NaN for rows with fewer than ``k``."""
    out = np.full(distances.shape[0], np.nan)
    if distances.shape[1] < k:
        return out
    nearest = np.partition(distances, k - 1, axis=1)[:, :k]
    enough = np.isfinite(nearest).all(axis=1)
    out[enough] = nearest[enough].mean(axis=1)
    return out


@dataclass
class ProbingState(ClientHistoryState):
    """The encoding, the near-duplicate threshold and the client histories."""

    params: dict[str, Any]  # k, duplicate_quantile and max_history, which tau depends on
    schema: dict[str, Any]  # FeatureSchema.state_dict()
    tau: float
    benign_median: float
    n_reference: int
    clients: dict[str, Any]  # ClientHistories.state_dict()


class ProbingDetector(ClientHistoryDetector[ProbingState], id="probing", threat=Threat.PRIVACY):
    """Flags clients that send bursts of near-duplicate queries (Chen, Carlini and Wagner's stateful test).

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5); Bonferroni-split over the clients tested in the window.
    k
        Neighbours averaged per query (>= 1); a query is scored once its client has ``k`` earlier ones.
    duplicate_quantile
        Quantile of the benign kNN mean distances that defines a near-duplicate, in (0, 0.5).
    min_duplicates
        Fewest near-duplicates in a window for a client to be flagged (>= 1).
    max_history
        Queries remembered per client (>= ``k``).
    max_clients
        Clients remembered (>= 1); the least recently active is forgotten first.
    idle_expiry
        Seconds of event time after which a silent client is forgotten (> 0).
    n_calibration
        Benign pseudo-clients simulated from the reference to calibrate ``tau`` (>= 1).
    seed
        Seed of the pseudo-clients' orders (>= 0).

    Notes
    -----
    ``statistic`` is the most significant client's share of near-duplicates among its scored queries of the
    window, ``threshold`` the share that would have alerted for it, ``p_value`` its corrected p-value.
    ``evidence["subjects"]`` names the flagged client ids, most significant first; ``evidence["findings"]``
    holds, for each, ``near_duplicates``, ``scored_queries``, ``mean_knn_distance`` (over its scored queries
    of the window), ``benign_threshold`` (``tau``), ``benign_median_knn_distance``, ``expected_share`` and
    the event ids of its closest near-duplicates (at most 20, closest first).

    Memory: at most ``max_clients * max_history * 4 * dim`` bytes of histories, ``dim`` the encoded width.

    Examples
    --------
    >>> from detectors._examples import flagged, gaussian
    >>> detector = ProbingDetector(n_calibration=20).fit(gaussian(300, seed=0))
    >>> probe = gaussian(40, seed=2, loc=[0.5, -1, 0, 1], scale=0.01, clients="prober")  # copies of one input
    >>> flagged(detector, gaussian(150, seed=1, clients=5), probe)
    (('ok', []), ('alert', ['prober']))
    """

    calibrated_with = ("k", "duplicate_quantile", "max_history")

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        k: int = 10,
        duplicate_quantile: float = 0.001,
        min_duplicates: int = 5,
        max_history: int = 300,
        max_clients: int = 1000,
        idle_expiry: float = 86_400.0,
        n_calibration: int = 100,
        seed: int = 0,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.k = check_int("k", k, 1)
        self.duplicate_quantile = check_float("duplicate_quantile", duplicate_quantile, 0.0, 0.5)
        self.min_duplicates = check_int("min_duplicates", min_duplicates, 1)
        self._init_histories(max_history, max_clients, idle_expiry, min_history=self.k)
        self.n_calibration = check_int("n_calibration", n_calibration, 1)
        self.seed = check_int("seed", seed, 0)

        self._tau = math.nan
        self._benign_median = math.nan
        self._n_reference = 0

    # ------------------------------------------------------------------ parameters

    @property
    def tau(self) -> float:
        """The kNN mean distance below which a query is a near-duplicate."""
        self._require_fitted()
        return self._tau

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Learn the encoding and the benign kNN distance level from pseudo-clients of the reference's
        ``features``; forgets every client history. A ValueError if the reference has no features or fewer
        than ``2 k + 2`` events."""
        n = len(reference)
        if len(reference.features) != n or n < 2 * self.k + 2:
            raise ValueError(
                f"{self.id}: the reference needs features and at least 2 k + 2 = {2 * self.k + 2} events, "
                f"it has {n}"
            )
        schema = FeatureSchema.fit(reference.features)
        encoded = reference.encoded(schema)
        length = min(n, self.max_history + 1)
        start = max(self.k, length // 2)
        samples = []
        for rows in pseudo_client_streams(n, self.n_calibration, length, self.seed):
            queries = encoded[rows]
            knn = _knn_mean(earlier_distances(queries[:0], queries, self.max_history), self.k)
            samples.append(knn[start:])
        pooled = np.concatenate(samples)
        self._schema = schema
        self._clients = self._new_store(schema.dim)
        self._tau = float(np.quantile(pooled, self.duplicate_quantile))
        self._benign_median = float(np.median(pooled))
        self._n_reference = n
        return self

    # ------------------------------------------------------------------ testing a window

    def _beta_parameters(self) -> tuple[int, int]:
        """``(c + 1, m - c)`` of the beta-binomial null distribution of a client's near-duplicate count."""
        m = self._n_reference
        c = min(m - 1, math.ceil(self.duplicate_quantile * m))
        return c + 1, m - c

    def evaluate(self, window: Batch) -> DetectionResult:
        """Add the window's queries to their clients' histories and test each client's near-duplicates;
        ``event_ids``, ``features``, ``client_ids`` and ``timestamps`` are used. Skipped when the window lacks
        client ids, timestamps or features, or no client has ``k`` earlier queries yet (the histories are
        updated all the same)."""
        encoded = self._window_queries(window)
        if isinstance(encoded, DetectionResult):
            return encoded
        n = len(window)
        a, b = self._beta_parameters()

        tested: list[dict[str, Any]] = []
        groups = group_by_client(window)
        for group in groups:
            history = self._clients.get(group.client)
            queries = encoded[group.rows]
            previous = history.queries if history is not None else self._clients.empty_queries()
            knn = _knn_mean(earlier_distances(previous, queries, self.max_history), self.k)
            self._clients.update(group.client, queries, np.empty(0), group.last_seen)
            scored = np.isfinite(knn)
            n_scored = int(scored.sum())
            if n_scored == 0:
                continue
            duplicate = scored & (knn < self._tau)
            n_duplicates = int(duplicate.sum())
            # Fewer than min_duplicates is never evidence (retries happen): p-value 1, so that "alert" and
            # "p-value <= alpha" always agree.
            p_raw = (
                float(stats.betabinom.sf(n_duplicates - 1, n_scored, a, b))
                if n_duplicates >= self.min_duplicates
                else 1.0
            )
            closest = np.flatnonzero(duplicate)[np.argsort(knn[duplicate], kind="stable")][:_MAX_IDS]
            tested.append(
                {
                    "subject": group.client,
                    "p_raw": p_raw,
                    "statistic": n_duplicates / n_scored,
                    "near_duplicates": n_duplicates,
                    "scored_queries": n_scored,
                    "window_queries": int(group.rows.size),
                    "mean_knn_distance": plain(float(knn[scored].mean())),
                    "event_ids": [str(window.event_ids[group.rows[i]]) for i in closest],
                }
            )
        if not tested:
            return self.skipped(
                n, f"no client has {self.k} earlier queries yet ({len(groups)} clients in the window)"
            )
        return self._result(n, tested, n_clients=len(groups), beta=(a, b))

    def _critical_share(self, n_scored: int, level: float, beta: tuple[int, int]) -> float | None:
        """Smallest near-duplicate share among ``n_scored`` queries whose tail probability is ``<= level``."""
        counts = np.arange(n_scored + 1)
        # P(X >= k) for every k from one pmf: scipy's sf sums the pmf again for each k (quadratic in n).
        tails = np.cumsum(stats.betabinom.pmf(counts, n_scored, *beta)[::-1])[::-1]
        alerting = np.flatnonzero((tails <= level) & (counts >= self.min_duplicates))
        return float(alerting[0] / n_scored) if alerting.size else None

    def _result(
        self, n: int, tested: list[dict[str, Any]], n_clients: int, beta: tuple[int, int]
    ) -> DetectionResult:
        m = len(tested)
        expected = beta[0] / (beta[0] + beta[1])
        findings = []
        for finding in tested:
            p_value = min(1.0, m * finding.pop("p_raw"))
            findings.append(
                {
                    "subject": finding["subject"],
                    "statistic": plain(finding.pop("statistic")),
                    "p_value": p_value,
                    "threshold": None,  # filled in for the reported findings only (it costs a tail per count)
                    "benign_threshold": plain(self._tau),
                    "benign_median_knn_distance": plain(self._benign_median),
                    "expected_share": plain(expected),
                    **{key: value for key, value in finding.items() if key != "subject"},
                }
            )
        findings.sort(key=lambda f: (f["p_value"], -(f["statistic"] or 0.0), f["subject"]))
        flagged = [f for f in findings if f["p_value"] <= self.alpha]
        top = flagged[0] if flagged else findings[0]
        for finding in [*flagged, top]:
            finding["threshold"] = plain(
                self._critical_share(finding["scored_queries"], self.alpha / m, beta)
            )
        evidence: dict[str, Any] = {
            "subjects": [f["subject"] for f in flagged],
            "findings": flagged,
            "clients_tested": m,
            "clients_in_window": n_clients,
            "clients_remembered": len(self._clients),
            "clients_evicted": self._clients.evicted,
            "clients_expired": self._clients.expired,
        }
        return client_result(self, n, top, bool(flagged), evidence)

    # ------------------------------------------------------------------ state

    def _learned_fields(self) -> dict[str, Any]:
        return {"tau": self._tau, "benign_median": self._benign_median, "n_reference": self._n_reference}

    def _check_learned(self, state: ProbingState, schema: FeatureSchema) -> None:
        if state.n_reference < 2 * self.k + 2 or not math.isfinite(state.tau):
            raise self._malformed(f"tau={state.tau}, n_reference={state.n_reference}")

    def _install_learned(self, state: ProbingState) -> None:
        self._tau = state.tau
        self._benign_median = state.benign_median
        self._n_reference = state.n_reference
