"""Tests of :class:`detectors.anomaly.VAEAnomalyDetector` on real data shipped with scikit-learn.

load_digits (1,797 8x8 images, 64 pixel features 0..16) is split once, with a seeded permutation, into a
1,000-event reference and 797 held-out events that the detector never sees while fitting. Clean windows
are drawn from the held-out events; corrupted windows are held-out events with a documented corruption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_digits

from detectors.anomaly import VAEAnomalyDetector
from detectors.base import Batch, NotFittedError, Status, Threat
from detectors.state import dump_state, load_state

# Seeds of the data splits. They differ from the detector's own seed (0) on purpose: numpy permutations
# drawn with the same seed are correlated, which would make the detector's internal split a non-random
# function of the test's split.
_DIGITS_SPLIT_SEED = 20_240_601
_CANCER_SPLIT_SEED = 20_240_602
_WINDOW = 200


def _batch(rows: np.ndarray, ids: Sequence[int] | np.ndarray, names: Sequence[str]) -> Batch:
    """Events ``e<id>`` with one float feature per column."""
    return Batch(
        event_ids=[f"e{i}" for i in ids],
        features=[dict(zip(names, map(float, row), strict=True)) for row in rows.tolist()],
    )


class Digits:
    """load_digits, split into a reference and a disjoint held-out part."""

    def __init__(self) -> None:
        self.x = load_digits().data
        self.names = [f"px{j}" for j in range(64)]
        order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(self.x))
        self.reference_ids, self.held_ids = order[:1000], order[1000:]
        self.reference_std = self.x[self.reference_ids].std(axis=0)

    def batch(self, ids: np.ndarray, rows: np.ndarray | None = None) -> Batch:
        return _batch(self.x[ids] if rows is None else rows, ids, self.names)

    @property
    def reference(self) -> Batch:
        return self.batch(self.reference_ids)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


@pytest.fixture(scope="module")
def fitted(digits: Digits) -> tuple[VAEAnomalyDetector, float]:
    """A detector fitted with default parameters on the digits reference, and its fit time in seconds."""
    start = time.perf_counter()
    detector = VAEAnomalyDetector().fit(digits.reference)
    return detector, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- digits


def test_fit_is_calibrated(fitted: tuple[VAEAnomalyDetector, float]) -> None:
    # (How long the fit takes is measured in bench/perf_detectors.py, not asserted here.)
    detector, _ = fitted
    assert detector.fitted
    # 200 calibration events; p0 is the conformal share (#above + 1) / (200 + 1).
    state = detector.state_dict()
    calibration = state["calibration_scores"]
    assert calibration.shape == (200,)
    assert detector.score_threshold == np.quantile(calibration, 0.99)
    n_above = int(np.count_nonzero(calibration > detector.score_threshold))
    assert detector.expected_share == (n_above + 1) / 201
    assert state["training"]["best_epoch"] >= 1


def test_clean_windows_pass(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    rng = np.random.default_rng(1)
    results = [
        detector.evaluate(digits.batch(rng.choice(digits.held_ids, _WINDOW, replace=False)))
        for _ in range(10)
    ]
    passed = sum(result.status is Status.OK for result in results)
    assert passed >= 9, [(r.statistic, r.p_value) for r in results]
    for result in results:
        assert result.n_events == _WINDOW
        # The most anomalous events are reported for passing windows too.
        assert len(result.event_scores) == 10


def _shifted_half(digits: Digits) -> tuple[Batch, set[str]]:
    """200 held-out events; a random half gets +4 reference standard deviations on 8 random pixels."""
    rng = np.random.default_rng(2)
    ids = digits.held_ids[:_WINDOW]
    varying = np.flatnonzero(digits.reference_std > 0)  # some border pixels are always 0
    pixels = rng.choice(varying, 8, replace=False)
    corrupted = rng.choice(_WINDOW, _WINDOW // 2, replace=False)
    rows = digits.x[ids].copy()
    rows[np.ix_(corrupted, pixels)] += 4 * digits.reference_std[pixels]
    return digits.batch(ids, rows), {f"e{ids[i]}" for i in corrupted}


def _noisy_half(digits: Digits) -> tuple[Batch, set[str]]:
    """200 held-out events; a random half is replaced by uniform noise on the pixel range 0..16."""
    rng = np.random.default_rng(3)
    ids = digits.held_ids[_WINDOW : 2 * _WINDOW]
    corrupted = rng.choice(_WINDOW, _WINDOW // 2, replace=False)
    rows = digits.x[ids].copy()
    rows[corrupted] = rng.uniform(0.0, 16.0, size=(len(corrupted), 64))
    return digits.batch(ids, rows), {f"e{ids[i]}" for i in corrupted}


@pytest.mark.parametrize("corrupt", [_shifted_half, _noisy_half], ids=["shift_4sd_8px", "uniform_noise"])
def test_corrupted_windows_alert_and_name_the_corrupted_events(
    digits: Digits, fitted: tuple[VAEAnomalyDetector, float], corrupt: object
) -> None:
    detector, _ = fitted
    window, corrupted = corrupt(digits)  # type: ignore[operator]
    result = detector.evaluate(window)
    assert result.status is Status.ALERT
    assert result.p_value is not None and result.p_value < detector.alpha
    assert result.statistic is not None and result.statistic >= 0.4  # about half the window
    top = [event["event_id"] for event in result.evidence["top_events"]]
    assert len(top) == 10
    assert sum(event_id in corrupted for event_id in top) >= 9, top


def test_result_fields_are_consistent(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    window = digits.batch(digits.held_ids[:_WINDOW])
    result = detector.evaluate(window)
    scores = detector.score(window)
    k = int(np.count_nonzero(scores > detector.score_threshold))
    assert result.detector == "vae_anomaly" and result.threat is Threat.ROBUSTNESS
    assert result.statistic == k / _WINDOW
    assert result.evidence["anomalous"] == k
    assert result.evidence["expected_share"] == detector.expected_share
    assert result.evidence["score_threshold"] == detector.score_threshold
    # threshold is the critical share: the smallest share whose p-value is below alpha.
    critical = result.evidence["critical_count"]
    assert result.threshold == critical / _WINDOW
    assert detector.tail_probability(critical, _WINDOW) < detector.alpha
    assert detector.tail_probability(critical - 1, _WINDOW) >= detector.alpha
    assert result.p_value == pytest.approx(float(detector.tail_probability(k, _WINDOW)))
    assert (result.status is Status.ALERT) == (k >= critical)
    # Top events: highest scores first, same in evidence and event_scores.
    order = np.argsort(-scores, kind="stable")[:10]
    assert [e.event_id for e in result.event_scores] == [window.event_ids[i] for i in order]
    assert [e.score for e in result.event_scores] == [float(scores[i]) for i in order]
    assert result.evidence["top_events"] == [
        {"event_id": e.event_id, "score": e.score} for e in result.event_scores
    ]


def test_binomial_window_test_uses_p0_as_is(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    params = {**detector.get_params(), "window_test": "binomial"}
    binomial = VAEAnomalyDetector(**params).load_state_dict(detector.state_dict())
    window, _ = _noisy_half(digits)
    result = binomial.evaluate(window)
    k = result.evidence["anomalous"]
    assert result.p_value == pytest.approx(stats.binom.sf(k - 1, _WINDOW, detector.expected_share), rel=1e-9)
    # The beta-binomial test is the more cautious one: it needs at least as many anomalous events.
    assert detector.critical_count(_WINDOW) >= binomial.critical_count(_WINDOW)  # type: ignore[operator]


def test_small_window_is_skipped(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    result = detector.evaluate(digits.batch(digits.held_ids[:12]))
    assert result.status is Status.SKIPPED
    assert result.reason == "too few events: 12 < 20"
    assert result.n_events == 12
    assert detector.evaluate(digits.batch(digits.held_ids[:0])).reason == "too few events: 0 < 20"


def test_small_reference_is_refused(digits: Digits) -> None:
    with pytest.raises(ValueError, match=r"50 events, at least min_reference=100"):
        VAEAnomalyDetector().fit(digits.batch(digits.reference_ids[:50]))


def test_fit_is_deterministic(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    again = VAEAnomalyDetector().fit(digits.reference)
    assert again.score_threshold == detector.score_threshold
    window = digits.batch(digits.held_ids)
    np.testing.assert_array_equal(again.score(window), detector.score(window))


def test_save_and_load_give_bit_identical_scores(
    digits: Digits, fitted: tuple[VAEAnomalyDetector, float]
) -> None:
    detector, _ = fitted
    restored = VAEAnomalyDetector(**detector.get_params()).load_state_dict(
        load_state(dump_state(detector.state_dict()))
    )
    window, _ = _noisy_half(digits)
    assert restored.score(window).tobytes() == detector.score(window).tobytes()
    assert restored.encode_latent(window).tobytes() == detector.encode_latent(window).tobytes()
    assert restored.evaluate(window) == detector.evaluate(window)


def test_load_refuses_a_state_of_another_configuration(fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    state = detector.state_dict()
    with pytest.raises(ValueError, match="latent_dim"):
        VAEAnomalyDetector(latent_dim=4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"quantile=0\.99"):
        VAEAnomalyDetector(quantile=0.95).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        VAEAnomalyDetector().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        VAEAnomalyDetector().load_state_dict({k: v for k, v in state.items() if k != "weights"})
    weights = dict(state["weights"])
    weights["mean.weight"] = weights["mean.weight"][:, :3]
    with pytest.raises(ValueError, match="do not fit the network"):
        VAEAnomalyDetector().load_state_dict({**state, "weights": weights})


def test_encode_latent(digits: Digits, fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    latent = detector.encode_latent(digits.batch(digits.held_ids[:30]))
    assert latent.shape == (30, 8)
    assert latent.dtype == np.float64
    assert np.isfinite(latent).all()


def test_malformed_events_are_scored_not_crashed(fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    window = Batch(
        event_ids=["missing", "string", "unknown_key", "huge"],
        features=[{}, {"px10": "dark"}, {"colour": "red"}, {"px10": 1e300}],
    )
    scores = detector.score(window)
    assert scores.shape == (4,)
    assert np.isfinite(scores).all()


def test_large_windows_are_scored_in_chunks(
    digits: Digits, fitted: tuple[VAEAnomalyDetector, float]
) -> None:
    detector, _ = fitted
    ids = np.resize(digits.held_ids, 10_000)  # the held-out events, repeated
    window = Batch(
        event_ids=[f"r{i}" for i in range(10_000)],
        features=digits.batch(ids).features,
    )
    result = detector.evaluate(window)
    assert result.status is not Status.SKIPPED
    # Chunked scoring (8,192 rows per chunk) agrees with scoring the events on their own.
    scores = detector.score(window)
    alone = detector.score(digits.batch(digits.held_ids))
    np.testing.assert_allclose(scores[: len(alone)], alone, rtol=1e-5)
    np.testing.assert_allclose(scores[8192 : 8192 + 100], scores[8192 % len(alone) :][:100], rtol=1e-5)
    # The tail probabilities are a decreasing survival function from 1.
    tails = detector.tail_probabilities(10_000)
    assert tails[0] == 1.0 and np.all(np.diff(tails) <= 0)


def test_window_without_features_is_skipped(fitted: tuple[VAEAnomalyDetector, float]) -> None:
    detector, _ = fitted
    result = detector.evaluate(Batch(event_ids=[f"e{i}" for i in range(30)], features=[]))
    assert result.status is Status.SKIPPED
    assert result.reason == "the window carries no features"


def test_unfitted_detector_refuses_to_work(digits: Digits) -> None:
    detector = VAEAnomalyDetector()
    assert not detector.fitted
    window = digits.batch(digits.held_ids[:30])
    with pytest.raises(NotFittedError):
        detector.evaluate(window)
    with pytest.raises(NotFittedError):
        detector.score(window)
    with pytest.raises(NotFittedError):
        detector.state_dict()


# ---------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"quantile": 0.3}, r"quantile must be in \[0.5, 0.9999\]"),
        ({"quantile": 1.0}, r"quantile must be in \[0.5, 0.9999\]"),
        ({"alpha": 0.0}, r"alpha must be in \(0.0, 0.5\)"),
        ({"alpha": 0.5}, r"alpha must be in \(0.0, 0.5\)"),
        ({"alpha": math.nan}, r"alpha must be in"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
        ({"min_reference": 5}, "min_reference must be >= 10"),
        ({"learning_rate": 0.0}, r"learning_rate must be in \(0.0, 1.0\]"),
        ({"beta": -1.0}, r"beta must be in \[0.0, 100.0\]"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"window_test": "exact"}, "window_test must be one of 'beta_binomial', 'binomial'"),
    ],
)
def test_invalid_parameters_name_the_valid_range(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VAEAnomalyDetector(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{"latent_dim": 2.5}, {"max_epochs": True}, {"alpha": "0.01"}])
def test_parameters_of_the_wrong_type_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        VAEAnomalyDetector(**params)  # type: ignore[arg-type]


def test_positional_parameters_are_refused() -> None:
    with pytest.raises(TypeError):
        VAEAnomalyDetector(8)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------- breast cancer


def test_breast_cancer_clean_passes_and_shift_alerts() -> None:
    data = load_breast_cancer()
    names = [name.replace(" ", "_") for name in data.feature_names]
    rng = np.random.default_rng(_CANCER_SPLIT_SEED)
    order = rng.permutation(len(data.data))
    reference_ids, held_ids = order[:369], order[369:]  # 200 held-out events
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    detector = VAEAnomalyDetector().fit(_batch(data.data[reference_ids], reference_ids, names))
    # Fitting leaves the process's torch settings as it found them.
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)

    clean = detector.evaluate(_batch(data.data[held_ids], held_ids, names))
    assert clean.status is Status.OK

    # +4 reference standard deviations on 8 of the 30 features, for every event of the window.
    std = data.data[reference_ids].std(axis=0)
    features = rng.choice(30, 8, replace=False)
    rows = data.data[held_ids].copy()
    rows[:, features] += 4 * std[features]
    shifted = detector.evaluate(_batch(rows, held_ids, names))
    assert shifted.status is Status.ALERT
    assert shifted.p_value is not None and shifted.p_value < detector.alpha
    assert shifted.statistic is not None and clean.statistic is not None
    assert shifted.statistic > 0.5 > clean.statistic
