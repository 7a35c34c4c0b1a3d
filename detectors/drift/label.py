"""Change in the mix of ground-truth labels among the labelled events of a window.

A label mix that moves away from the reference's (a class that disappears, or floods in) is a prior-shift
drift, or labels being tampered with on their way back to the model: a poisoning vector. Only the events of
the window that carry a label are used.

* classification — chi-squared test of the 2 x K table of label counts (reference, window), with rare and
  unseen labels pooled until every expected count is >= 5, together with a two-sided test of each class's
  share (and of the share of labels unseen in the reference): with many classes, one class that
  disappears barely moves the omnibus statistic (see :func:`detectors.drift._stats.class_mix_tests`).
  The ``1 + K + 1`` p-values are corrected together (Bonferroni by default);
* regression — two-sample Kolmogorov-Smirnov test of the label values.

Whether the labels are classes or values is decided at ``fit`` (``task="auto"``): values when they all parse
as numbers and the reference predictions carry a ``"value"`` (or, without predictions, some label is not a
whole number). Labels such as "0".."9" are classes when the model predicts classes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Self

import numpy as np

from detectors._checks import check_choice, check_float, check_int
from detectors.base import Batch, DetectionResult, Threat
from detectors.drift._labelled import LabelledTaskDetector
from detectors.drift._stats import (
    CORRECTIONS,
    TASKS,
    adjust_pvalues,
    class_mix_tests,
    ks_critical_value,
    ks_test,
    parse_float,
    plain,
)
from detectors.state import HYPERPARAMETER, DetectorState, Float64Array, Int64Array

__all__ = ["LabelDriftDetector", "LabelDriftState"]


@dataclass
class LabelDriftState(DetectorState):
    """The reference label mix (classification) or sorted label values (regression)."""

    task: str
    max_classes: Annotated[int, HYPERPARAMETER]
    classes: list[str]
    counts: Int64Array  # per class, then "other"
    values: Float64Array


class LabelDriftDetector(LabelledTaskDetector[LabelDriftState], id="label_drift", threat=Threat.INTEGRITY):
    """Flags windows whose labelled events have a different label mix from the reference.

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5).
    min_labelled
        Windows with fewer labelled events are skipped (>= 2); ``fit`` needs as many in the reference.
    task
        ``"auto"`` (see the module docstring), ``"classification"`` or ``"regression"``.
    correction
        Correction over the class-mix tests: ``"bonferroni"`` (family-wise, the default) or ``"fdr_bh"``.
    max_classes
        Classes kept, the most frequent in the reference (>= 1); the others count as "other".
    top_k
        Classes reported in ``evidence["shares"]``, the most changed first (>= 1).

    Notes
    -----
    Classification: ``statistic`` is the chi-squared statistic, ``p_value`` the smallest corrected p-value of
    the family and ``threshold`` None (the decision combines several tests, no single critical value
    exists); ``evidence`` holds ``shares`` (reference and window shares of the most changed classes),
    ``most_changed`` (its class, both shares), ``moved`` (the tests below ``alpha`` after correction),
    ``chi2``, ``chi2_p_value``, ``cramers_v``, ``dof``, ``n_tests``, ``correction`` and ``n_labelled``.

    Regression: ``statistic`` is the KS ``D``, ``threshold`` its asymptotic critical value; ``evidence``
    holds both medians, the median shift in reference standard deviations and ``n_labelled``.

    Examples
    --------
    >>> from detectors._examples import classes, statuses
    >>> detector = LabelDriftDetector().fit(classes(300, seed=0))
    >>> statuses(detector, classes(300, seed=1), classes(300, seed=2, share_of_a=0.8))
    ('ok', 'alert')
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        min_labelled: int = 30,
        task: str = "auto",
        correction: str = "bonferroni",
        max_classes: int = 50,
        top_k: int = 10,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.min_labelled = check_int("min_labelled", min_labelled, 2)
        self.task = check_choice("task", task, TASKS)
        self.correction = check_choice("correction", correction, CORRECTIONS)
        self.max_classes = check_int("max_classes", max_classes, 1)
        self.top_k = check_int("top_k", top_k, 1)

        self._task: str | None = None  # the resolved task
        self._classes: tuple[str, ...] = ()
        self._counts = np.empty(0, dtype=np.int64)  # per class, then "other"
        self._values = np.empty(0, dtype=np.float64)  # sorted label values (regression)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Learn the reference label mix or label distribution from ``labels`` (and ``predictions``, for
        ``task="auto"``); a ValueError if the reference has fewer than ``min_labelled`` labelled events, or
        ``task="regression"`` and a label is not a number."""
        labels = [label for label in reference.labels if label is not None]
        if len(labels) < self.min_labelled:
            raise ValueError(
                f"{self.id}: the reference has {len(labels)} labelled events, at least "
                f"min_labelled={self.min_labelled} are needed"
            )
        task = self._resolve_task(reference)
        if task == "regression":
            values = [parse_float(label) for label in labels]
            if any(v is None for v in values):
                bad = next(label for label, v in zip(labels, values, strict=True) if v is None)
                raise ValueError(
                    f"{self.id}: task='regression' but the reference label {bad!r} is not a number"
                )
            self._values = np.sort(np.array(values, dtype=np.float64))
            self._classes = ()
            self._counts = np.empty(0, dtype=np.int64)
        else:
            counts = Counter(str(label) for label in labels)
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: self.max_classes]
            self._classes = tuple(sorted(cls for cls, _ in ranked))
            self._counts = _label_counts(labels, self._classes)
            self._values = np.empty(0, dtype=np.float64)
        self._task = task
        return self

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test the label mix of the window's labelled events against the reference (uses ``labels``)."""
        task = self.resolved_task
        n = len(window)
        labels = [label for label in window.labels if label is not None]
        if len(labels) < self.min_labelled:
            return self.skipped(n, f"too few labelled events: {len(labels)} < {self.min_labelled}")
        if task == "regression":
            return self._evaluate_values(n, labels)
        return self._evaluate_classes(n, labels)

    def _evaluate_classes(self, n: int, labels: Sequence[str]) -> DetectionResult:
        counts = _label_counts(labels, self._classes)
        names = [*self._classes, "other"]
        tests = class_mix_tests(self._counts, counts, names)
        adjusted = adjust_pvalues([test.p_value for test in tests], self.correction)
        p_value = float(adjusted.min())
        reference_shares = self._counts / self._counts.sum()
        window_shares = counts / counts.sum()
        order = np.argsort(-np.abs(window_shares - reference_shares), kind="stable")
        shown = [int(j) for j in order if reference_shares[j] > 0 or window_shares[j] > 0][: self.top_k]
        most = int(order[0])
        moved = sorted(
            (i for i in range(len(tests)) if adjusted[i] < self.alpha), key=lambda i: (tests[i].p_value, i)
        )
        return self.result(
            n,
            alert=p_value < self.alpha,
            statistic=tests[0].statistic,
            threshold=None,
            p_value=p_value,
            evidence={
                "shares": {
                    "reference": {names[j]: plain(reference_shares[j]) for j in shown},
                    "window": {names[j]: plain(window_shares[j]) for j in shown},
                },
                "most_changed": {
                    "class": names[most],
                    "reference_share": plain(reference_shares[most]),
                    "window_share": plain(window_shares[most]),
                },
                "moved": [
                    {
                        "test": tests[i].test,
                        "class": tests[i].cls,
                        "statistic": plain(tests[i].statistic),
                        "p_value": plain(tests[i].p_value),
                        "p_adjusted": plain(adjusted[i]),
                    }
                    for i in moved
                ],
                "chi2": plain(tests[0].statistic),
                "chi2_p_value": plain(tests[0].p_value),
                "cramers_v": tests[0].effect["cramers_v"],
                "dof": tests[0].effect["dof"],
                "n_tests": len(tests),
                "correction": self.correction,
                "n_labelled": len(labels),
            },
        )

    def _evaluate_values(self, n: int, labels: Sequence[str]) -> DetectionResult:
        parsed = [parse_float(label) for label in labels]
        values = np.array([v for v in parsed if v is not None], dtype=np.float64)
        if values.size < self.min_labelled:
            return self.skipped(n, f"too few numeric labels: {values.size} < {self.min_labelled}")
        d, p = ks_test(self._values, values, (0.0, 2.0 * self.alpha))
        reference_median = float(np.median(self._values))
        window_median = float(np.median(values))
        std = float(self._values.std())
        return self.result(
            n,
            alert=p < self.alpha,
            statistic=d,
            threshold=ks_critical_value(self.alpha, self._values.size, values.size),
            p_value=p,
            evidence={
                "reference_median": plain(reference_median),
                "window_median": plain(window_median),
                "median_shift_sd": plain((window_median - reference_median) / std) if std > 0 else None,
                "n_labelled": int(values.size),
                "n_non_numeric": len(labels) - int(values.size),
            },
        )

    # ------------------------------------------------------------------ state

    def _save_state(self) -> LabelDriftState:
        return LabelDriftState(
            task=self.resolved_task,
            max_classes=self.max_classes,
            classes=list(self._classes),
            counts=self._counts,
            values=self._values,
        )

    def _load_state(self, state: LabelDriftState) -> None:
        task, counts = state.task, state.counts
        if task not in ("classification", "regression") or (self.task != "auto" and task != self.task):
            raise ValueError(
                f"{self.id}: the state is for task {task!r}, this detector has task={self.task!r}"
            )
        if task == "classification" and (counts.shape != (len(state.classes) + 1,) or counts.sum() < 1):
            raise self._malformed(f"{len(state.classes)} classes, counts {counts.shape}")
        if task == "regression" and state.values.size < 1:
            raise self._malformed("no reference label values")
        self._task = task
        self._classes = tuple(state.classes)
        self._counts = counts
        self._values = state.values


def _label_counts(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts per class, then of every other label."""
    index = {cls: i for i, cls in enumerate(classes)}
    counts = np.zeros(len(classes) + 1, dtype=np.int64)
    for label in labels:
        counts[index.get(str(label), len(classes))] += 1
    return counts
