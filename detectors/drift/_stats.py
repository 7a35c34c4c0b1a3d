"""Statistics and small helpers shared by the drift detectors.

* :func:`adjust_pvalues`: Bonferroni or Benjamini-Hochberg correction over a family of tests;
* :func:`ks_test`: the two-sample Kolmogorov-Smirnov test against a reference sorted once in ``fit``;
* :func:`chi2_homogeneity`: the chi-squared test of a 2 x K table of category counts (reference vs window),
  pooling rare categories so that every expected count is at least 5; :func:`class_mix_tests` adds a share
  test per class to it;
* :func:`proportion_test` and :func:`excess_test`: two-sided and one-sided tests of two shares;
* reading predictions and labels (:func:`predicted_class`, :func:`infer_task`) and turning numbers into
  plain JSON values for the evidence.

Every test here is a *two-sample* test: the reference is a finite sample too, and treating its shares or its
distribution as exact would make the tests anti-conservative (more false alarms than ``alpha`` promises).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special, stats

__all__ = [
    "CORRECTIONS",
    "TASKS",
    "Chi2Result",
    "MixTest",
    "adjust_family",
    "adjust_pvalues",
    "chi2_homogeneity",
    "class_mix_tests",
    "excess_test",
    "infer_task",
    "ks_asymptotic_pvalues",
    "ks_critical_value",
    "ks_statistic",
    "ks_test",
    "ks_tests",
    "parse_float",
    "plain",
    "predicted_class",
    "proportion_test",
    "top_score",
]

CORRECTIONS = ("bonferroni", "fdr_bh")
"""Multiple-testing corrections: family-wise (Bonferroni) or false-discovery rate (Benjamini-Hochberg)."""

TASKS = ("auto", "classification", "regression")

Task = Literal["classification", "regression"]

# scipy.stats.ks_2samp(method="auto") computes exact p-values up to this sample size, asymptotic beyond.
_KS_EXACT_MAX_N = 10_000

# Below this effective sample size, Stephens' approximation of the KS distribution is too conservative
# in the tail to decide whether scipy's p-value is needed: it is always computed.
_KS_SMALL_N = 30

# Least expected count per cell of a chi-squared table (the usual rule of thumb).
_MIN_EXPECTED = 5.0


# ---------------------------------------------------------------------------------------------- evidence


def plain(value: float | np.floating[Any] | np.integer[Any] | None, digits: int = 6) -> float | None:
    """A plain Python float rounded to ``digits`` significant digits; None for None, NaN and infinities.

    Evidence is stored as JSON, which has no NaN; rounding keeps it readable.
    """
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    return float(f"{number:.{digits}g}")


# ---------------------------------------------------------------------------------------------- corrections


def adjust_pvalues(p_values: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """Multiple-testing adjusted p-values; a test rejects at level ``alpha`` iff its adjusted p < alpha.

    Parameters
    ----------
    p_values
        The raw p-values of the family.
    method
        ``"bonferroni"`` (``min(1, m p)``: the family-wise false-alarm rate is at most ``alpha`` under any
        dependence) or ``"fdr_bh"`` (Benjamini-Hochberg step-up adjusted p-values: the false-discovery
        rate is at most ``alpha`` for independent or positively dependent tests, and when no test is
        truly drifted, which is when a false alarm can happen, it equals the family-wise rate).

    Returns
    -------
    np.ndarray
        float64, same order as ``p_values``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method == "fdr_bh":
        order = np.argsort(p, kind="stable")
        scaled = p[order] * m / np.arange(1, m + 1)
        monotone = np.minimum.accumulate(scaled[::-1])[::-1]
        adjusted = np.empty(m, dtype=np.float64)
        adjusted[order] = np.minimum(monotone, 1.0)
        return adjusted
    raise ValueError(f"correction must be one of {', '.join(map(repr, CORRECTIONS))}, got {method!r}")


def adjust_family(p_values: Sequence[float], family_size: int, method: str) -> tuple[np.ndarray, float]:
    """Adjusted p-values of the tests a window could run, in a family of ``family_size`` tests fixed at
    ``fit``: the tests it could not run count with p = 1. Also the smallest adjusted p-value (1 if none ran).
    """
    raw = np.array(list(p_values) + [1.0] * (family_size - len(p_values)), dtype=np.float64)
    adjusted = adjust_pvalues(raw, method)[: len(p_values)]
    return adjusted, float(adjusted.min()) if len(p_values) else 1.0


# ---------------------------------------------------------------------------------------------- KS


def ks_statistic(reference_sorted: np.ndarray, window_sorted: np.ndarray) -> float:
    """The two-sample KS statistic ``D = sup |F_ref - F_window|``, both samples sorted and non-empty.

    Computed exactly as ``scipy.stats.ks_2samp`` does (both empirical CDFs evaluated at every observed
    value with ``searchsorted(side="right")``, which handles ties), but without re-sorting the reference.
    """
    both = np.concatenate([reference_sorted, window_sorted])
    cdf_reference = np.searchsorted(reference_sorted, both, side="right") / reference_sorted.size
    cdf_window = np.searchsorted(window_sorted, both, side="right") / window_sorted.size
    return float(np.max(np.abs(cdf_reference - cdf_window)))


def ks_asymptotic_pvalues(d: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """scipy's asymptotic two-sided p-values: Kolmogorov's distribution at ``round(n1 n2 / (n1 + n2))``."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return np.empty(0, dtype=np.float64)
    n_eff = np.maximum(np.round(_effective_n(n1, n2)), 1.0)
    return np.clip(np.asarray(stats.kstwo.sf(d, n_eff), dtype=np.float64), 0.0, 1.0)


def _effective_n(n1: np.ndarray | int, n2: np.ndarray | int) -> np.ndarray:
    a = np.asarray(n1, dtype=np.float64)
    b = np.asarray(n2, dtype=np.float64)
    return np.asarray(a * b / (a + b))


def ks_critical_value(alpha: float, n1: int, n2: int) -> float:
    """The asymptotic critical ``D`` at level ``alpha`` (windows with a larger ``D`` reject)."""
    n_eff = round(n1 * n2 / (n1 + n2))
    return float(stats.kstwo.isf(alpha, max(n_eff, 1)))


def ks_tests(
    references: Sequence[np.ndarray], windows: Sequence[np.ndarray], exact_band: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided two-sample KS tests of each window sample against its sorted reference: ``(D, p)`` arrays.

    ``D`` is computed without re-sorting the reference (:func:`ks_statistic`). Where it can matter, the
    p-value is scipy's (``ks_2samp(method="auto")``): exact when both samples have at most 10,000 values,
    else Kolmogorov's distribution at the effective sample size ``n1 n2 / (n1 + n2)``. Both are costly
    (about 1 ms per test; scipy's Kolmogorov distribution takes 5 ms below 140 effective events), so every
    test first gets Stephens' approximation, the limiting distribution at ``D (sqrt(n) + 0.12 + 0.11 /
    sqrt(n))`` (one vectorised call; within 5 % of Kolmogorov's distribution around the decision thresholds
    for ``n >= 30``, and conservative in the far tail), and scipy's p-value is computed when that
    approximation lies in ``exact_band`` (the range where the caller's decision can depend on it) or the
    effective sample is small (< 30), where the approximation is too conservative. Outside, the
    approximation is kept: a p-value far below every threshold stays far below it, and one above
    ``2 alpha`` can never lead to an alert.

    Parameters
    ----------
    references
        Per test, the reference values: sorted, finite, non-empty.
    windows
        Per test, the window's values: finite, non-empty, in any order.
    exact_band
        ``(low, high)``: compute scipy's p-value when the approximation lies in this closed range.
    """
    sorted_windows = [np.sort(window) for window in windows]
    d = np.array(
        [ks_statistic(ref, win) for ref, win in zip(references, sorted_windows, strict=True)],
        dtype=np.float64,
    )
    if d.size == 0:
        return d, np.empty(0, dtype=np.float64)
    n1 = np.array([ref.size for ref in references], dtype=np.int64)
    n2 = np.array([win.size for win in sorted_windows], dtype=np.int64)
    root = np.sqrt(_effective_n(n1, n2))
    p = np.clip(special.kolmogorov(d * (root + 0.12 + 0.11 / root)), 0.0, 1.0)
    refine = ((p >= exact_band[0]) & (p <= exact_band[1])) | (root**2 < _KS_SMALL_N)
    for i in np.flatnonzero(refine):
        if max(n1[i], n2[i]) <= _KS_EXACT_MAX_N:
            with warnings.catch_warnings():
                # scipy falls back to the asymptotic value (with a RuntimeWarning) when the exact
                # computation overflows: that is scipy's p-value too.
                warnings.simplefilter("ignore", RuntimeWarning)
                exact = stats.ks_2samp(references[i], sorted_windows[i], method="exact")
            p[i] = min(1.0, max(0.0, float(exact.pvalue)))
        else:
            p[i] = ks_asymptotic_pvalues(d[i : i + 1], n1[i : i + 1], n2[i : i + 1])[0]
    return d, p


def ks_test(
    reference_sorted: np.ndarray, window: np.ndarray, exact_band: tuple[float, float]
) -> tuple[float, float]:
    """One KS test (see :func:`ks_tests`): ``(D, p)``."""
    d, p = ks_tests([reference_sorted], [window], exact_band)
    return float(d[0]), float(p[0])


# ---------------------------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class Chi2Result:
    """Outcome of :func:`chi2_homogeneity`.

    ``groups`` lists, per column of the tested table, the indices of the input categories it pools;
    ``dof`` is 0 (and ``p_value`` 1) when fewer than two groups are left to compare.
    """

    statistic: float
    dof: int
    p_value: float
    cramers_v: float
    groups: tuple[tuple[int, ...], ...]


def chi2_homogeneity(
    reference: Sequence[int] | np.ndarray, window: Sequence[int] | np.ndarray, *, pooled: Iterable[int] = ()
) -> Chi2Result:
    """Chi-squared test that reference and window counts over the same categories have equal shares.

    The 2 x K contingency test (Pearson, no continuity correction): expected counts come from the pooled
    shares, so the reference's own sampling noise is accounted for. Categories whose expected count would
    fall below 5 in either row are pooled into one group, together with the ``pooled`` categories (such
    as "other": unseen and rare categories); if that group is still too small, the smallest remaining
    categories are merged into it until it is large enough.

    Parameters
    ----------
    reference, window
        Counts per category, same length.
    pooled
        Indices of categories that always go into the pooled group.

    Returns
    -------
    Chi2Result
        Statistic, degrees of freedom (groups - 1), p-value, Cramér's V (``sqrt(chi2 / N)`` for two rows)
        and the groups that were compared.
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.shape != win.shape or ref.ndim != 1:
        raise ValueError(f"count vectors of different shapes: {ref.shape} and {win.shape}")
    rows = np.array([ref.sum(), win.sum()])
    total = float(rows.sum())
    if rows.min() <= 0:
        return Chi2Result(0.0, 0, 1.0, 0.0, ())
    columns = ref + win
    needed = _MIN_EXPECTED * total / float(rows.min())  # column total giving expected counts >= 5
    forced = set(pooled)
    kept = [j for j in range(columns.size) if columns[j] >= needed and j not in forced and columns[j] > 0]
    pool = [j for j in range(columns.size) if j not in kept and columns[j] > 0]
    kept.sort(key=lambda j: (columns[j], j))  # smallest first, so they are merged first
    pool_total = float(columns[pool].sum()) if pool else 0.0
    while pool and pool_total < needed and kept:
        j = kept.pop(0)
        pool.append(j)
        pool_total += float(columns[j])
    groups: list[tuple[int, ...]] = [(j,) for j in sorted(kept)]
    if pool:
        groups.append(tuple(sorted(pool)))
    if len(groups) < 2:
        return Chi2Result(0.0, 0, 1.0, 0.0, tuple(groups))
    observed = np.array([[ref[list(g)].sum() for g in groups], [win[list(g)].sum() for g in groups]])
    expected = np.outer(rows, observed.sum(axis=0)) / total
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    dof = len(groups) - 1
    p_value = float(stats.chi2.sf(statistic, dof))
    return Chi2Result(statistic, dof, p_value, math.sqrt(statistic / total), tuple(groups))


@dataclass(frozen=True)
class MixTest:
    """One test of a class mix (see :func:`class_mix_tests`)."""

    test: str  # "chi2" (the whole mix) or "share" (one class)
    cls: str | None  # the class of a "share" test
    statistic: float  # chi-squared, or the change of the class's share (window - reference)
    p_value: float
    effect: dict[str, Any]


def class_mix_tests(
    reference: Sequence[int] | np.ndarray, window: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> list[MixTest]:
    """Test a window's class counts against the reference's: the whole mix, and each class's share.

    The omnibus chi-squared test (:func:`chi2_homogeneity`, the last class pooled as "other") has little
    power against a change concentrated on one class: with 10 balanced classes, a class that disappears
    from a 200-event window (against 600 reference events) gives chi2 ~ 19 on 9 degrees of freedom, p ~ 0.02.
    The per-class share tests (:func:`proportion_test`, two-sided) see the same change at p ~ 1e-6, while
    the omnibus test keeps the power against diffuse changes of the whole mix. All ``1 + len(classes)``
    tests belong to the caller's family and must be corrected together.

    Parameters
    ----------
    reference, window
        Counts per class, the last entry being "other" (classes unseen in the reference, or dropped).
    classes
        The class names, same length as the counts (the last is normally ``"other"``).

    Returns
    -------
    list[MixTest]
        The chi-squared test first, then one share test per class, in the order of ``classes``.
    """
    ref = np.asarray(reference, dtype=np.int64)
    win = np.asarray(window, dtype=np.int64)
    n_ref, n_win = int(ref.sum()), int(win.sum())
    ref_shares = ref / max(n_ref, 1)
    win_shares = win / max(n_win, 1)
    chi2 = chi2_homogeneity(ref, win, pooled=[len(classes) - 1])
    most = int(np.argmax(np.abs(win_shares - ref_shares)))
    tests = [
        MixTest(
            "chi2",
            None,
            chi2.statistic,
            chi2.p_value,
            {
                "cramers_v": plain(chi2.cramers_v),
                "dof": chi2.dof,
                "class": classes[most],
                "reference_share": plain(ref_shares[most]),
                "window_share": plain(win_shares[most]),
            },
        )
    ]
    for j, cls in enumerate(classes):
        tests.append(
            MixTest(
                "share",
                cls,
                float(win_shares[j] - ref_shares[j]),
                proportion_test(int(ref[j]), n_ref, int(win[j]), n_win),
                {"reference_share": plain(ref_shares[j]), "window_share": plain(win_shares[j])},
            )
        )
    return tests


def proportion_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value that the shares ``k1 / n1`` and ``k2 / n2`` are equal.

    The pooled two-proportion z-test when every expected cell of the 2 x 2 table is at least 5, Fisher's
    exact test otherwise. 1.0 when either sample is empty or the pooled share is 0 or 1.
    """
    n = n1 + n2
    k = k1 + k2
    if n1 == 0 or n2 == 0 or k == 0 or k == n:
        return 1.0
    share = k / n
    if min(n1, n2) * min(share, 1.0 - share) < _MIN_EXPECTED:
        table = [[k1, n1 - k1], [k2, n2 - k2]]
        return float(stats.fisher_exact(table, alternative="two-sided").pvalue)
    z = (k1 / n1 - k2 / n2) / math.sqrt(share * (1.0 - share) * (1.0 / n1 + 1.0 / n2))
    return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


def excess_test(k_window: int, n_window: int, k_reference: int, n_reference: int) -> float:
    """One-sided p-value that the window's share ``k / n`` exceeds the reference's (Fisher's exact test).

    Under the null both shares are equal; given the total ``k_window + k_reference``, the window's count is
    hypergeometric, which accounts exactly for the reference's own sampling noise.
    """
    if n_window == 0 or k_window == 0:
        return 1.0
    total = n_window + n_reference
    return float(min(1.0, stats.hypergeom.sf(k_window - 1, total, k_window + k_reference, n_window)))


# ---------------------------------------------------------------------------------------------- predictions


def predicted_class(prediction: Mapping[str, Any] | None) -> str | None:
    """The predicted class: the prediction's ``"label"``, else the class of its highest score, else None."""
    if not prediction:
        return None
    label = prediction.get("label")
    if label is not None:
        return str(label)
    scores = prediction.get("scores")
    if isinstance(scores, Mapping) and scores:
        best = max(scores.items(), key=lambda item: _score(item[1]))
        return str(best[0])
    return None


def _score(value: Any) -> float:
    """A score as float; anything unusable sorts last."""
    number = parse_float(value)
    return -math.inf if number is None else number


def top_score(prediction: Mapping[str, Any] | None) -> float:
    """The highest score of the prediction (its confidence), NaN when it has no usable scores."""
    if not prediction:
        return math.nan
    scores = prediction.get("scores")
    if not isinstance(scores, Mapping) or not scores:
        return math.nan
    values = [v for v in map(parse_float, scores.values()) if v is not None]
    return max(values) if values else math.nan


def parse_float(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric strings), else None. Bools are not numbers here."""
    if type(value) is float:  # the common case, first
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def infer_task(labels: Sequence[str | None], predictions: Sequence[Mapping[str, Any] | None]) -> Task:
    """Whether labelled events look like classification or regression.

    Regression when the labels all parse as numbers and either the predictions carry a ``"value"`` (and
    no ``"label"`` or ``"scores"``) or, without predictions, some label is not a whole number. Class ids
    such as "0".."9" parse as numbers too, which is why numeric labels alone do not make a regression.
    """
    present = [label for label in labels if label is not None]
    if not present or any(parse_float(label) is None for label in present):
        return "classification"
    with_value = sum(1 for p in predictions if p and p.get("value") is not None)
    with_class = sum(1 for p in predictions if p and (p.get("label") is not None or p.get("scores")))
    if with_value or with_class:
        return "regression" if with_value > with_class else "classification"
    numbers = [parse_float(label) for label in present]
    return "regression" if any(x is not None and not x.is_integer() for x in numbers) else "classification"
