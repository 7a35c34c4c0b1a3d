"""Model extraction (stealing) by one client: PRADA's normality test of query distances, per client.

PRADA (Juuti, Szyller, Marchal and Asokan, *PRADA: Protecting against DNN Model Stealing Attacks*, EuroS&P
2019) keeps, for each client, the minimum L2 distance of every new query to the client's earlier queries. A
client asking natural questions produces distances that are roughly normally distributed; an attacker who
synthesises queries (random points, perturbations of a few seeds) does not, and the Shapiro-Wilk statistic
``W`` of its distances falls below a threshold ``delta``. Here:

* queries are the events' features encoded and standardised with the reference's :class:`FeatureSchema`;
  a query's distance is its minimum to the client's previous ``max_history`` queries (PRADA keeps all; the
  bound keeps memory finite). The client histories persist across windows and restarts (bounded, see
  :mod:`detectors.security._clients`), so an attack spread thinly over many windows still accumulates;
* the test looks at the client's last ``c`` distances, ``c`` the largest calibration size not above the
  number it has (at least ``min_queries``);
* **calibration** replaces PRADA's hand-set ``delta``: ``n_calibration`` benign pseudo-clients are simulated
  by sending reference events in seeded random order through the same distance computation. For each
  calibration size ``c``, ``log(1 - W)`` of their first ``c`` distances is close to normal (Royston's
  normalisation of ``W``), so its mean and standard deviation give a p-value for any client's ``W``, also far
  in the tail where 200 pseudo-clients have no sample. Pseudo-clients hold at most half the reference, and the
  standard deviation is divided by the finite-population correction ``sqrt(1 - c / n_reference)``:
  pseudo-clients drawn from one finite reference overlap, and without the correction their statistics vary
  less than real clients' (on breast_cancer with a 170-event reference, 20 % of clean windows alerted).
  ``delta`` (in the evidence) is the ``W`` that reaches ``alpha`` after the correction below;
* PRADA's test misses uniform random queries in many dimensions: their distances concentrate and look
  normal, only much larger than natural ones. A second signal therefore tests the *level*: the log median of
  the same distances against the pseudo-clients' (one-sided, larger), calibrated the same way.

**Peers.** Both tests compare a client with benign pseudo-clients drawn from the reference. When the whole
population shifts, every client's distances change: during the shift, and for as long as the clients'
histories hold the shifted queries, after it (a natural query then has fewer natural predecessors, so its
distance to the nearest grows; on load_digits, two windows at +4 sd on 8 features lifted the benign clients'
level z-scores from about 0 to about 3, and several crossed the threshold). A client is therefore flagged on
a signal only if it also stands out from the other clients tested in the window: its z-score of that signal
as a robust z-score against theirs (median and MAD of the others, the spread no smaller than the reference
pseudo-clients' spread of 1), with a Student-t p-value whose degrees of freedom reflect the MAD's
uncertainty (:func:`~detectors.security._clients.peer_p_values`). The two tests of a signal are combined as
an intersection-union test: its p-value is the larger of the two. With fewer than ``min_peers`` clients
tested, the reference-only test applies, and the evidence says so.

A client's p-value is ``2 min(p_W, p_level)`` (Bonferroni over the two signals); the window alerts when the
smallest p-value, Bonferroni-corrected for the number of clients tested in the window, is ``<= alpha``.
Query volume (a robust z-score of the client's count among the window's clients) and input-space coverage
(mean share of each encoded feature's reference range spanned by the client's stored queries) are reported
as evidence only: a heavy but honest user must not be flagged for its volume.

A client replaying natural data (e.g. a held-out sample of the same population) is, by construction,
indistinguishable from a benign one by these statistics; only its volume shows in the evidence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy import stats

from detectors._checks import check_float, check_int
from detectors.base import Batch, DetectionResult, Threat
from detectors.drift._stats import plain
from detectors.encoding import FeatureSchema
from detectors.security._clients import (
    MIN_PEERS,
    ClientHistoryDetector,
    ClientHistoryState,
    client_result,
    earlier_distances,
    group_by_client,
    peer_p_values,
    peer_robust_z,
    pseudo_client_streams,
    robust_z,
)
from detectors.state import Float64Array, Int64Array

__all__ = ["ExtractionDetector", "ExtractionState"]

# Evidence lists at most this many event ids per finding.
_MAX_IDS = 20

# Two signals per client (normality and level): their p-values are combined by Bonferroni.
_SIGNALS = 2

# A standard deviation of the calibration statistics below this is treated as this (a degenerate reference).
_MIN_SPREAD = 1e-6

# Floor of the peers' spread of a z-score: the reference pseudo-clients' spread, 1 by construction. Benign
# clients vary at least as much as pseudo-clients drawn from the reference; a smaller MAD among a few peers is
# chance, and would turn a small difference into a large peer z-score.
_MIN_PEER_SPREAD = 1.0

_SIGNAL_NAMES = ("normality", "distance")


def _shapiro_w(distances: np.ndarray) -> float:
    """Shapiro-Wilk ``W`` of the distances (1.0, "perfectly normal", when they are all equal)."""
    if distances.size < 3 or np.ptp(distances) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties and n > 5000; neither changes W's meaning
        return float(stats.shapiro(distances).statistic)


def _log_one_minus(w: float) -> float:
    """``log(1 - W)``, Royston's normalising transform of ``W`` (-inf for ``W = 1``)."""
    return math.log(1.0 - w) if w < 1.0 else -math.inf


def _log_median(distances: np.ndarray) -> float:
    median = float(np.median(distances))
    return math.log(median) if median > 0 else -math.inf


def _coverage(queries: np.ndarray, reference_range: np.ndarray) -> float:
    """Mean share of each varying encoded feature's reference range spanned by the queries (capped at 1)."""
    varying = reference_range > 0
    if queries.shape[0] < 2 or not varying.any():
        return 0.0
    spanned = np.ptp(queries[:, varying], axis=0) / reference_range[varying]
    return float(np.minimum(spanned, 1.0).mean())


@dataclass
class ExtractionState(ClientHistoryState):
    """The encoding, the calibration of both signals per checkpoint, and the client histories."""

    params: dict[str, Any]  # min_queries and max_history, which the calibration depends on
    schema: dict[str, Any]  # FeatureSchema.state_dict()
    checkpoints: Int64Array
    w_mean: Float64Array
    w_sd: Float64Array
    level_mean: Float64Array
    level_sd: Float64Array
    coverage: Float64Array
    reference_range: Float64Array
    clients: dict[str, Any]  # ClientHistories.state_dict()


class ExtractionDetector(
    ClientHistoryDetector[ExtractionState], id="extraction", threat=Threat.CONFIDENTIALITY
):
    """Flags clients whose query pattern looks like model extraction (PRADA, plus a distance-level test).

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5); Bonferroni-split over the clients tested in the window.
    min_peers
        Clients tested in the window needed for the peer comparison (>= 3); with fewer, a client is judged
        against the reference only.
    min_queries
        A client is tested once it has this many query distances (>= 10); ``fit`` needs more reference
        events than this.
    max_history
        Queries (and distances) remembered per client (>= ``min_queries``).
    max_clients
        Clients remembered (>= 1); the least recently active is forgotten first.
    idle_expiry
        Seconds of event time after which a silent client is forgotten (> 0).
    n_calibration
        Benign pseudo-clients simulated from the reference to calibrate the test (>= 20).
    n_checkpoints
        Calibration sizes, geometrically spaced from ``min_queries`` to the largest the reference allows
        (>= 1).
    seed
        Seed of the pseudo-clients' orders (>= 0).

    Notes
    -----
    ``statistic`` is the z-score of the most significant client: per signal, the normal quantile of the
    signal's p-value (its z-score against the reference, or the normal equivalent of its peer p-value when
    that is larger), the larger over the two signals. ``threshold`` is the z-score that alerts after the
    corrections, ``p_value`` that client's corrected p-value. ``evidence["subjects"]`` names the flagged
    client ids, most significant first, and ``evidence["findings"]`` holds for each: ``w`` and ``delta``,
    ``median_distance`` and ``distance_threshold`` (and the benign median), the ``signal`` that fired
    (``"normality"`` or ``"distance"``), its ``reference_z`` and ``reference_p_value``, its ``peer_z``,
    ``peer_p_value`` and the peers' median z (``peer_median_z``), query counts, ``volume_z``, ``coverage``
    (and the benign coverage at that size) and the client's latest event ids in the window.
    ``evidence["most_significant"]`` gives the same for the top client of a window that does not alert,
    without naming it a subject; ``evidence["clients_shifted_with_peers"]`` counts the clients that fail the
    reference test but not the peer test (many of them: the population shifted).

    Memory: at most ``max_clients * max_history * (4 * dim + 8)`` bytes of histories, ``dim`` the encoded
    width (two columns per numeric feature).

    Examples
    --------
    >>> from detectors._examples import flagged, gaussian, joined
    >>> detector = ExtractionDetector(alpha=0.05, min_queries=20, n_calibration=40).fit(gaussian(300, seed=0))
    >>> stealing = gaussian(60, seed=2, scale=12.0, clients="thief")  # spread far over the inputs: "distance"
    >>> benign = gaussian(180, seed=3, clients=6)
    >>> flagged(detector, gaussian(180, seed=1, clients=6), joined(stealing, benign))
    (('ok', []), ('alert', ['thief']))
    """

    calibrated_with = ("min_queries", "max_history")

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        min_peers: int = MIN_PEERS,
        min_queries: int = 50,
        max_history: int = 300,
        max_clients: int = 1000,
        idle_expiry: float = 86_400.0,
        n_calibration: int = 200,
        n_checkpoints: int = 8,
        seed: int = 0,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.min_peers = check_int("min_peers", min_peers, 3)
        self.min_queries = check_int("min_queries", min_queries, 10)
        self._init_histories(max_history, max_clients, idle_expiry, min_history=self.min_queries)
        self.n_calibration = check_int("n_calibration", n_calibration, 20)
        self.n_checkpoints = check_int("n_checkpoints", n_checkpoints, 1)
        self.seed = check_int("seed", seed, 0)

        self._checkpoints = np.empty(0, dtype=np.int64)
        # Per checkpoint: mean and sd over pseudo-clients of log(1 - W) and of the log median distance,
        # and their median coverage.
        self._w_mean = np.empty(0)
        self._w_sd = np.empty(0)
        self._level_mean = np.empty(0)
        self._level_sd = np.empty(0)
        self._coverage = np.empty(0)
        self._reference_range = np.empty(0)

    # ------------------------------------------------------------------ parameters

    @property
    def checkpoints(self) -> np.ndarray:
        """The calibration sizes: a client with ``n`` distances is tested on its last ``c <= n`` of them."""
        self._require_fitted()
        return self._checkpoints.copy()

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Learn the encoding and calibrate both tests on benign pseudo-clients drawn from the reference's
        ``features``; forgets every client history. A ValueError if the reference has no features or at
        most ``min_queries`` events."""
        n = len(reference)
        if len(reference.features) != n or n <= self.min_queries:
            raise ValueError(
                f"{self.id}: the reference needs features and more than min_queries={self.min_queries} "
                f"events, it has {n}"
            )
        schema = FeatureSchema.fit(reference.features)
        encoded = reference.encoded(schema)
        # A pseudo-client sends distinct reference events. At most half the reference: pseudo-clients that
        # each hold most of the reference would share most of their events, and their statistics would vary
        # far less than those of real clients drawing from the population (see _finite_population below).
        # Beyond max_history + 1 queries nothing new would be learnt (distances only look max_history back).
        length = min(self.max_history + 1, max(self.min_queries + 1, n // 2))
        largest = min(self.max_history, length - 1)
        checkpoints = np.unique(
            np.round(np.geomspace(self.min_queries, largest, self.n_checkpoints)).astype(np.int64)
        )
        log_w = np.empty((self.n_calibration, checkpoints.size))
        log_level = np.empty_like(log_w)
        coverage = np.empty_like(log_w)
        reference_range = np.ptp(encoded, axis=0).astype(np.float64)
        for b, rows in enumerate(pseudo_client_streams(n, self.n_calibration, length, self.seed)):
            queries = encoded[rows]
            distances = earlier_distances(queries[:0], queries, self.max_history).min(axis=1)[1:]
            for j, c in enumerate(checkpoints):
                log_w[b, j] = _log_one_minus(_shapiro_w(distances[:c]))
                log_level[b, j] = _log_median(distances[:c])
                coverage[b, j] = _coverage(queries[: c + 1], reference_range)
        self._schema = schema
        self._clients = self._new_store(schema.dim)
        self._checkpoints = checkpoints
        self._w_mean, self._w_sd = _finite_mean_sd(log_w)
        self._level_mean, self._level_sd = _finite_mean_sd(log_level)
        inflation = _finite_population(checkpoints + 1, n)
        self._w_sd *= inflation
        self._level_sd *= inflation
        self._coverage = np.median(coverage, axis=0)
        self._reference_range = reference_range
        return self

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Add the window's queries to their clients' histories and test every client with enough of them;
        ``event_ids``, ``features``, ``client_ids`` and ``timestamps`` are used. Skipped when the window lacks
        client ids, timestamps or features, or when no client has ``min_queries`` distances yet (the
        histories are updated all the same)."""
        encoded = self._window_queries(window)
        if isinstance(encoded, DetectionResult):
            return encoded
        n = len(window)

        groups = group_by_client(window)
        volume = dict(zip((g.client for g in groups), robust_z([g.rows.size for g in groups]), strict=True))
        tested: list[dict[str, Any]] = []
        for group in groups:
            history = self._clients.get(group.client)
            queries = encoded[group.rows]
            previous = history.queries if history is not None else self._clients.empty_queries()
            distances = earlier_distances(previous, queries, self.max_history).min(axis=1)
            updated = self._clients.update(
                group.client, queries, distances[np.isfinite(distances)], group.last_seen
            )
            if updated.values.size >= self.min_queries:
                finding = self._test_client(updated.values, updated.queries)
                finding.update(
                    subject=group.client,
                    window_queries=int(group.rows.size),
                    total_queries=updated.n_queries,
                    volume_z=plain(volume[group.client]),
                    event_ids=[str(window.event_ids[i]) for i in group.rows[-_MAX_IDS:]],
                )
                tested.append(finding)
        if not tested:
            return self.skipped(
                n,
                f"no client has {self.min_queries} query distances yet ({len(groups)} clients in the window)",
            )
        return self._result(n, tested, n_clients=len(groups))

    def _test_client(self, values: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
        """Both tests on a client's stored distances against the reference (z-scores, raw p-values)."""
        j = int(np.searchsorted(self._checkpoints, min(values.size, self.max_history), side="right")) - 1
        size = int(self._checkpoints[j])
        recent = values[-size:]
        w = _shapiro_w(recent)
        z_w = (_log_one_minus(w) - self._w_mean[j]) / self._w_sd[j]
        z_level = (_log_median(recent) - self._level_mean[j]) / self._level_sd[j]
        p_w, p_level = float(stats.norm.sf(z_w)), float(stats.norm.sf(z_level))
        return {
            "checkpoint": j,
            "tested_distances": size,
            "reference_zs": (float(z_w), float(z_level)),
            "w": plain(w),
            "w_p_value": plain(p_w),
            "median_distance": plain(float(np.median(recent))),
            "benign_median_distance": plain(math.exp(self._level_mean[j])),
            "distance_p_value": plain(p_level),
            "coverage": plain(_coverage(queries[-(size + 1) :], self._reference_range)),
            "benign_coverage": plain(self._coverage[j]),
        }

    def _result(self, n: int, tested: list[dict[str, Any]], n_clients: int) -> DetectionResult:
        m = len(tested)
        with_peers = m >= self.min_peers
        # The z-score at which a client's corrected p-value reaches alpha.
        z_critical = float(stats.norm.isf(self.alpha / (m * _SIGNALS)))
        reference_z = np.array([finding.pop("reference_zs") for finding in tested]).reshape(m, _SIGNALS)
        reference_p = stats.norm.sf(reference_z)
        if with_peers:
            peer = [peer_robust_z(reference_z[:, s], _MIN_PEER_SPREAD) for s in range(_SIGNALS)]
            peer_z = np.column_stack([z for z, _, _ in peer])
            peer_centre = np.column_stack([centre for _, centre, _ in peer])
            peer_p = np.column_stack([peer_p_values(z, m - 1) for z, _, _ in peer])
        else:
            peer_z = peer_centre = np.full((m, _SIGNALS), np.nan)
            peer_p = np.zeros((m, _SIGNALS))
        # Intersection-union per signal: flagged on it only if unlike the reference AND unlike the peers.
        signal_p = np.maximum(reference_p, peer_p)
        # The same on the z scale, computed from the z-scores where they exist (a p-value of 1e-400 underflows
        # to 0, and its quantile would be infinite).
        signal_z = np.minimum(reference_z, stats.norm.isf(peer_p)) if with_peers else reference_z
        findings = []
        for i, finding in enumerate(tested):
            j = finding.pop("checkpoint")
            s = int(np.lexsort((-signal_z[i], signal_p[i]))[0])  # the most significant signal, ties by z
            p_raw = min(1.0, _SIGNALS * float(signal_p[i, s]))
            findings.append(
                {
                    "subject": finding.pop("subject"),
                    "statistic": plain(float(signal_z[i].max())),
                    "p_value": min(1.0, m * p_raw),
                    "threshold": plain(z_critical),
                    "signal": _SIGNAL_NAMES[s],
                    "reference_z": plain(reference_z[i, s]),
                    "reference_p_value": min(1.0, m * _SIGNALS * float(reference_p[i, s])),
                    "peer_z": plain(peer_z[i, s]),
                    "peer_p_value": min(1.0, m * _SIGNALS * float(peer_p[i, s])) if with_peers else None,
                    "peer_median_z": plain(peer_centre[i, s]),
                    "delta": plain(1.0 - math.exp(self._w_mean[j] + self._w_sd[j] * z_critical)),
                    "distance_threshold": plain(
                        math.exp(self._level_mean[j] + self._level_sd[j] * z_critical)
                    ),
                    **finding,
                }
            )
        findings.sort(key=lambda f: (f["p_value"], -(f["statistic"] or 0.0), f["subject"]))
        flagged = [f for f in findings if f["p_value"] <= self.alpha]
        top = findings[0]
        shifted_with_peers = int(
            np.sum(
                (m * _SIGNALS * reference_p.min(axis=1) <= self.alpha)
                & (m * _SIGNALS * signal_p.min(axis=1) > self.alpha)
            )
        )
        evidence: dict[str, Any] = {
            "subjects": [f["subject"] for f in flagged],
            "findings": flagged,
            "clients_tested": m,
            "clients_in_window": n_clients,
            "peer_comparison": with_peers,
            "clients_shifted_with_peers": shifted_with_peers,
            "clients_remembered": len(self._clients),
            "clients_evicted": self._clients.evicted,
            "clients_expired": self._clients.expired,
        }
        if not with_peers:
            evidence["peer_comparison_note"] = (
                f"only {m} clients with {self.min_queries} query distances in the window ({self.min_peers} "
                "needed to compare a client with its peers): each client is judged against the reference only"
            )
        return client_result(self, n, top, bool(flagged), evidence, threshold=plain(z_critical))

    # ------------------------------------------------------------------ state

    def _learned_fields(self) -> dict[str, Any]:
        return {
            "checkpoints": self._checkpoints,
            "w_mean": self._w_mean,
            "w_sd": self._w_sd,
            "level_mean": self._level_mean,
            "level_sd": self._level_sd,
            "coverage": self._coverage,
            "reference_range": self._reference_range,
        }

    def _check_learned(self, state: ExtractionState, schema: FeatureSchema) -> None:
        checkpoints = state.checkpoints
        calibration = (state.w_mean, state.w_sd, state.level_mean, state.level_sd, state.coverage)
        if (
            checkpoints.ndim != 1
            or checkpoints.size == 0
            or any(a.shape != checkpoints.shape for a in calibration)
        ):
            raise self._malformed("calibration arrays do not match the checkpoints")
        if state.reference_range.shape != (schema.dim,):
            raise self._malformed(f"reference range of shape {state.reference_range.shape}")

    def _install_learned(self, state: ExtractionState) -> None:
        self._checkpoints = state.checkpoints
        self._w_mean, self._w_sd = state.w_mean, state.w_sd
        self._level_mean, self._level_sd = state.level_mean, state.level_sd
        self._coverage = state.coverage
        self._reference_range = state.reference_range


def _finite_population(sizes: np.ndarray, n: int) -> np.ndarray:
    """Factor by which the spread over pseudo-clients of ``sizes`` events, drawn from ``n``, understates it.

    Pseudo-clients draw without replacement from one finite reference, so they overlap; a statistic's spread
    across them shrinks by the finite-population correction ``sqrt(1 - size / n)`` compared with clients
    drawing from the population. Dividing by it restores the spread (exact for means, a close approximation
    for smooth statistics such as ``log(1 - W)`` and a log median).
    """
    return 1.0 / np.sqrt(np.maximum(1.0 - sizes / n, 1.0 / n))


def _finite_mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: mean and sd of the finite values (a degenerate column gets mean 0, sd ``_MIN_SPREAD``)."""
    means = np.zeros(values.shape[1])
    sds = np.full(values.shape[1], _MIN_SPREAD)
    for j in range(values.shape[1]):
        finite = values[np.isfinite(values[:, j]), j]
        if finite.size >= 2:
            means[j] = finite.mean()
            sds[j] = max(float(finite.std(ddof=1)), _MIN_SPREAD)
    return means, sds
