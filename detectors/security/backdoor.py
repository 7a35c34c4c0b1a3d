"""Backdoor: anomalous inputs concentrated on one predicted class.

A backdoored model answers the attacker's target class whenever an input carries the trigger (a pixel
patch, a few features set to unusual values), and behaves normally otherwise. Triggered inputs are unlike
the reference, so a VAE trained on the reference reconstructs them badly; and they all land in one
predicted class. Clean anomalies (odd but honest inputs) spread over the classes roughly like the traffic.

1. An inner :class:`~detectors.anomaly.VAEAnomalyDetector` (built from ``vae``, the same parameters as the
   monitor's ``vae_anomaly``, so it learns the same weights) marks the window's events whose score exceeds
   its calibrated ``score_threshold``: ``A`` anomalous events, ``a_c`` of them predicted as class ``c``.
2. Some classes are more often anomalous than others (a sloppy "8" is odder than a sloppy "1"). ``fit``
   measures each class's propensity ``rho_c`` on the reference: its rate of scores above the reference's
   ``propensity_quantile``, relative to the overall rate, shrunk towards 1 with ``prior_events``
   pseudo-events so that a rare class's estimate cannot run wild. (A quantile of 0.9 gives tens of reference
   events above it, where the per-event threshold of the VAE, its 0.99 quantile, would give a handful.)
3. Given ``A``, a clean window's ``a_c`` is binomial with ``pi_c = n_c rho_c / sum_j n_j rho_j``, ``n_c`` the
   window's *ordinary* (not anomalous) events predicted as ``c``, plus one: conditioning on the window's own
   class mix keeps the test calibrated when the mix drifts, which ``output_drift`` reports, and leaving the
   anomalous events out of the mix keeps the events under test from raising their own expectation (a
   backdoor's triggered events all land in the target class: counted in ``n_c``, 16 triggered events among
   a breast_cancer window's 80 target-class events raise ``pi_c`` from about 0.45 to 0.5, and the p-value
   three- to fivefold). The pseudo-event keeps ``pi_c`` above zero for a class whose events are all
   anomalous. Under the null the anomalous events are a few per cent of each class, so the ordinary mix is
   the class mix up to that share. Each class with at least ``min_anomalous`` anomalous events is tested
   one-sided, ``P(X >= a_c)``; the p-values of the classes present in the window are Holm-corrected.

Where every event of a flagged class carries an embedding, the evidence also holds the class's spectral
signature (Tran, Li and Madry, *Spectral Signatures in Backdoor Attacks*, NeurIPS 2018): the events of the
class are centred, projected on their top singular vector, and the ``max(A_c, 1)`` highest squared
projections are listed with their overlap with the VAE's anomalous events. It corroborates the finding (a
poisoned cluster dominates the top singular direction) and names events the VAE may have missed, but it
does not enter the decision: calibrating it per class needs many reference events per class.

Known limit: the VAE's threshold is the 0.99 quantile of its calibration split, about 34 events for a
reference of 170; one odd calibration event can lift it above every triggered event, and the window then
has no anomalous events to test. Testing the window's own top tail too (which needs no calibrated level)
was tried and dropped: the propensities, measured mostly on the VAE's training events, misstate the class
mix of fresh events' upper tail, and digits' clean windows alerted 12 % of the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

import numpy as np
from scipy import stats

from detectors._checks import check_float, check_int
from detectors.anomaly.vae import VAEAnomalyDetector, inner_vae_params
from detectors.base import Batch, DetectionResult, Detector, EventScore, Threat, as_float_array
from detectors.drift._stats import plain, predicted_class
from detectors.security._poisoning import MAX_IDS, bounded_ids, holm
from detectors.state import HYPERPARAMETER, DetectorState, Int64Array

__all__ = ["BackdoorDetector"]


_OTHER = "other"  # predicted classes unseen in the reference


@dataclass
class BackdoorState(DetectorState):
    """The inner VAE's state and the reference's per-class event counts, and counts above the quantile."""

    vae: dict[str, Any]  # VAEAnomalyDetector.state_dict(), checked by its load_state_dict
    classes: list[str]
    reference_counts: Int64Array
    reference_above: Int64Array
    propensity_quantile: Annotated[float, HYPERPARAMETER]


class BackdoorDetector(Detector[BackdoorState], id="backdoor", threat=Threat.BACKDOOR):
    """Flags a predicted class that receives far more of the window's anomalous inputs than it should.

    Parameters
    ----------
    alpha
        False-alarm rate per clean window, in (0, 0.5).
    min_events
        Windows with fewer events are skipped (>= 1).
    min_anomalous
        A class needs at least this many anomalous events to be flagged (>= 1): two odd inputs in a rare
        class are a coincidence, not a backdoor.
    propensity_quantile
        Reference quantile of the VAE scores above which reference events count when measuring each class's
        propensity to be anomalous, in (0.5, 0.99).
    prior_events
        Pseudo-events shrinking each class's propensity towards the overall rate (>= 0).
    seed
        Seed of the inner VAE unless ``vae`` sets its own ``seed`` (>= 0).
    vae
        Keyword arguments of the inner :class:`~detectors.anomaly.VAEAnomalyDetector`; pass the monitor's
        ``vae_anomaly`` parameters to get the same network.

    Notes
    -----
    ``statistic`` is the most significant class's share of the anomalous events, ``threshold`` None,
    ``p_value`` its Holm-adjusted p-value (1.0 when no class has ``min_anomalous`` anomalous events).
    ``evidence``: ``anomalous`` (``A``), ``score_threshold``, ``classes`` (per class present: events,
    anomalous, expected), ``subjects`` (flagged ``"class=<label>"``), ``findings`` (per flagged class:
    ``subject``, ``class``, ``statistic`` (share of the anomalous events), ``reference_value`` (``pi_c``),
    ``anomalous``, ``expected``, ``n_class``, ``p_value``, ``threshold`` (``alpha``), ``event_ids`` (its
    anomalous events, highest score first, at most 20) and, with embeddings, ``spectral``).
    ``event_scores`` lists the flagged classes' anomalous events, highest score first.

    Examples
    --------
    >>> from detectors._examples import TINY_VAE, flagged, gaussian, joined
    >>> detector = BackdoorDetector(vae=TINY_VAE).fit(gaussian(300, seed=0))
    >>> triggered = gaussian(20, seed=2, loc=[1, 0, 0, 6], scale=[0.2, 1, 1, 1])  # a trigger in x3, class "a"
    >>> flagged(detector, gaussian(200, seed=1), joined(gaussian(180, seed=3), triggered))
    (('ok', []), ('alert', ['class=a']))
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        min_events: int = 50,
        min_anomalous: int = 3,
        propensity_quantile: float = 0.9,
        prior_events: float = 20.0,
        seed: int = 0,
        vae: Mapping[str, Any] | None = None,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.min_events = check_int("min_events", min_events, 1)
        self.min_anomalous = check_int("min_anomalous", min_anomalous, 1)
        self.propensity_quantile = check_float("propensity_quantile", propensity_quantile, 0.5, 0.99)
        if (
            isinstance(prior_events, bool)
            or not isinstance(prior_events, int | float)
            or not 0 <= prior_events < 1e9
        ):
            raise ValueError(f"prior_events must be a number in [0, 1e9), got {prior_events!r}")
        self.prior_events = float(prior_events)
        self.seed = check_int("seed", seed, 0)
        self.vae: dict[str, Any] = inner_vae_params(vae, seed=self.seed)

        self._vae: VAEAnomalyDetector | None = None
        self._classes: tuple[str, ...] = ()
        self._propensity = np.empty(0, dtype=np.float64)  # per class, then "other" (1.0)
        self._reference_counts = np.empty(0, dtype=np.int64)  # per class: reference events, then above
        self._reference_above = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ parameters

    @property
    def fitted(self) -> bool:
        return self._vae is not None

    @property
    def propensity(self) -> dict[str, float]:
        """Each reference class's propensity to be anomalous, relative to the overall rate."""
        self._require_fitted()
        return {cls: float(p) for cls, p in zip(self._classes, self._propensity, strict=False)}

    def _inner_vae(self) -> VAEAnomalyDetector:
        """The fitted inner VAE."""
        self._require_fitted()
        assert self._vae is not None  # fitted means an inner VAE
        return self._vae

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Train the inner VAE and measure each predicted class's propensity to be anomalous, from the
        reference's ``features`` and ``predictions``. A ValueError if the reference has no predicted
        classes, or is too small for the VAE."""
        predicted = _predicted(reference)
        if not any(cls is not None for cls in predicted):
            raise ValueError(f"{self.id}: the reference has no predictions with a class")
        vae = VAEAnomalyDetector(**self.vae).fit(reference)
        scores = vae.score(reference)
        classes = tuple(sorted({cls for cls in predicted if cls is not None}))
        codes = _codes(predicted, classes)
        usable = codes >= 0
        above = scores > np.quantile(scores[usable], self.propensity_quantile)
        counts = np.bincount(codes[usable], minlength=len(classes)).astype(np.int64)
        above_counts = np.bincount(codes[usable & above], minlength=len(classes)).astype(np.int64)
        self._vae = vae
        self._classes = classes
        self._reference_counts = counts
        self._reference_above = above_counts
        self._propensity = self._propensities(counts, above_counts)
        return self

    def _propensities(self, counts: np.ndarray, above: np.ndarray) -> np.ndarray:
        """``rho_c`` per class, then 1.0 for "other" (classes unseen in the reference)."""
        rate = above.sum() / counts.sum()
        if rate <= 0:  # every reference score equal: no class is more anomalous than another
            return np.ones(counts.size + 1, dtype=np.float64)
        shrunk = (above + self.prior_events * rate) / (counts + self.prior_events)
        # A class never above the quantile, with no prior, would get propensity 0 and make any anomaly in
        # it infinitely significant: one reference event's worth is the floor.
        floor = 1.0 / (counts.sum() * rate)
        return np.append(np.maximum(shrunk / rate, floor), 1.0)

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test whether the window's anomalous events pile up on one predicted class; ``features``,
        ``predictions``, ``event_ids`` and, for the spectral evidence, ``embeddings`` are used."""
        vae = self._inner_vae()
        n = len(window)
        if n < self.min_events:
            return self.skipped(n, f"too few events: {n} < {self.min_events}")
        if len(window.features) != n:
            return self.skipped(n, "the window carries no features")
        predicted = _predicted(window)
        codes = _codes(predicted, self._classes)
        if not np.any(codes >= 0):
            return self.skipped(n, "no event of the window carries a predicted class")
        scores = vae.score(window)
        anomalous = (scores > vae.score_threshold) & (codes >= 0)
        total = int(anomalous.sum())
        names = [*self._classes, _OTHER]
        per_class = np.bincount(codes[codes >= 0], minlength=len(names))
        anomalous_per_class = np.bincount(codes[anomalous], minlength=len(names))
        present = np.flatnonzero(per_class > 0)
        # The ordinary events' mix: anomalous events would raise their own class's expected share.
        ordinary = np.where(per_class > 0, per_class - anomalous_per_class + 1, 0)
        weights = ordinary * self._propensity
        expected_share = weights / weights.sum()
        raw = np.array(
            [
                float(stats.binom.sf(anomalous_per_class[j] - 1, total, expected_share[j]))
                if anomalous_per_class[j] >= self.min_anomalous
                else 1.0
                for j in present
            ]
        )
        adjusted = holm(raw)
        order = sorted(range(present.size), key=lambda i: (adjusted[i], raw[i], names[present[i]]))
        best = order[0]
        flagged = [present[i] for i in order if adjusted[i] <= self.alpha]
        p_of = {int(present[i]): float(adjusted[i]) for i in range(present.size)}

        findings = []
        flagged_events: list[int] = []
        for j in flagged:
            rows = np.flatnonzero(anomalous & (codes == j))
            rows = rows[np.argsort(-scores[rows], kind="stable")]
            flagged_events += [int(i) for i in rows]
            finding: dict[str, Any] = {
                "subject": f"class={names[j]}",
                "class": names[j],
                "statistic": plain(anomalous_per_class[j] / total),
                "reference_value": plain(expected_share[j]),
                "anomalous": int(anomalous_per_class[j]),
                "expected": plain(total * expected_share[j]),
                "n_class": int(per_class[j]),
                "p_value": plain(p_of[int(j)]),
                "threshold": self.alpha,
                "event_ids": bounded_ids(window.event_ids, rows),
            }
            spectral = _spectral_signature(window, np.flatnonzero(codes == j), set(rows.tolist()))
            if spectral is not None:
                finding["spectral"] = spectral
            findings.append(finding)
        top_class = int(present[best])
        flagged_events.sort(key=lambda i: -scores[i])
        return self.result(
            n,
            alert=bool(flagged),
            statistic=anomalous_per_class[top_class] / total if total else 0.0,
            threshold=None,
            p_value=float(adjusted[best]),
            evidence={
                "anomalous": total,
                "score_threshold": plain(vae.score_threshold),
                "classes": {
                    names[j]: {
                        "events": int(per_class[j]),
                        "anomalous": int(anomalous_per_class[j]),
                        "expected": plain(total * expected_share[j]),
                    }
                    for j in present
                },
                "subjects": [finding["subject"] for finding in findings],
                "findings": findings,
            },
            event_scores=tuple(
                EventScore(event_id=str(window.event_ids[i]), score=float(scores[i]))
                for i in flagged_events[:MAX_IDS]
            ),
        )

    # ------------------------------------------------------------------ state

    def _save_state(self) -> BackdoorState:
        return BackdoorState(
            vae=self._inner_vae().state_dict(),
            classes=list(self._classes),
            reference_counts=self._reference_counts,
            reference_above=self._reference_above,
            propensity_quantile=self.propensity_quantile,
        )

    def _load_state(self, state: BackdoorState) -> None:
        counts, above = state.reference_counts, state.reference_above
        if (
            not state.classes
            or counts.shape != (len(state.classes),)
            or above.shape != counts.shape
            or counts.sum() < 1
        ):
            raise self._malformed(f"{len(state.classes)} classes, counts {counts.shape}")
        self._vae = VAEAnomalyDetector(**self.vae).load_state_dict(state.vae)
        self._classes = tuple(state.classes)
        self._reference_counts = counts
        self._reference_above = above
        self._propensity = self._propensities(counts, above)


# ---------------------------------------------------------------------------------------------- helpers


def _predicted(batch: Batch) -> list[str | None]:
    """The predicted class of every event (None where the event has no usable prediction)."""
    if len(batch.predictions) != len(batch):
        return [None] * len(batch)
    return [predicted_class(prediction) for prediction in batch.predictions]


def _codes(predicted: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """Class index per event: a reference class, ``len(classes)`` for "other", -1 without a prediction."""
    index = {cls: j for j, cls in enumerate(classes)}
    return np.array(
        [-1 if cls is None else index.get(cls, len(classes)) for cls in predicted], dtype=np.int64
    )


def _spectral_signature(window: Batch, rows: np.ndarray, anomalous: set[int]) -> dict[str, Any] | None:
    """Tran et al.'s outlier scores of one class's events, or None without usable embeddings.

    The top ``max(len(anomalous), 1)`` events by squared projection on the top singular vector of the
    centred embeddings, and how many of them the VAE marked anomalous.
    """
    if len(window.embeddings) != len(window) or rows.size < 3:
        return None
    vectors = [window.embeddings[i] for i in rows]
    if any(v is None or len(v) == 0 for v in vectors) or len({len(v) for v in vectors if v is not None}) != 1:
        return None
    matrix = as_float_array(vectors)
    centred = matrix - matrix.mean(axis=0)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    outlier = (centred @ right[0]) ** 2
    top = rows[np.argsort(-outlier, kind="stable")[: max(len(anomalous), 1)]]
    energy = float((singular**2).sum())
    return {
        "top_event_ids": bounded_ids(window.event_ids, top),
        "overlap_with_anomalous": int(sum(1 for i in top if int(i) in anomalous)),
        "top_direction_energy_share": plain(singular[0] ** 2 / energy) if energy > 0 else None,
    }
