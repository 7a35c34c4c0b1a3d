"""Evasion by one client: inputs unlike the reference that the model still answers with conviction.

An evasion attacker sends inputs pushed off the data distribution (features out of their reference range,
adversarial perturbations) and keeps those the model answers the way it wants. Two footprints show in the
traffic: the inputs are *anomalous* (a VAE trained on the reference reconstructs them badly) and the model's
answer is either *confident* (the attack succeeded: a wrong class with a high score) or a *near tie* (the
attacker is walking along the decision boundary). Benign inputs are rarely anomalous, and anomalous benign
inputs (sensor glitches) are no more confident than usual.

An event is *suspicious* when its VAE score is above the VAE's per-event threshold **and** its top score is
at least the ``confidence_quantile`` of the reference's top scores (by default the median: "more confident
than a typical reference answer") **or** its margin (top score minus the second) is at most the
``margin_quantile`` of the reference's margins (by default the 10th percentile). Events without usable
scores are never suspicious.

The rate of suspicious events among clean traffic is measured on a held-out part of the reference
(``calibration_share``, never seen by the VAE): with ``c`` suspicious out of ``m``, a clean client's count
among its ``n`` events is ``BetaBinomial(n, c + 1, m - c)``, which accounts for the estimate's own
uncertainty (the same conformal treatment as ``vae_anomaly``). Each client with at least ``min_queries``
events in the window is tested (one-sided, more suspicious events).

**Peers.** When the whole population shifts (a broken feature pipeline moving every input), every client is
anomalous against the reference and the test above would name all of them; that is drift, and the drift
detectors report it. A client is therefore flagged only if it *also* stands out from its peers: its
events' VAE scores are compared with those of every other event of the window by a one-sided Mann-Whitney
test ("are this client's inputs further out than everyone else's?"). The two tests are combined as an
intersection-union test: the client's p-value is the larger of the two, each Bonferroni-corrected over the
clients tested, and the window alerts when the smallest is ``<= alpha``. An evader among a drifted
population is still caught if its inputs are further out than the population's (on load_digits and
load_breast_cancer, an evader at +5 sd among a population at +4 sd on the same 8 features), not if they are
moved exactly as the population's are: then nothing in its inputs tells it apart. The rank test treats the
window's events as exchangeable under "no attacker"; clients whose honest inputs differ systematically (one
region's camera) can stand out from their peers too, but they are named only if they are also anomalous
against the reference. With fewer than ``min_peers`` clients tested, the peers say too little about the
population: the reference-only test applies, and the evidence says so (``peer_comparison`` false, with a
``peer_comparison_note``).

The test is per window: nothing is remembered between windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy import stats

from detectors._checks import check_float, check_int
from detectors.anomaly.vae import VAEAnomalyDetector, inner_vae_params
from detectors.base import Batch, DetectionResult, Detector, Threat
from detectors.drift._stats import parse_float, plain
from detectors.security._clients import MIN_PEERS, client_result, rank_sum_p_values
from detectors.state import DetectorState

__all__ = ["EvasionDetector", "EvasionState"]

# Evidence lists at most this many event ids per finding.
_MAX_IDS = 20

# Default per-event quantile of the inner VAE. vae_anomaly's 0.99 suits a window-level count; per client, with
# a few dozen events, it leaves most off-distribution inputs below the threshold (on load_digits, 0 to 1 of 20
# inputs with 8 pixels moved by 4 sd, against 10 to 14 of 20 with 0.95).
_VAE_QUANTILE = 0.95

# Random stream of the reference split (the bare seed also seeds the inner VAE's own split).
_SPLIT_STREAM = 1


def _top_two(predictions: Sequence[Mapping[str, Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per event: the top score and the margin top - second (second = 0 for one class); NaN if no scores."""
    top = np.full(n, np.nan)
    margin = np.full(n, np.nan)
    for i, prediction in enumerate(predictions[:n] if len(predictions) == n else ()):
        scores = prediction.get("scores") if isinstance(prediction, Mapping) else None
        if not isinstance(scores, Mapping):
            continue
        values = sorted((v for v in map(parse_float, scores.values()) if v is not None), reverse=True)
        if values:
            top[i] = values[0]
            margin[i] = values[0] - (values[1] if len(values) > 1 else 0.0)
    return top, margin


@dataclass
class EvasionState(DetectorState):
    """The confidence cuts, the suspicious count of the held-out calibration events and the inner VAE."""

    params: dict[str, Any]  # the quantiles and calibration share the cuts and counts depend on
    confidence_cut: float
    margin_cut: float
    n_calibration: int
    n_suspicious: int
    vae: dict[str, Any]  # VAEAnomalyDetector.state_dict(), checked by its load_state_dict


class EvasionDetector(Detector[EvasionState], id="evasion", threat=Threat.ROBUSTNESS):
    """Flags clients sending anomalous inputs that the model answers confidently or with a near tie.

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5); Bonferroni-split over the clients tested in the window.
    min_peers
        Clients tested in the window needed for the peer comparison (>= 3); with fewer, a client is judged
        against the reference only.
    confidence_quantile
        An answer is confident when its top score reaches this quantile of the reference's, in (0, 1).
    margin_quantile
        An answer is a near tie when its margin is at most this quantile of the reference's, in (0, 0.5).
    calibration_share
        Share of the reference held out from the VAE to measure the suspicious rate, in (0, 0.5).
    min_queries
        Clients with fewer events in the window are not tested (>= 1).
    seed
        Seed of the reference split (>= 0); also the inner VAE's seed unless ``vae`` sets one.
    vae
        Parameters of the inner :class:`~detectors.anomaly.VAEAnomalyDetector`: its defaults otherwise, except
        ``quantile=0.95`` (the per-event threshold; see ``_VAE_QUANTILE``) and ``seed=seed``.

    Notes
    -----
    ``statistic`` is the most significant client's share of suspicious events, ``threshold`` the share that
    would have alerted for it against the reference (with the peer comparison on, the client must also stand
    out from its peers), ``p_value`` its corrected p-value, the larger of ``reference_p_value`` and
    ``peer_p_value``. ``evidence["subjects"]`` names the flagged client ids, most significant first;
    ``evidence["findings"]`` holds for each: ``suspicious``, ``anomalous``, ``confident`` and ``near_tie``
    counts among its ``queries``, the reference rate (``expected_share``), both corrected p-values, its median
    VAE score and the other events' (``median_score``, ``peer_median_score``), and the ids of its suspicious
    events (at most 20, most anomalous first). ``evidence["clients_shifted_with_peers"]`` counts the clients
    anomalous against the reference that did not stand out from their peers: many of them mean the
    population shifted.

    Examples
    --------
    >>> from detectors._examples import TINY_VAE, flagged, gaussian, joined
    >>> detector = EvasionDetector(vae=TINY_VAE).fit(gaussian(400, seed=0))
    >>> evading = gaussian(20, seed=2, loc=[0, 0, 0, 6], clients="c0", confidence=0.99)  # off-distribution
    >>> flagged(detector, gaussian(160, seed=1, clients=8), joined(evading, gaussian(140, seed=3, clients=8)))
    (('ok', []), ('alert', ['c0']))
    """

    calibrated_with = ("confidence_quantile", "margin_quantile", "calibration_share")

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        min_peers: int = MIN_PEERS,
        confidence_quantile: float = 0.5,
        margin_quantile: float = 0.1,
        calibration_share: float = 0.25,
        min_queries: int = 10,
        seed: int = 0,
        vae: Mapping[str, Any] | None = None,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.min_peers = check_int("min_peers", min_peers, 3)
        self.confidence_quantile = check_float("confidence_quantile", confidence_quantile, 0.0, 1.0)
        self.margin_quantile = check_float("margin_quantile", margin_quantile, 0.0, 0.5)
        self.calibration_share = check_float("calibration_share", calibration_share, 0.0, 0.5)
        self.min_queries = check_int("min_queries", min_queries, 1)
        self.seed = check_int("seed", seed, 0)
        self.vae: dict[str, Any] = inner_vae_params(vae, seed=self.seed, quantile=_VAE_QUANTILE)

        self._vae: VAEAnomalyDetector | None = None
        self._confidence_cut = math.nan
        self._margin_cut = math.nan
        self._n_calibration = 0
        self._n_suspicious = 0  # suspicious events among the calibration events

    # ------------------------------------------------------------------ parameters

    @property
    def fitted(self) -> bool:
        return self._vae is not None

    def _inner_vae(self) -> VAEAnomalyDetector:
        """The fitted inner VAE."""
        self._require_fitted()
        assert self._vae is not None  # fitted means an inner VAE
        return self._vae

    @property
    def expected_share(self) -> float:
        """Mean share of suspicious events in clean traffic, ``(c + 1) / (m + 1)``."""
        self._require_fitted()
        return (self._n_suspicious + 1) / (self._n_calibration + 1)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Train the VAE on part of the reference, learn the confidence cuts, measure the suspicious rate,
        from the reference's ``features`` and ``predictions`` (with ``scores``). A ValueError if the reference
        has no prediction scores, or too few events for the VAE and the calibration."""
        n = len(reference)
        top, margin = _top_two(reference.predictions, n)
        scored = np.isfinite(top)
        if scored.sum() < 2:
            raise ValueError(f"{self.id}: the reference needs predictions with class scores")
        order = np.random.default_rng([self.seed, _SPLIT_STREAM]).permutation(n)
        n_calibration = round(self.calibration_share * n)
        if n_calibration < 1:
            raise ValueError(
                f"{self.id}: the reference of {n} events is too small to hold out a calibration part"
            )
        train, calibration = np.sort(order[n_calibration:]), np.sort(order[:n_calibration])
        vae = VAEAnomalyDetector(**self.vae)
        try:
            vae.fit(
                Batch(
                    event_ids=[reference.event_ids[i] for i in train],
                    features=[reference.features[i] for i in train],
                )
            )
        except ValueError as error:
            raise ValueError(f"{self.id}: {error}") from error
        self._vae = vae
        self._confidence_cut = float(np.quantile(top[scored], self.confidence_quantile))
        self._margin_cut = float(np.quantile(margin[scored], self.margin_quantile))
        held_out = Batch(
            event_ids=[reference.event_ids[i] for i in calibration],
            features=[reference.features[i] for i in calibration],
        )
        suspicious, *_ = self._suspicious(vae.score(held_out), top[calibration], margin[calibration])
        if suspicious.all():
            raise ValueError(
                f"{self.id}: every held-out reference event is suspicious; the test has no baseline"
            )
        self._n_calibration = int(n_calibration)
        self._n_suspicious = int(suspicious.sum())
        return self

    def _suspicious(
        self, scores: np.ndarray, top: np.ndarray, margin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per event: suspicious, anomalous, confident and near-tie flags (NaN scores compare False)."""
        anomalous = scores > self._inner_vae().score_threshold
        confident = top >= self._confidence_cut
        near_tie = margin <= self._margin_cut
        return anomalous & (confident | near_tie), anomalous, confident, near_tie

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test each client's share of suspicious events against the reference rate, and against its peers;
        ``event_ids``, ``features``, ``predictions`` and ``client_ids`` are used. Skipped when the window
        lacks client ids, features or prediction scores, or no client has ``min_queries`` events in it."""
        vae = self._inner_vae()
        n = len(window)
        if n == 0:
            return self.skipped(0, "empty window")
        if len(window.client_ids) != n or all(client is None for client in window.client_ids):
            return self.skipped(n, "the window carries no client ids")
        if len(window.features) != n:
            return self.skipped(n, "the window carries no features")
        top, margin = _top_two(window.predictions, n)
        if not np.isfinite(top).any():
            return self.skipped(n, "the window carries no prediction scores")
        rows: dict[str, list[int]] = {}
        for i, client in enumerate(window.client_ids):
            if client is not None:
                rows.setdefault(str(client), []).append(i)
        eligible = {client: np.array(r) for client, r in sorted(rows.items()) if len(r) >= self.min_queries}
        if not eligible:
            return self.skipped(
                n, f"no client has {self.min_queries} events in the window ({len(rows)} clients)"
            )
        scores = vae.score(window)
        suspicious, anomalous, confident, near_tie = self._suspicious(scores, top, margin)
        a, b = self._n_suspicious + 1, self._n_calibration - self._n_suspicious
        m = len(eligible)
        with_peers = m >= self.min_peers
        # Every other event of the window is a peer, also those of clients too small to be tested themselves.
        peer_p = rank_sum_p_values(scores, list(eligible.values())) if with_peers else np.zeros(m)
        findings: list[dict[str, Any]] = []
        for (client, r), p_peer_raw in zip(eligible.items(), peer_p, strict=True):
            k = int(suspicious[r].sum())
            p_reference = min(1.0, m * float(stats.betabinom.sf(k - 1, r.size, a, b))) if k else 1.0
            p_peer = min(1.0, m * float(p_peer_raw))
            flagged_rows = r[suspicious[r]]
            ranked = flagged_rows[np.argsort(-scores[flagged_rows], kind="stable")][:_MAX_IDS]
            findings.append(
                {
                    "subject": client,
                    "statistic": plain(k / r.size),
                    # Intersection-union: flagged only if unlike the reference AND unlike the peers.
                    "p_value": max(p_reference, p_peer),
                    "threshold": None,  # filled in for the reported findings only
                    "reference_p_value": p_reference,
                    "peer_p_value": p_peer if with_peers else None,
                    "expected_share": plain(a / (a + b)),
                    "queries": int(r.size),
                    "suspicious": k,
                    "anomalous": int(anomalous[r].sum()),
                    "confident": int((anomalous & confident)[r].sum()),
                    "near_tie": int((anomalous & near_tie)[r].sum()),
                    "median_score": plain(np.median(scores[r])),
                    "peer_median_score": None,  # filled in for the reported findings only
                    "event_ids": [str(window.event_ids[i]) for i in ranked],
                }
            )
        findings.sort(key=lambda f: (f["p_value"], -(f["statistic"] or 0.0), f["subject"]))
        flagged = [f for f in findings if f["p_value"] <= self.alpha]
        top_finding = findings[0]
        for finding in [*flagged, top_finding]:
            finding["threshold"] = plain(_critical_share(finding["queries"], self.alpha / m, (a, b)))
            others = np.ones(n, dtype=bool)
            others[eligible[finding["subject"]]] = False
            finding["peer_median_score"] = plain(np.median(scores[others])) if others.any() else None
        evidence: dict[str, Any] = {
            "subjects": [f["subject"] for f in flagged],
            "findings": flagged,
            "clients_tested": m,
            "clients_in_window": len(rows),
            "peer_comparison": with_peers,
            "clients_shifted_with_peers": sum(
                f["reference_p_value"] <= self.alpha < f["p_value"] for f in findings
            ),
            "score_threshold": plain(vae.score_threshold),
            "confidence_cut": plain(self._confidence_cut),
            "margin_cut": plain(self._margin_cut),
        }
        if not with_peers:
            evidence["peer_comparison_note"] = (
                f"only {m} clients with {self.min_queries} events in the window ({self.min_peers} needed to "
                "compare a client with its peers): each client is judged against the reference only"
            )
        return client_result(self, n, top_finding, bool(flagged), evidence)

    # ------------------------------------------------------------------ state

    def _save_state(self) -> EvasionState:
        return EvasionState(
            params=self._calibration(),
            confidence_cut=self._confidence_cut,
            margin_cut=self._margin_cut,
            n_calibration=self._n_calibration,
            n_suspicious=self._n_suspicious,
            vae=self._inner_vae().state_dict(),
        )

    def _load_state(self, state: EvasionState) -> None:
        self._check_calibration(state.params)
        if not 0 <= state.n_suspicious < state.n_calibration:
            raise self._malformed(
                f"{state.n_suspicious} suspicious of {state.n_calibration} calibration events"
            )
        self._vae = VAEAnomalyDetector(**self.vae).load_state_dict(state.vae)
        self._confidence_cut = state.confidence_cut
        self._margin_cut = state.margin_cut
        self._n_calibration = state.n_calibration
        self._n_suspicious = state.n_suspicious


def _critical_share(n: int, level: float, beta: tuple[int, int]) -> float | None:
    """Smallest share of suspicious events among ``n`` whose beta-binomial tail is ``<= level``."""
    counts = np.arange(n + 1)
    tails = stats.betabinom.sf(counts - 1, n, *beta)
    alerting = np.flatnonzero(tails <= level)
    return float(alerting[0] / n) if alerting.size else None
