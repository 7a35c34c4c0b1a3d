"""Black-box shift detection on the model's outputs: predicted classes, confidences, scores, values.

A change in what the model answers is the cheapest symptom of a change in what it is asked, and needs
neither features nor labels. Against the reference predictions, each window is tested with:

* ``"class_mix"`` — the chi-squared test of the predicted-class counts (the prediction's ``"label"``, else
  the class of its highest score), 2 x K table with rare and unseen classes pooled (expected counts >= 5);
* ``"class_share"`` — a two-sided test of each predicted class's share, and of the share of classes unseen
  in the reference ("other"): one class that disappears is a change the omnibus test barely sees when
  there are many classes (see :func:`detectors.drift._stats.class_mix_tests`);
* ``"confidence"`` — two-sample Kolmogorov-Smirnov test of the top score;
* ``"score"`` — KS of each class's score (at most ``max_classes`` classes, the most predicted ones);
* ``"value"`` — KS of the predicted value (regression models).

The family of tests is fixed at ``fit`` by what the reference predictions carry; the p-values are
corrected over it (Bonferroni or Benjamini-Hochberg) and the window alerts when any corrected p-value is
below ``alpha``. The scores of one event are strongly dependent (they sum to 1), which Bonferroni tolerates:
it only makes the test conservative.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

import numpy as np

from detectors._checks import check_choice, check_float, check_int
from detectors.base import Batch, DetectionResult, Detector, Threat
from detectors.drift._stats import (
    CORRECTIONS,
    adjust_family,
    class_mix_tests,
    ks_test,
    parse_float,
    plain,
    predicted_class,
    top_score,
)
from detectors.state import (
    HYPERPARAMETER,
    DetectorState,
    Float64Array,
    Int64Array,
    concatenate_ragged,
    split_ragged,
)

__all__ = ["OutputDriftDetector", "OutputDriftState"]

# Share of the family's decision threshold below which KS p-values are left asymptotic (see ks_test).
_EXACT_BAND_LOW = 0.01


@dataclass(frozen=True)
class _Outputs:
    """The outputs of a batch's predictions, one entry per event that has a prediction."""

    classes: list[str | None]
    confidence: np.ndarray  # NaN where the prediction has no scores
    scores: dict[str, np.ndarray]  # per class, NaN where the class has no score
    values: np.ndarray  # NaN where the prediction has no value

    @property
    def size(self) -> int:
        return len(self.classes)


def _outputs(predictions: Sequence[Mapping[str, Any] | None], score_classes: Sequence[str]) -> _Outputs:
    """Extract the tested outputs of every usable prediction (one with a class or a value)."""
    classes: list[str | None] = []
    confidence: list[float] = []
    values: list[float] = []
    rows: list[Mapping[str, Any]] = []
    for prediction in predictions:
        if not prediction:
            continue
        predicted = predicted_class(prediction)
        value = parse_float(prediction.get("value"))
        if predicted is None and value is None:
            continue
        classes.append(predicted)
        confidence.append(top_score(prediction))
        values.append(math.nan if value is None else value)
        scores = prediction.get("scores")
        rows.append(scores if isinstance(scores, Mapping) else {})
    per_class = {
        cls: np.array([_as_float(row.get(cls)) for row in rows], dtype=np.float64) for cls in score_classes
    }
    return _Outputs(
        classes, np.array(confidence, dtype=np.float64), per_class, np.array(values, dtype=np.float64)
    )


def _as_float(value: Any) -> float:
    number = parse_float(value)
    return math.nan if number is None else number


@dataclass(frozen=True)
class _Outcome:
    test: str
    cls: str | None
    statistic: float
    p_value: float
    effect: dict[str, Any]


@dataclass
class OutputDriftState(DetectorState):
    """The reference predictions' summaries: class counts and sorted confidences, scores and values."""

    n_reference: int
    max_classes: Annotated[int, HYPERPARAMETER]
    classes: list[str]
    class_counts: Int64Array  # per class, then "other"
    confidence: Float64Array
    score_classes: list[str]
    scores: Float64Array  # the score classes' sorted scores, concatenated
    score_offsets: Int64Array
    values: Float64Array


class OutputDriftDetector(Detector[OutputDriftState], id="output_drift", threat=Threat.DRIFT):
    """Flags windows whose predicted classes, confidences, class scores or predicted values moved.

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5).
    correction
        ``"bonferroni"`` (family-wise, the default) or ``"fdr_bh"`` (Benjamini-Hochberg).
    min_events
        Windows with fewer usable predictions are skipped (>= 2).
    max_classes
        Classes tested individually (class mix and per-class scores), the most predicted ones in the
        reference (>= 1); the others are pooled as "other" and their scores are not tested.
    top_k
        Most changed classes reported in ``evidence["class_shares"]`` (>= 1).

    Notes
    -----
    ``statistic`` is the number of tests that moved, ``threshold`` is 1 and ``p_value`` the smallest
    corrected p-value. ``evidence["moved"]`` lists the tests whose corrected p-value is below ``alpha``
    (``test``, ``class`` for class shares and scores, ``statistic``, ``p_value``, ``p_adjusted``,
    ``effect``), most significant first; ``evidence["class_shares"]`` gives the reference and window
    shares of the most changed predicted classes, ``evidence["confidence"]`` the median top score in the
    reference and the window, ``evidence["value"]`` the same for predicted values.

    Examples
    --------
    >>> from detectors._examples import classes, statuses
    >>> detector = OutputDriftDetector().fit(classes(300, seed=0))
    >>> statuses(detector, classes(300, seed=1), classes(300, seed=2, share_of_a=0.8))
    ('ok', 'alert')
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        correction: str = "bonferroni",
        min_events: int = 30,
        max_classes: int = 50,
        top_k: int = 10,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.correction = check_choice("correction", correction, CORRECTIONS)
        self.min_events = check_int("min_events", min_events, 2)
        self.max_classes = check_int("max_classes", max_classes, 1)
        self.top_k = check_int("top_k", top_k, 1)

        self._n_reference = 0
        self._classes: tuple[str, ...] = ()
        self._class_counts = np.empty(0, dtype=np.int64)  # per class, then "other"
        self._confidence = np.empty(0, dtype=np.float64)  # sorted
        self._scores: dict[str, np.ndarray] = {}  # sorted, per class
        self._values = np.empty(0, dtype=np.float64)  # sorted

    @property
    def fitted(self) -> bool:
        return self._n_reference > 0

    @property
    def n_tests(self) -> int:
        """Size of the test family."""
        self._require_fitted()
        class_tests = 1 + self._class_counts.size if self._class_counts.sum() > 0 else 0
        return class_tests + int(self._confidence.size > 0) + len(self._scores) + int(self._values.size > 0)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Summarise the reference ``predictions``; a ValueError if fewer than ``min_events`` of them are
        usable (carry a class or a value)."""
        everything = _outputs(reference.predictions, ())
        if everything.size < self.min_events:
            raise ValueError(
                f"{self.id}: the reference has {everything.size} usable predictions, at least "
                f"min_events={self.min_events} are needed"
            )
        counts = Counter(cls for cls in everything.classes if cls is not None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: self.max_classes]
        classes = tuple(sorted(cls for cls, _ in ranked))
        score_names = {
            str(name)
            for prediction in reference.predictions
            if prediction and isinstance(prediction.get("scores"), Mapping)
            for name in prediction["scores"]
        }
        # Per-class scores are tested for the most predicted classes (a class never predicted in the
        # reference but scored is still included while there is room, by name).
        ordered = [cls for cls, _ in ranked if cls in score_names]
        ordered += sorted(score_names - set(ordered))
        outputs = _outputs(reference.predictions, ordered[: self.max_classes])
        self._n_reference = outputs.size
        self._classes = classes
        self._class_counts = _class_counts(outputs.classes, classes)
        self._confidence = np.sort(outputs.confidence[np.isfinite(outputs.confidence)])
        self._scores = {}
        for cls in sorted(outputs.scores):
            column = outputs.scores[cls]
            finite = np.sort(column[np.isfinite(column)])
            if finite.size:
                self._scores[cls] = finite
        self._values = np.sort(outputs.values[np.isfinite(outputs.values)])
        return self

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test the window's ``predictions`` against the reference predictions."""
        self._require_fitted()
        n = len(window)
        if len(window.predictions) != n:
            return self.skipped(n, "the window carries no predictions")
        outputs = _outputs(window.predictions, tuple(self._scores))
        if outputs.size < self.min_events:
            return self.skipped(n, f"too few predictions: {outputs.size} < {self.min_events}")
        m = self.n_tests
        band = (_EXACT_BAND_LOW * self.alpha / m, 2.0 * self.alpha)
        outcomes: list[_Outcome] = []
        evidence: dict[str, Any] = {}

        window_counts = _class_counts(outputs.classes, self._classes)
        if self._class_counts.sum() > 0 and window_counts.sum() > 0:
            labels = [*self._classes, "other"]
            for test in class_mix_tests(self._class_counts, window_counts, labels):
                name = "class_mix" if test.test == "chi2" else "class_share"
                outcomes.append(_Outcome(name, test.cls, test.statistic, test.p_value, test.effect))
            reference_shares = self._class_counts / self._class_counts.sum()
            window_shares = window_counts / window_counts.sum()
            order = np.argsort(-np.abs(window_shares - reference_shares), kind="stable")
            shown = [int(j) for j in order if reference_shares[j] > 0 or window_shares[j] > 0][: self.top_k]
            evidence["class_shares"] = {
                "reference": {labels[j]: plain(reference_shares[j]) for j in shown},
                "window": {labels[j]: plain(window_shares[j]) for j in shown},
            }

        _median_shift_test("confidence", self._confidence, outputs.confidence, band, outcomes, evidence)
        for cls, reference in self._scores.items():
            column = outputs.scores[cls]
            present = column[np.isfinite(column)]
            if present.size:
                outcomes.append(_ks_outcome("score", cls, reference, present, band))
        _median_shift_test("value", self._values, outputs.values, band, outcomes, evidence)

        adjusted, p_value = adjust_family([o.p_value for o in outcomes], m, self.correction)
        moved = [i for i in range(len(outcomes)) if adjusted[i] < self.alpha]
        moved.sort(key=lambda i: (outcomes[i].p_value, i))
        return self.result(
            n,
            alert=p_value < self.alpha,
            statistic=float(len(moved)),
            threshold=1.0,
            p_value=p_value,
            evidence={
                "moved": [
                    {
                        "test": outcomes[i].test,
                        "class": outcomes[i].cls,
                        "statistic": plain(outcomes[i].statistic),
                        "p_value": plain(outcomes[i].p_value),
                        "p_adjusted": plain(adjusted[i]),
                        "effect": outcomes[i].effect,
                    }
                    for i in moved
                ],
                **evidence,
                "n_predictions": outputs.size,
                "n_tests": m,
                "correction": self.correction,
            },
        )

    # ------------------------------------------------------------------ state

    def _save_state(self) -> OutputDriftState:
        score_classes = list(self._scores)
        return OutputDriftState(
            self._n_reference,
            self.max_classes,
            list(self._classes),
            self._class_counts,
            self._confidence,
            score_classes,
            *concatenate_ragged([self._scores[cls] for cls in score_classes]),
            values=self._values,
        )

    def _load_state(self, state: OutputDriftState) -> None:
        scores = split_ragged(state.scores, state.score_offsets, len(state.score_classes))
        if state.n_reference < 1 or state.class_counts.shape != (len(state.classes) + 1,):
            raise self._malformed("inconsistent summaries")
        self._n_reference = state.n_reference
        self._classes = tuple(state.classes)
        self._class_counts = state.class_counts
        self._confidence = state.confidence
        self._scores = dict(zip(state.score_classes, scores, strict=True))
        self._values = state.values


def _class_counts(classes: Sequence[str | None], known: Sequence[str]) -> np.ndarray:
    """Counts per known class, then of every other class (events without a class are not counted)."""
    index = {cls: i for i, cls in enumerate(known)}
    counts = np.zeros(len(known) + 1, dtype=np.int64)
    for cls in classes:
        if cls is not None:
            counts[index.get(cls, len(known))] += 1
    return counts


def _median_shift_test(
    test: str,
    reference: np.ndarray,
    column: np.ndarray,
    band: tuple[float, float],
    outcomes: list[_Outcome],
    evidence: dict[str, Any],
) -> None:
    """KS-test a window-wide output (``confidence`` or ``value``) against its reference when both have finite
    values: append the outcome and show the two medians and their shift under ``evidence[test]``."""
    present = column[np.isfinite(column)]
    if reference.size and present.size:
        outcome = _ks_outcome(test, None, reference, present, band)
        outcomes.append(outcome)
        evidence[test] = {
            key: outcome.effect[key] for key in ("reference_median", "window_median", "median_shift")
        }


def _ks_outcome(
    test: str, cls: str | None, reference: np.ndarray, window: np.ndarray, band: tuple[float, float]
) -> _Outcome:
    d, p = ks_test(reference, window, band)
    reference_median = float(np.median(reference))
    window_median = float(np.median(window))
    effect = {
        "d": plain(d),
        "reference_median": plain(reference_median),
        "window_median": plain(window_median),
        "median_shift": plain(window_median - reference_median),
    }
    return _Outcome(test, cls, d, p, effect)
