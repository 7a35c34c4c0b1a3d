"""Per-feature drift: one two-sample test per feature and per missing-value share, corrected for multiplicity.

For every feature of the reference (the union of the reference events' keys; numeric or categorical as
decided by :class:`detectors.encoding.FeatureSchema`):

* **numeric** — the two-sample Kolmogorov-Smirnov test of the window's non-missing values against the
  reference's (test ``"ks"``). A feature that is constant in the reference (the border pixels of digits
  are always 0) has no distribution for KS to compare; it is tested instead (test ``"constant"``) for
  values that differ from the constant, with Fisher's exact one-sided test of the share of such values
  (0 of ``n`` in the reference) — one stray value in 200 gives p = 0.25, ten give p < 1e-6;
* **categorical** — the chi-squared test of the 2 x K table of category counts (reference, window) over
  the reference's categories (at most ``max_categories``, the most frequent), with unseen and dropped
  categories pooled into "other" and rare categories pooled until every expected count is >= 5 (test
  ``"chi2"``);
* **every feature** — the share of missing values (None, NaN, infinite, absent key or a value of the
  wrong type), with the two-proportion z-test, or Fisher's exact test when counts are small (test
  ``"missing"``).

The family of tests is fixed at ``fit``: ``m`` = one value test per feature that has values in the
reference, plus one missing-value test per feature. A test that cannot be run on a window (the feature has
no value in it) counts with p = 1. The p-values are corrected over the family (Bonferroni by default: the
probability that a clean window raises an alert is at most ``alpha``, whatever the dependence between
features), and the window alerts when any corrected p-value is below ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

import numpy as np

from detectors._checks import check_choice, check_float, check_int
from detectors.base import Batch, DetectionResult, Detector, Threat, feature_window_problem
from detectors.drift._stats import (
    CORRECTIONS,
    adjust_family,
    chi2_homogeneity,
    excess_test,
    ks_tests,
    plain,
    proportion_test,
)
from detectors.encoding import FeatureSchema, _gather, _numeric_column
from detectors.state import (
    HYPERPARAMETER,
    DetectorState,
    Float64Array,
    Int64Array,
    concatenate_ragged,
    split_ragged,
)

__all__ = ["FeatureDriftDetector", "FeatureDriftState"]

# Share of the test family's decision threshold below which KS p-values are left asymptotic (see ks_test).
_EXACT_BAND_LOW = 0.01


@dataclass(frozen=True)
class _Numeric:
    """Reference summary of one numeric feature."""

    values: np.ndarray  # sorted finite reference values
    n_missing: int
    median: float
    std: float

    @property
    def constant(self) -> bool:
        return self.values.size > 0 and bool(self.values[0] == self.values[-1])


@dataclass(frozen=True)
class _Categorical:
    """Reference summary of one categorical feature: counts per category, of "other" and of missing."""

    categories: tuple[str, ...]
    counts: np.ndarray  # int64, one per category, then "other"
    n_missing: int


@dataclass
class NumericSummaries:
    """The numeric features' sorted finite reference values, concatenated, and their missing counts."""

    names: list[str]
    values: Float64Array
    offsets: Int64Array  # feature i's values are values[offsets[i]:offsets[i + 1]]
    missing: Int64Array


@dataclass
class CategoricalSummary:
    """One categorical feature's reference category counts (then "other") and missing count."""

    categories: list[str]
    counts: list[int]
    missing: int


@dataclass
class FeatureDriftState(DetectorState):
    """What ``feature_drift`` learns from the reference: a summary per feature."""

    n_reference: int
    max_categories: Annotated[int, HYPERPARAMETER]
    names: list[str]
    numeric: NumericSummaries
    categorical: dict[str, CategoricalSummary]


@dataclass(frozen=True)
class _Outcome:
    """One test on one window."""

    feature: str
    test: str
    statistic: float
    p_value: float
    effect: dict[str, Any]
    strength: float  # effect magnitude in [0, 1], breaks ties between p-values that underflow to 0


class FeatureDriftDetector(Detector[FeatureDriftState], id="feature_drift", threat=Threat.DRIFT):
    """Flags windows in which some feature's distribution, or its share of missing values, has changed.

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5): a clean window alerts with probability at most ``alpha``
        (Bonferroni) or about ``alpha`` (Benjamini-Hochberg).
    correction
        ``"bonferroni"`` (controls the family-wise false-alarm rate, which is what ``alpha`` promises) or
        ``"fdr_bh"`` (Benjamini-Hochberg: same false-alarm rate on clean windows, more power when many
        features drift together).
    min_events
        Windows with fewer events are skipped (>= 2).
    max_categories
        Categories kept per categorical feature, the most frequent in the reference (>= 1); the others are
        counted as "other".
    top_k
        Most drifted tests reported in the evidence (>= 1).

    Notes
    -----
    ``statistic`` is the number of drifted features, ``threshold`` is 1 (one drifted feature makes the
    window alert) and ``p_value`` is the smallest corrected p-value. ``evidence["drifted"]`` lists the
    tests whose corrected p-value is below ``alpha``, most significant first, each with ``feature``,
    ``test`` (``"ks"``, ``"constant"``, ``"chi2"`` or ``"missing"``), ``statistic``, ``p_value`` (raw),
    ``p_adjusted`` and ``effect``: for KS, ``d`` and ``median_shift_sd`` (the median's shift in reference
    standard deviations) with both medians; for constant features the constant and the window's share of
    other values; for chi-squared, ``cramers_v`` and the category whose share changed most; for missing
    values both shares.

    Examples
    --------
    >>> from detectors._examples import gaussian
    >>> detector = FeatureDriftDetector().fit(gaussian(500, seed=0, dim=1))
    >>> detector.evaluate(gaussian(200, seed=1, dim=1)).status.value
    'ok'
    >>> shifted = detector.evaluate(gaussian(200, seed=2, dim=1, loc=0.5))
    >>> shifted.status.value, shifted.evidence["drifted"][0]["test"]
    ('alert', 'ks')
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        correction: str = "bonferroni",
        min_events: int = 30,
        max_categories: int = 50,
        top_k: int = 20,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.correction = check_choice("correction", correction, CORRECTIONS)
        self.min_events = check_int("min_events", min_events, 2)
        self.max_categories = check_int("max_categories", max_categories, 1)
        self.top_k = check_int("top_k", top_k, 1)

        self._names: tuple[str, ...] = ()
        self._numeric: dict[str, _Numeric] = {}
        self._categorical: dict[str, _Categorical] = {}
        self._n_reference = 0

    @property
    def fitted(self) -> bool:
        return self._n_reference > 0

    @property
    def n_tests(self) -> int:
        """Size of the test family: a value test per feature with reference values, a missing test each."""
        self._require_fitted()
        with_values = sum(1 for summary in self._numeric.values() if summary.values.size > 0)
        return with_values + len(self._categorical) + len(self._names)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Summarise every reference feature (only ``features`` is used): sorted values, category counts,
        missing counts; a ValueError if the reference has fewer than ``min_events`` events, no features, or
        a value of an unsupported type."""
        n = len(reference)
        if n < self.min_events:
            raise ValueError(
                f"{self.id}: the reference has {n} events, at least min_events={self.min_events} are needed"
            )
        if len(reference.features) != n or not any(reference.features):
            raise ValueError(f"{self.id}: the reference has no features")
        schema = FeatureSchema.fit(reference.features, max_categories=self.max_categories)
        names = schema.names
        kinds = schema.kinds
        numeric: dict[str, _Numeric] = {}
        categorical: dict[str, _Categorical] = {}
        for name, column in zip(names, _gather(reference.features, names), strict=True):
            if kinds[name] == "numeric":
                values = _numeric_column(column)
                finite = np.sort(values[np.isfinite(values)])
                numeric[name] = _summarise(finite, n - finite.size)
            else:
                categories = tuple(schema.categories(name))
                codes = _category_codes(column, categories)
                counts = np.bincount(codes, minlength=len(categories) + 2)
                categorical[name] = _Categorical(
                    categories, counts[: len(categories) + 1].astype(np.int64), int(counts[-1])
                )
        self._names = names
        self._numeric = numeric
        self._categorical = categorical
        self._n_reference = n
        return self

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test every feature of the window against the reference (only ``features`` is used; keys outside
        the reference are ignored)."""
        self._require_fitted()
        n = len(window)
        if (problem := feature_window_problem(window, self.min_events)) is not None:
            return self.skipped(n, problem)
        m = self.n_tests
        band = (_EXACT_BAND_LOW * self.alpha / m, 2.0 * self.alpha)
        outcomes: list[_Outcome] = []
        ks_jobs: list[tuple[str, _Numeric, np.ndarray]] = []  # run together, vectorised
        for name, column in zip(self._names, _gather(window.features, self._names), strict=True):
            if name in self._numeric:
                outcomes += self._numeric_tests(name, self._numeric[name], column, n, ks_jobs)
            else:
                outcomes += self._categorical_tests(name, self._categorical[name], column, n)
        if ks_jobs:
            d, p = ks_tests([job[1].values for job in ks_jobs], [job[2] for job in ks_jobs], band)
            outcomes += [
                _ks_outcome(name, summary, present, float(d[i]), float(p[i]))
                for i, (name, summary, present) in enumerate(ks_jobs)
            ]
        # Tests the window could not run (no values for a feature) count with p = 1: the family is fixed.
        adjusted, p_value = adjust_family([o.p_value for o in outcomes], m, self.correction)
        drifted = [i for i in range(len(outcomes)) if adjusted[i] < self.alpha]
        drifted.sort(key=lambda i: (outcomes[i].p_value, -outcomes[i].strength, i))
        n_drifted = len({outcomes[i].feature for i in drifted})
        return self.result(
            n,
            alert=p_value < self.alpha,
            statistic=float(n_drifted),
            threshold=1.0,
            p_value=p_value,
            evidence={
                "drifted": [
                    {
                        "feature": outcomes[i].feature,
                        "test": outcomes[i].test,
                        "statistic": plain(outcomes[i].statistic),
                        "p_value": plain(outcomes[i].p_value),
                        "p_adjusted": plain(adjusted[i]),
                        "effect": outcomes[i].effect,
                    }
                    for i in drifted[: self.top_k]
                ],
                "n_drifted_tests": len(drifted),
                "n_drifted_features": n_drifted,
                "n_tests": m,
                "correction": self.correction,
            },
        )

    def _numeric_tests(
        self,
        name: str,
        summary: _Numeric,
        column: Sequence[Any],
        n: int,
        ks_jobs: list[tuple[str, _Numeric, np.ndarray]],
    ) -> list[_Outcome]:
        """The missing-value test and the constant test; a KS test is queued in ``ks_jobs``."""
        values = _numeric_column(column)
        present = values[np.isfinite(values)]
        outcomes = [self._missing_test(name, summary.n_missing, n - present.size, n)]
        reference = summary.values
        if reference.size == 0 or present.size == 0:
            return outcomes
        if summary.constant:
            constant = float(reference[0])
            k = int(np.count_nonzero(present != constant))
            share = k / present.size
            p = excess_test(k, present.size, 0, reference.size)
            effect = {"constant": plain(constant), "reference_share": 0.0, "window_share": plain(share)}
            outcomes.append(_Outcome(name, "constant", share, p, effect, share))
        else:
            ks_jobs.append((name, summary, present))
        return outcomes

    def _categorical_tests(
        self, name: str, summary: _Categorical, column: Sequence[Any], n: int
    ) -> list[_Outcome]:
        codes = _category_codes(column, summary.categories)
        counts = np.bincount(codes, minlength=len(summary.categories) + 2)
        window_missing = int(counts[-1])
        outcomes = [self._missing_test(name, summary.n_missing, window_missing, n)]
        reference = summary.counts
        window = counts[:-1]
        if reference.sum() == 0 or window.sum() == 0:
            return outcomes
        result = chi2_homogeneity(reference, window, pooled=[len(summary.categories)])
        labels = [*summary.categories, "other"]
        reference_shares = reference / reference.sum()
        window_shares = window / window.sum()
        most = int(np.argmax(np.abs(window_shares - reference_shares)))
        effect = {
            "cramers_v": plain(result.cramers_v),
            "category": labels[most],
            "reference_share": plain(reference_shares[most]),
            "window_share": plain(window_shares[most]),
        }
        outcomes.append(_Outcome(name, "chi2", result.statistic, result.p_value, effect, result.cramers_v))
        return outcomes

    def _missing_test(self, name: str, reference_missing: int, window_missing: int, n: int) -> _Outcome:
        reference_share = reference_missing / self._n_reference
        window_share = window_missing / n
        p = proportion_test(reference_missing, self._n_reference, window_missing, n)
        effect = {"reference_share": plain(reference_share), "window_share": plain(window_share)}
        difference = abs(window_share - reference_share)
        return _Outcome(name, "missing", difference, p, effect, difference)

    # ------------------------------------------------------------------ state

    def _save_state(self) -> FeatureDriftState:
        numeric = [name for name in self._names if name in self._numeric]
        return FeatureDriftState(
            n_reference=self._n_reference,
            max_categories=self.max_categories,
            names=list(self._names),
            numeric=NumericSummaries(
                numeric,
                *concatenate_ragged([self._numeric[name].values for name in numeric]),
                missing=np.array([self._numeric[name].n_missing for name in numeric], dtype=np.int64),
            ),
            categorical={
                name: CategoricalSummary(
                    list(summary.categories), [int(c) for c in summary.counts], summary.n_missing
                )
                for name, summary in self._categorical.items()
            },
        )

    def _load_state(self, state: FeatureDriftState) -> None:
        numeric = state.numeric
        names = numeric.names
        categorical = {
            name: _Categorical(
                tuple(entry.categories), np.asarray(entry.counts, dtype=np.int64), entry.missing
            )
            for name, entry in state.categorical.items()
        }
        values = split_ragged(numeric.values, numeric.offsets, len(names))
        if (
            numeric.missing.shape != (len(names),)
            or sorted([*names, *categorical]) != sorted(state.names)
            or state.n_reference < 1
            or any(c.counts.shape != (len(c.categories) + 1,) for c in categorical.values())
        ):
            raise self._malformed("inconsistent feature summaries")
        self._names = tuple(state.names)
        self._numeric = {name: _summarise(values[i], int(numeric.missing[i])) for i, name in enumerate(names)}
        self._categorical = categorical
        self._n_reference = state.n_reference


def _ks_outcome(name: str, summary: _Numeric, present: np.ndarray, d: float, p: float) -> _Outcome:
    window_median = float(np.median(present))
    effect = {
        "d": plain(d),
        "median_shift_sd": plain((window_median - summary.median) / summary.std),
        "reference_median": plain(summary.median),
        "window_median": plain(window_median),
    }
    return _Outcome(name, "ks", d, p, effect, d)


def _summarise(values: np.ndarray, n_missing: int) -> _Numeric:
    """The summary of a numeric feature from its sorted finite reference values."""
    if values.size == 0:
        return _Numeric(values, n_missing, math.nan, math.nan)
    std = float(values.std())
    return _Numeric(values, n_missing, float(np.median(values)), std if std > 0 else math.nan)


def _category_codes(column: Sequence[Any], categories: Sequence[str]) -> np.ndarray:
    """Category index per value: ``len(categories)`` for "other" (unseen or not a str), +1 for missing."""
    index = {category: i for i, category in enumerate(categories)}
    other, missing = len(categories), len(categories) + 1
    codes = np.empty(len(column), dtype=np.intp)
    for i, value in enumerate(column):
        if isinstance(value, str):
            codes[i] = index.get(value, other)
        elif value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
            codes[i] = missing
        else:
            codes[i] = other
    return codes
