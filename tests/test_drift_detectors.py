"""Tests of the drift detectors (:mod:`detectors.drift`) on real data shipped with scikit-learn.

Each dataset is split once, with a seeded permutation, into three disjoint parts: one trains a logistic
regression, one is the reference (the model's predictions with their scores and the true labels), and the
held-out rest supplies the windows. Shifted windows are held-out events with a documented change.

False-alarm rates are measured the way ``alpha`` is defined for a two-sample test: in each of 200 trials
the reference and a 200-event window are drawn at random, disjoint, from the events the classifier never
saw (reference part + held-out part), the detector is fitted on that reference and evaluates that window.
Evaluating many windows against *one* fixed reference, drawn from one fixed held-out pool, measures a rate
conditional on both samples instead: it scatters around ``alpha`` from split to split without saying
anything about the detector (on digits, over 24 splits with 400 windows each: output_drift 0 to 8.3 %,
1.0 % on average; label_drift 0 to 8.5 %, 1.0 %; performance 0 to 7 %, 0.7 %). Windows are drawn without
replacement: events drawn with replacement from a finite pool are not distributed like new events.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors import DETECTORS, create_detector
from detectors.base import Batch, DetectionResult, Detector, FeatureValue, NotFittedError, Status, Threat
from detectors.drift import FeatureDriftDetector, LabelDriftDetector, OutputDriftDetector, PerformanceDetector
from detectors.drift._stats import adjust_pvalues, chi2_homogeneity, ks_tests
from detectors.state import dump_state, load_state

_WINDOW = 200
_TRIALS = 200
_ALPHA = 0.01
# An observed false-alarm rate above alpha + 3 binomial standard deviations (200 windows: 3.1 %) would be
# a real excess, not noise.
_MAX_RATE = _ALPHA + 3 * math.sqrt(_ALPHA * (1 - _ALPHA) / _TRIALS)

# Seeds of the data splits and of the window draws (distinct from each other on purpose).
_DIGITS_SEED = 20_240_611
_CANCER_SEED = 20_240_612
_DIABETES_SEED = 20_240_613

_DRIFT_CLASSES: list[type[Detector]] = [
    FeatureDriftDetector,
    OutputDriftDetector,
    LabelDriftDetector,
    PerformanceDetector,
]


class Dataset:
    """A classification dataset split into train / reference / held-out, with a fitted classifier.

    ``features`` (one dict per row), ``predictions`` (label and scores) and ``labels`` are precomputed for
    every row, so that building a window is cheap.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        classes: Sequence[str],
        names: Sequence[str],
        sizes: tuple[int, int],
        seed: int,
        features: Sequence[dict[str, FeatureValue]] | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.classes = list(classes)
        self.names = list(names)
        order = np.random.default_rng(seed).permutation(len(x))
        n_train, n_reference = sizes
        self.train_ids = order[:n_train]
        self.reference_ids = order[n_train : n_train + n_reference]
        self.held_ids = order[n_train + n_reference :]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        self.model.fit(x[self.train_ids], y[self.train_ids])
        self.std = x[self.reference_ids].std(axis=0)
        self.features = list(features) if features is not None else self.to_features(x)
        self.predictions = self.predict(x)
        self.labels = [self.classes[t] for t in y]

    def to_features(self, rows: np.ndarray) -> list[dict[str, FeatureValue]]:
        return [dict(zip(self.names, map(float, row), strict=True)) for row in rows.tolist()]

    def predict(self, rows: np.ndarray) -> list[dict[str, Any]]:
        proba = self.model.predict_proba(rows)
        return [
            {
                "label": self.classes[int(np.argmax(p))],
                "scores": dict(zip(self.classes, map(float, p), strict=True)),
            }
            for p in proba
        ]

    def batch(
        self,
        ids: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        features: Sequence[dict[str, FeatureValue]] | None = None,
        labels: Sequence[str | None] | None = None,
    ) -> Batch:
        """Events ``ids``; ``rows`` replaces their inputs (features and predictions are recomputed)."""
        if rows is not None:
            features = self.to_features(rows)
            predictions = self.predict(rows)
        else:
            predictions = [self.predictions[i] for i in ids]
        return Batch(
            event_ids=[f"e{i}" for i in ids],
            features=list(features) if features is not None else [self.features[i] for i in ids],
            predictions=predictions,
            labels=list(labels) if labels is not None else [self.labels[i] for i in ids],
        )

    @property
    def reference(self) -> Batch:
        return self.batch(self.reference_ids)

    def clean_window(self, seed: int) -> Batch:
        rng = np.random.default_rng(seed)
        return self.batch(rng.choice(self.held_ids, _WINDOW, replace=False))


def _digits() -> Dataset:
    data = load_digits()
    return Dataset(
        data.data,
        data.target,
        [str(c) for c in data.target_names],
        [f"px{j}" for j in range(64)],
        (600, 600),  # 597 held out
        _DIGITS_SEED,
    )


# load_breast_cancer with one feature turned into a categorical ("low" / "mid" / "high" by the tertiles of
# the whole dataset) and missing values (None) in three features, 10 % of events each at random.
_BINNED = "mean_radius"
_WITH_MISSING = ("mean_texture", "worst_area", "mean_smoothness")
_MISSING_SHARE = 0.10


def _cancer_mixed() -> Dataset:
    data = load_breast_cancer()
    names = [name.replace(" ", "_") for name in data.feature_names]
    binned = names.index(_BINNED)
    low, high = np.quantile(data.data[:, binned], [1 / 3, 2 / 3])
    rng = np.random.default_rng(_CANCER_SEED + 1)
    features: list[dict[str, FeatureValue]] = []
    for row in data.data.tolist():
        event: dict[str, FeatureValue] = dict(zip(names, map(float, row), strict=True))
        value = row[binned]
        event[_BINNED] = "low" if value < low else "mid" if value < high else "high"
        for name in _WITH_MISSING:
            if rng.random() < _MISSING_SHARE:
                event[name] = None
        features.append(event)
    return Dataset(
        data.data,
        data.target,
        [str(c) for c in data.target_names],
        names,
        (169, 200),  # 200 held out
        _CANCER_SEED,
        features=features,
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return _digits()


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return _cancer_mixed()


def _false_alarm_rate(data: Dataset, make: Callable[[], Detector], seed: int) -> tuple[float, int]:
    """Share of alerting clean windows over ``_TRIALS`` random disjoint (reference, window) draws.

    Returns the rate and the number of skipped windows (which must be 0 for the rate to mean anything).
    """
    rng = np.random.default_rng(seed)
    pool = np.concatenate([data.reference_ids, data.held_ids])
    n_reference = len(data.reference_ids)
    alerts = skipped = 0
    for _ in range(_TRIALS):
        order = rng.permutation(pool)
        detector = make().fit(data.batch(order[:n_reference]))
        result = detector.evaluate(data.batch(order[n_reference : n_reference + _WINDOW]))
        alerts += result.status is Status.ALERT
        skipped += result.status is Status.SKIPPED
    return alerts / _TRIALS, skipped


def _noisy_half(data: Dataset, seed: int) -> tuple[Batch, list[str]]:
    """200 held-out events with Gaussian noise of 1 reference std on a random half of the features."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(data.held_ids, _WINDOW, replace=False)
    columns = rng.choice(len(data.names), len(data.names) // 2, replace=False)
    rows = data.x[ids].copy()
    rows[:, columns] += rng.normal(size=(_WINDOW, len(columns))) * data.std[columns]
    return data.batch(ids, rows=rows), [data.names[j] for j in columns]


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", _DRIFT_CLASSES, ids=lambda cls: cls.id)
def test_registered_with_their_threat(cls: type[Detector]) -> None:
    assert DETECTORS[cls.id] is cls
    expected = {
        "feature_drift": Threat.DRIFT,
        "output_drift": Threat.DRIFT,
        "label_drift": Threat.INTEGRITY,
        "performance": Threat.INTEGRITY,
    }
    assert cls.threat is expected[cls.id]
    assert cls().get_params()["alpha"] == _ALPHA


@pytest.mark.parametrize("cls", _DRIFT_CLASSES, ids=lambda cls: cls.id)
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha": 0.0}, r"alpha must be in \(0.0, 0.5\), got 0.0"),
        ({"alpha": 0.7}, r"alpha must be in \(0.0, 0.5\), got 0.7"),
        ({"alpha": "0.01"}, r"alpha must be a number"),
        ({"top_k": 0}, r"top_k must be >= 1, got 0"),
    ],
)
def test_invalid_parameters_name_the_valid_range(
    cls: type[Detector], params: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        cls(**params)


@pytest.mark.parametrize(
    ("detector_id", "params", "message"),
    [
        ("feature_drift", {"correction": "holm"}, r"correction must be one of 'bonferroni', 'fdr_bh'"),
        ("output_drift", {"min_events": 1}, r"min_events must be >= 2, got 1"),
        ("label_drift", {"task": "ranking"}, r"task must be one of 'auto', 'classification', 'regression'"),
        ("performance", {"min_labelled": True}, r"min_labelled must be an int, got bool"),
    ],
)
def test_invalid_parameters_through_the_registry(
    detector_id: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=rf"^{detector_id}: {message}"):
        create_detector(detector_id, params)


@pytest.mark.parametrize("cls", _DRIFT_CLASSES, ids=lambda cls: cls.id)
def test_nothing_works_before_fit(cls: type[Detector], digits: Dataset) -> None:
    detector = cls()
    assert not detector.fitted
    with pytest.raises(NotFittedError):
        detector.evaluate(digits.clean_window(0))
    with pytest.raises(NotFittedError):
        detector.state_dict()


def _shifted_windows(digits: Dataset) -> list[Batch]:
    """A clean window and one window per kind of drift these detectors look for."""
    clean = digits.clean_window(10)
    noisy, _ = _noisy_half(digits, 11)
    flipped = _flip_labels(digits, 0.2, 12)
    without = _without_class(digits, 3, 13)
    return [clean, noisy, flipped, without]


@pytest.mark.parametrize("cls", _DRIFT_CLASSES, ids=lambda cls: cls.id)
def test_state_round_trip_gives_identical_results(cls: type[Detector], digits: Dataset) -> None:
    detector = cls().fit(digits.reference)
    state = load_state(dump_state(detector.state_dict()))
    twin = cls(**detector.get_params()).load_state_dict(state)
    assert twin.fitted
    results = [detector.evaluate(window) for window in _shifted_windows(digits)]
    assert [twin.evaluate(window) for window in _shifted_windows(digits)] == results
    assert any(result.status is Status.ALERT for result in results)  # the comparison covers alerts too
    assert dump_state(twin.state_dict()) == dump_state(detector.state_dict())


@pytest.mark.parametrize("cls", _DRIFT_CLASSES, ids=lambda cls: cls.id)
def test_evidence_holds_plain_json_values(cls: type[Detector], digits: Dataset) -> None:
    detector = cls().fit(digits.reference)
    for window in _shifted_windows(digits):
        result = detector.evaluate(window)
        _assert_plain(dict(result.evidence))
        for value in (result.statistic, result.threshold, result.p_value):
            assert value is None or type(value) is float


def _assert_plain(value: Any) -> None:
    """Only dicts with str keys, lists, str, int, bool, None and finite plain floats."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert value is None or type(value) in (str, int, bool, float), (value, type(value))
        if type(value) is float:
            assert math.isfinite(value)


# ---------------------------------------------------------------------------------------------- feature_drift


def test_feature_clean_window_passes(digits: Dataset) -> None:
    detector = FeatureDriftDetector().fit(digits.reference)
    result = detector.evaluate(digits.clean_window(1))
    assert result.status is Status.OK
    assert result.statistic == 0.0 and result.threshold == 1.0
    assert result.evidence["drifted"] == []
    # 64 missing-value tests, a KS test per varying pixel and a constant test per always-zero pixel.
    assert result.evidence["n_tests"] == 128 == detector.n_tests


@pytest.mark.parametrize("correction", ["bonferroni", "fdr_bh"])
def test_feature_false_alarm_rate_digits(digits: Dataset, correction: str) -> None:
    rate, skipped = _false_alarm_rate(digits, lambda: FeatureDriftDetector(correction=correction), 21)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


def test_feature_noise_on_half_the_features_alerts_and_names_them(digits: Dataset) -> None:
    detector = FeatureDriftDetector().fit(digits.reference)
    for seed in range(5):
        window, noised = _noisy_half(digits, 100 + seed)
        result = detector.evaluate(window)
        assert result.status is Status.ALERT
        named = {entry["feature"] for entry in result.evidence["drifted"]}
        assert named <= set(noised), named - set(noised)
        assert result.statistic is not None and result.statistic >= 10


def test_feature_one_shifted_feature_is_named_first(digits: Dataset) -> None:
    """+1 reference std on one feature alone, for every pixel that varies in the reference."""
    detector = FeatureDriftDetector().fit(digits.reference)
    rng = np.random.default_rng(31)
    varying = np.flatnonzero(digits.std > 0)
    assert len(varying) == 59  # five border pixels are always 0 in this reference
    for j in varying:
        ids = rng.choice(digits.held_ids, _WINDOW, replace=False)
        rows = digits.x[ids].copy()
        rows[:, j] += digits.std[j]
        result = detector.evaluate(digits.batch(ids, features=digits.to_features(rows)))
        assert result.status is Status.ALERT, digits.names[j]
        first = result.evidence["drifted"][0]
        assert first["feature"] == digits.names[j]
        assert first["test"] == "ks"
        assert first["p_adjusted"] < _ALPHA
        assert first["effect"]["median_shift_sd"] > 0


def test_feature_constant_reference_feature(digits: Dataset) -> None:
    """Pixels that are always 0 in the reference: a stray value passes, ten values alert."""
    detector = FeatureDriftDetector().fit(digits.reference)
    constant = [digits.names[j] for j in np.flatnonzero(digits.std == 0)]
    ids = np.random.default_rng(41).choice(digits.held_ids, _WINDOW, replace=False)
    name = constant[0]
    for k, alerts in ((1, False), (10, True)):
        features = [dict(digits.features[i]) for i in ids]
        for event in features[:k]:
            event[name] = 8.0
        result = detector.evaluate(digits.batch(ids, features=features))
        assert (result.status is Status.ALERT) is alerts, result.evidence
        if alerts:
            first = result.evidence["drifted"][0]
            assert (first["feature"], first["test"]) == (name, "constant")
            assert first["effect"] == {"constant": 0.0, "reference_share": 0.0, "window_share": 0.05}


def test_feature_skips_small_windows(digits: Dataset) -> None:
    detector = FeatureDriftDetector().fit(digits.reference)
    result = detector.evaluate(digits.batch(digits.held_ids[:12]))
    assert result.status is Status.SKIPPED
    assert result.reason == "too few events: 12 < 30"
    assert result.n_events == 12


def test_feature_mixed_types_clean(cancer: Dataset) -> None:
    detector = FeatureDriftDetector().fit(cancer.reference)
    result = detector.evaluate(cancer.batch(cancer.held_ids))
    assert result.status is Status.OK, result.evidence
    # 29 KS + 1 chi-squared + 30 missing-value tests.
    assert result.evidence["n_tests"] == 60
    rate, skipped = _false_alarm_rate(cancer, FeatureDriftDetector, 22)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


def _edited(
    cancer: Dataset, edit: Callable[[dict[str, FeatureValue], np.random.Generator], None], seed: int
) -> Batch:
    rng = np.random.default_rng(seed)
    features = [dict(cancer.features[i]) for i in cancer.held_ids]
    for event in features:
        edit(event, rng)
    return cancer.batch(cancer.held_ids, features=features)


def test_feature_mixed_types_categorical_recoded(cancer: Dataset) -> None:
    """An upstream recoding: every "low" arrives as "mid"."""

    def recoded(event: dict[str, FeatureValue], rng: np.random.Generator) -> None:
        if event[_BINNED] == "low":
            event[_BINNED] = "mid"

    result = FeatureDriftDetector().fit(cancer.reference).evaluate(_edited(cancer, recoded, 51))
    assert result.status is Status.ALERT
    first = result.evidence["drifted"][0]
    assert (first["feature"], first["test"]) == (_BINNED, "chi2")
    assert first["effect"]["category"] in ("low", "mid")
    assert first["effect"]["cramers_v"] > 0.3


def test_feature_mixed_types_unseen_category(cancer: Dataset) -> None:
    def unknown(event: dict[str, FeatureValue], rng: np.random.Generator) -> None:
        if rng.random() < 0.1:
            event[_BINNED] = "unknown"

    result = FeatureDriftDetector().fit(cancer.reference).evaluate(_edited(cancer, unknown, 52))
    assert result.status is Status.ALERT
    first = result.evidence["drifted"][0]
    assert (first["feature"], first["test"]) == (_BINNED, "chi2")
    assert first["effect"]["category"] == "other"
    assert first["effect"]["reference_share"] == 0.0


def test_feature_mixed_types_missing_share(cancer: Dataset) -> None:
    name = _WITH_MISSING[1]

    def more_missing(event: dict[str, FeatureValue], rng: np.random.Generator) -> None:
        if rng.random() < 0.25:
            event[name] = None

    result = FeatureDriftDetector().fit(cancer.reference).evaluate(_edited(cancer, more_missing, 53))
    assert result.status is Status.ALERT
    first = result.evidence["drifted"][0]
    assert (first["feature"], first["test"]) == (name, "missing")
    assert first["effect"]["window_share"] > 0.25 > first["effect"]["reference_share"]
    assert len(result.evidence["drifted"]) == 1


def test_feature_new_missing_values_in_a_complete_feature(cancer: Dataset) -> None:
    name = "worst_radius"  # never missing in the reference

    def broken(event: dict[str, FeatureValue], rng: np.random.Generator) -> None:
        if rng.random() < 0.1:
            del event[name]  # an absent key counts as missing

    result = FeatureDriftDetector().fit(cancer.reference).evaluate(_edited(cancer, broken, 54))
    assert result.status is Status.ALERT
    first = result.evidence["drifted"][0]
    assert (first["feature"], first["test"]) == (name, "missing")
    assert first["effect"]["reference_share"] == 0.0


def test_feature_drift_alerts_on_a_large_noised_window(digits: Dataset) -> None:
    """10,000 events x 64 features with half the pixels noised: the large window must alert.

    How long it takes is measured in bench/perf_drift.py (against KSDrift), not asserted here.
    """
    detector = FeatureDriftDetector().fit(digits.reference)
    rng = np.random.default_rng(61)
    ids = rng.choice(digits.held_ids, 10_000)
    rows = digits.x[ids] + rng.normal(size=(10_000, 64)) * digits.std * (np.arange(64) % 2)
    noisy = Batch(event_ids=[f"e{i}" for i in range(10_000)], features=digits.to_features(rows))
    result = detector.evaluate(noisy)
    assert result.status is Status.ALERT
    assert result.n_events == 10_000


# ---------------------------------------------------------------------------------------------- output_drift


def _without_class(data: Dataset, k: int, seed: int, size: int = _WINDOW) -> Batch:
    """``size`` held-out events, none of true class ``k``."""
    rng = np.random.default_rng(seed)
    others = data.held_ids[data.y[data.held_ids] != k]
    return data.batch(rng.choice(others, size, replace=False))


def test_output_clean_window_passes(digits: Dataset) -> None:
    detector = OutputDriftDetector().fit(digits.reference)
    result = detector.evaluate(digits.clean_window(2))
    assert result.status is Status.OK
    assert result.evidence["moved"] == []
    # Class mix, 10 class shares and "other", confidence, 10 class scores.
    assert result.evidence["n_tests"] == 23 == detector.n_tests
    assert set(result.evidence["class_shares"]["reference"]) <= set(digits.classes)


def test_output_false_alarm_rate(digits: Dataset) -> None:
    rate, skipped = _false_alarm_rate(digits, OutputDriftDetector, 23)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


@pytest.mark.parametrize("k", range(10))
def test_output_a_class_disappears(digits: Dataset, k: int) -> None:
    """No event of true class k in a 300-event window: the predicted share of k collapses."""
    result = OutputDriftDetector().fit(digits.reference).evaluate(_without_class(digits, k, 70 + k, 300))
    assert result.status is Status.ALERT
    moved = {(entry["test"], entry["class"]): entry for entry in result.evidence["moved"]}
    share = moved[("class_share", str(k))]
    assert share["effect"]["window_share"] < 0.05 < share["effect"]["reference_share"]


def test_output_a_class_disappears_from_small_windows(digits: Dataset) -> None:
    """At 200 events most disappearances are seen; the model still predicts some classes for other
    digits (1 and 7 keep 1.5 % and 2.5 % of the window against 7 % and 10.5 %), which is within the noise
    of a 200-event window once 23 tests are corrected for."""
    detector = OutputDriftDetector().fit(digits.reference)
    alerts = [detector.evaluate(_without_class(digits, k, 70 + k)).status is Status.ALERT for k in range(10)]
    assert sum(alerts) >= 7, alerts


def test_output_noisy_inputs(digits: Dataset) -> None:
    """Gaussian noise of 1 reference std on every pixel: the classifier gets less sure, and wrong."""
    detector = OutputDriftDetector().fit(digits.reference)
    for seed in range(5):
        rng = np.random.default_rng(110 + seed)
        ids = rng.choice(digits.held_ids, _WINDOW, replace=False)
        rows = digits.x[ids] + rng.normal(size=(_WINDOW, 64)) * digits.std
        result = detector.evaluate(digits.batch(ids, rows=rows))
        assert result.status is Status.ALERT
        confidence = result.evidence["confidence"]
        assert confidence["window_median"] < confidence["reference_median"]
        assert "confidence" in {entry["test"] for entry in result.evidence["moved"]}


def test_output_skips_windows_without_predictions(digits: Dataset) -> None:
    detector = OutputDriftDetector().fit(digits.reference)
    ids = digits.held_ids[:_WINDOW]
    bare = Batch(event_ids=[f"e{i}" for i in ids], features=[digits.features[i] for i in ids])
    assert detector.evaluate(bare).reason == "the window carries no predictions"
    small = detector.evaluate(digits.batch(ids[:29]))
    assert small.status is Status.SKIPPED and small.reason == "too few predictions: 29 < 30"


def test_output_argmax_of_scores_when_no_label(digits: Dataset) -> None:
    detector = OutputDriftDetector().fit(digits.reference)
    window = digits.clean_window(3)
    scores_only = Batch(
        event_ids=window.event_ids,
        features=window.features,
        predictions=[{"scores": p["scores"]} for p in window.predictions],
    )
    assert detector.evaluate(scores_only) == detector.evaluate(window)


# ---------------------------------------------------------------------------------------------- label_drift


def test_label_clean_window_passes(digits: Dataset) -> None:
    detector = LabelDriftDetector().fit(digits.reference)
    assert detector.resolved_task == "classification"  # "0".."9" are classes of a classifier
    result = detector.evaluate(digits.clean_window(4))
    assert result.status is Status.OK
    assert result.evidence["n_labelled"] == _WINDOW
    assert result.evidence["n_tests"] == 12


def test_label_false_alarm_rate(digits: Dataset) -> None:
    rate, skipped = _false_alarm_rate(digits, LabelDriftDetector, 24)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


@pytest.mark.parametrize("k", range(10))
def test_label_a_class_disappears(digits: Dataset, k: int) -> None:
    result = LabelDriftDetector().fit(digits.reference).evaluate(_without_class(digits, k, 80 + k))
    assert result.status is Status.ALERT
    assert result.evidence["most_changed"]["class"] == str(k)
    assert result.evidence["most_changed"]["window_share"] == 0.0
    assert ("share", str(k)) in {(entry["test"], entry["class"]) for entry in result.evidence["moved"]}


def test_label_mix_changes(digits: Dataset) -> None:
    """Prior shift: 150 events of classes 0-4 and 50 of classes 5-9 (shares 15 % and 5 % instead of 10 %)."""
    detector = LabelDriftDetector().fit(digits.reference)
    rng = np.random.default_rng(91)
    low = digits.held_ids[digits.y[digits.held_ids] < 5]
    high = digits.held_ids[digits.y[digits.held_ids] >= 5]
    for _ in range(5):
        ids = np.concatenate([rng.choice(low, 150, replace=False), rng.choice(high, 50, replace=False)])
        result = detector.evaluate(digits.batch(ids))
        assert result.status is Status.ALERT
        assert result.evidence["chi2_p_value"] < _ALPHA / result.evidence["n_tests"]


def test_label_skips_windows_with_few_labels(digits: Dataset) -> None:
    detector = LabelDriftDetector().fit(digits.reference)
    ids = digits.held_ids[:_WINDOW]
    labels = [digits.labels[i] if n < 29 else None for n, i in enumerate(ids)]
    result = detector.evaluate(digits.batch(ids, labels=labels))
    assert result.status is Status.SKIPPED
    assert result.reason == "too few labelled events: 29 < 30"
    assert result.n_events == _WINDOW


def test_label_fit_needs_labels(digits: Dataset) -> None:
    ids = digits.reference_ids
    unlabelled = digits.batch(ids, labels=[None] * len(ids))
    with pytest.raises(ValueError, match=r"the reference has 0 labelled events, at least min_labelled=30"):
        LabelDriftDetector().fit(unlabelled)


# ---------------------------------------------------------------------------------------------- performance


def _flip_labels(data: Dataset, share: float, seed: int) -> Batch:
    """200 held-out events; a random ``share`` of them get another class as their label."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(data.held_ids, _WINDOW, replace=False)
    labels = [data.labels[i] for i in ids]
    for position in rng.choice(_WINDOW, round(share * _WINDOW), replace=False):
        others = [c for c in data.classes if c != labels[position]]
        labels[position] = others[rng.integers(len(others))]
    return data.batch(ids, labels=labels)


def test_performance_clean_window_passes(digits: Dataset) -> None:
    detector = PerformanceDetector().fit(digits.reference)
    assert detector.resolved_task == "classification"
    result = detector.evaluate(digits.clean_window(5))
    assert result.status is Status.OK
    assert result.evidence["n_labelled"] == _WINDOW
    assert result.statistic == result.evidence["window_accuracy"]
    assert result.evidence["reference_accuracy"] > 0.9


def test_performance_false_alarm_rate(digits: Dataset) -> None:
    rate, skipped = _false_alarm_rate(digits, PerformanceDetector, 25)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


def test_performance_false_alarm_rate_cancer(cancer: Dataset) -> None:
    rate, skipped = _false_alarm_rate(cancer, PerformanceDetector, 26)
    assert skipped == 0
    assert rate <= _MAX_RATE, rate


@pytest.mark.parametrize("share", [0.1, 0.2])
def test_performance_label_flips_alert(digits: Dataset, share: float) -> None:
    detector = PerformanceDetector().fit(digits.reference)
    for seed in range(10):
        result = detector.evaluate(_flip_labels(digits, share, 200 + seed))
        assert result.status is Status.ALERT, result.evidence
        assert result.threshold is not None and result.statistic is not None
        assert result.statistic <= result.threshold
        growth = result.evidence["confusion_growth"]
        assert 0 < len(growth) <= 5
        assert all(entry["count"] > entry["expected"] for entry in growth)


def test_performance_from_stored_pairs_only(digits: Dataset) -> None:
    """The monitor re-tests a closed window from its stored (predicted, label) pairs."""
    detector = PerformanceDetector().fit(digits.reference)
    window = _flip_labels(digits, 0.1, 300)
    stored = Batch(
        event_ids=window.event_ids,
        features=[{} for _ in window.event_ids],
        predictions=[{"label": p["label"]} for p in window.predictions],
        labels=window.labels,
    )
    assert detector.evaluate(stored) == detector.evaluate(window)
    # A reference stored the same way gives the same detector.
    reference = digits.reference
    bare = Batch(
        event_ids=reference.event_ids,
        features=[{} for _ in reference.event_ids],
        predictions=[{"label": p["label"]} for p in reference.predictions],
        labels=reference.labels,
    )
    assert PerformanceDetector().fit(bare).state_dict()["confusion"] == detector.state_dict()["confusion"]


def test_performance_critical_accuracy_is_where_the_window_starts_alerting(digits: Dataset) -> None:
    detector = PerformanceDetector().fit(digits.reference)
    p_values = [detector.p_value(k, _WINDOW) for k in range(_WINDOW + 1)]
    assert all(a >= b for a, b in itertools.pairwise(p_values))  # more errors, smaller p
    critical = detector.critical_errors(_WINDOW)
    assert critical is not None
    assert p_values[critical] < _ALPHA <= p_values[critical - 1]


def test_performance_skips_windows_with_few_labelled_predictions(digits: Dataset) -> None:
    detector = PerformanceDetector().fit(digits.reference)
    ids = digits.held_ids[:_WINDOW]
    labels = [digits.labels[i] if n < 29 else None for n, i in enumerate(ids)]
    result = detector.evaluate(digits.batch(ids, labels=labels))
    assert result.status is Status.SKIPPED
    assert result.reason == "too few labelled events: 29 < 30"


# ---------------------------------------------------------------------------------------------- regression


class Diabetes:
    """load_diabetes (442 events, regression): a ridge model, a reference and held-out events."""

    def __init__(self) -> None:
        data = load_diabetes()
        self.x, self.y = data.data, data.target
        self.names = list(data.feature_names)
        order = np.random.default_rng(_DIABETES_SEED).permutation(len(self.x))
        self.train_ids, self.reference_ids, self.held_ids = order[:142], order[142:292], order[292:]
        self.model = Ridge(alpha=0.1).fit(self.x[self.train_ids], self.y[self.train_ids])
        self.values = self.model.predict(self.x)

    def batch(self, ids: np.ndarray, labels: np.ndarray | None = None) -> Batch:
        truth = self.y[ids] if labels is None else labels
        return Batch(
            event_ids=[f"e{i}" for i in ids],
            features=[dict(zip(self.names, map(float, self.x[i]), strict=True)) for i in ids],
            predictions=[{"value": float(self.values[i])} for i in ids],
            labels=[repr(float(t)) for t in truth],
        )


@pytest.fixture(scope="module")
def diabetes() -> Diabetes:
    return Diabetes()


def test_regression_clean_and_eroded(diabetes: Diabetes) -> None:
    reference = diabetes.batch(diabetes.reference_ids)
    held = diabetes.held_ids
    performance = PerformanceDetector().fit(reference)
    labels = LabelDriftDetector().fit(reference)
    outputs = OutputDriftDetector().fit(reference)
    assert performance.resolved_task == labels.resolved_task == "regression"
    assert outputs.n_tests == 1  # the predicted value only
    clean = diabetes.batch(held)
    for detector in (performance, labels, outputs):
        assert detector.evaluate(clean).status is Status.OK
    # Labels drawn away from the predictions: errors grow, and the label distribution moves.
    rng = np.random.default_rng(401)
    noisy = diabetes.y[held] + rng.normal(0.0, 60.0, size=len(held))
    eroded = performance.evaluate(diabetes.batch(held, noisy))
    assert eroded.status is Status.ALERT
    assert eroded.evidence["window_median_error"] > eroded.evidence["reference_median_error"]
    shifted = labels.evaluate(diabetes.batch(held, diabetes.y[held] + 40.0))
    assert shifted.status is Status.ALERT and shifted.evidence["median_shift_sd"] > 0.4
    assert shifted.threshold is not None and shifted.statistic is not None
    assert shifted.statistic > shifted.threshold


# ---------------------------------------------------------------------------------------------- statistics


def test_ks_tests_match_scipy(digits: Dataset) -> None:
    rng = np.random.default_rng(501)
    reference = np.sort(rng.normal(size=600))
    windows = [
        rng.normal(shift, 1.0, size=n) for shift, n in ((0.0, 200), (0.4, 200), (0.3, 40), (0.05, 3000))
    ]
    d, p = ks_tests([reference] * len(windows), windows, (0.0, 1.0))
    for i, window in enumerate(windows):
        expected = stats.ks_2samp(reference, window, method="exact")
        assert d[i] == pytest.approx(expected.statistic, abs=1e-12)
        assert p[i] == pytest.approx(expected.pvalue, rel=1e-9)
    # Ties (integer pixels) give the same D as scipy, too.
    pixels = digits.x[:, 20]
    ties = stats.ks_2samp(pixels[:600], pixels[600:800])
    d, _ = ks_tests([np.sort(pixels[:600])], [pixels[600:800]], (0.0, 0.0))
    assert d[0] == pytest.approx(ties.statistic, abs=1e-12)


def test_adjust_pvalues() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    assert adjust_pvalues(p, "bonferroni").tolist() == pytest.approx([0.05, 0.2, 0.15, 0.025, 1.0])
    # Benjamini-Hochberg: sorted 0.005, 0.01, 0.03, 0.04, 0.5 -> x5/1, x5/2, x5/3, x5/4, x5/5, then the
    # running minimum from the top.
    assert adjust_pvalues(p, "fdr_bh").tolist() == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])


def test_chi2_pools_rare_categories() -> None:
    # 590 reference events over 4 categories + "other"; a 200-event window with unseen ones in "other".
    # A column needs 5 * 790 / 200 = 19.75 events for expected counts >= 5: the rare category (16) goes to
    # the pool with "other" (14), which is then large enough.
    result = chi2_homogeneity([300, 200, 80, 10, 0], [100, 60, 20, 6, 14], pooled=[4])
    assert result.groups == ((0,), (1,), (2,), (3, 4))
    assert result.dof == 3
    table = np.array([[300, 200, 80, 10], [100, 60, 20, 20]])
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)


def test_results_are_detection_results(digits: Dataset) -> None:
    for cls in _DRIFT_CLASSES:
        result = cls().fit(digits.reference).evaluate(digits.clean_window(6))
        assert isinstance(result, DetectionResult)
        assert result.detector == cls.id and result.n_events == _WINDOW
