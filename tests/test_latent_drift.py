"""Tests of :class:`detectors.drift.latent.LatentDriftDetector` on real data shipped with scikit-learn.

load_digits (1,797 8x8 images, 64 pixel features) and load_breast_cancer (569 tumours, 30 features) are split
with seeded permutations into a reference and a disjoint held-out part; clean windows are drawn from the
held-out part, shifted windows are held-out events with a documented change. The data are never tuned to the
tests: where the detector misses a shift the brief asked it to catch, the test says so (``xfail``) with the
measured rate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_digits

from detectors.anomaly import VAEAnomalyDetector
from detectors.base import Batch, NotFittedError, Status, Threat
from detectors.drift.latent import GaussianRBF, LatentDriftDetector
from detectors.state import dump_state, load_state

# Seeds of the data splits, different from the detector's seed (0) on purpose.
_DIGITS_SEED = 20_240_611
_CANCER_SEED = 20_240_612
_ALPHA = 0.01
_WINDOW = 200

# alibi-detect logs "No GPU detected" for every detector it builds.
logging.getLogger("alibi_detect").setLevel(logging.ERROR)


class Dataset:
    """A scikit-learn data set with a seeded split into a reference and a held-out part."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_reference: int, seed: int) -> None:
        self.x, self.y = x, y
        self.names = [f"f{j:02d}" for j in range(x.shape[1])]
        order = np.random.default_rng(seed).permutation(len(x))
        self.reference_ids, self.held_ids = order[:n_reference], order[n_reference:]
        self.reference_std = x[self.reference_ids].std(axis=0)

    def batch(self, ids: Sequence[int] | np.ndarray, rows: np.ndarray | None = None) -> Batch:
        rows = self.x[np.asarray(ids)] if rows is None else rows
        return Batch(
            event_ids=[f"e{i}" for i in ids],
            features=[dict(zip(self.names, row, strict=True)) for row in rows.tolist()],
        )

    @property
    def reference(self) -> Batch:
        return self.batch(self.reference_ids)

    def noisy(self, rng: np.random.Generator, size: int, scale: float) -> Batch:
        """``size`` held-out events with N(0, (scale * reference std)^2) noise on a random half of the
        features (the same half for every event: a degraded input channel)."""
        ids = rng.choice(self.held_ids, size, replace=False)
        features = rng.choice(self.x.shape[1], self.x.shape[1] // 2, replace=False)
        rows = self.x[ids].copy()
        rows[:, features] += (
            rng.normal(0.0, 1.0, (size, features.size)) * scale * self.reference_std[features]
        )
        return self.batch(ids, rows)

    def without_class(self, rng: np.random.Generator, label: int, size: int) -> Batch:
        """``size`` held-out events (or all there are) none of which belongs to class ``label``."""
        kept = self.held_ids[self.y[self.held_ids] != label]
        return self.batch(rng.choice(kept, min(size, kept.size), replace=False))


def _digits(seed: int = _DIGITS_SEED) -> Dataset:
    data = load_digits()
    return Dataset(data.data, data.target, 1000, seed)


def _cancer(seed: int = _CANCER_SEED) -> Dataset:
    data = load_breast_cancer()
    return Dataset(data.data, data.target, 369, seed)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return _digits()


@pytest.fixture(scope="module")
def digits_detector(digits: Dataset) -> LatentDriftDetector:
    return LatentDriftDetector().fit(digits.reference)


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return _cancer()


@pytest.fixture(scope="module")
def cancer_detector(cancer: Dataset) -> LatentDriftDetector:
    return LatentDriftDetector().fit(cancer.reference)


def _alert_bound(n_windows: int, alpha: float = _ALPHA) -> int:
    """The most false alarms among ``n_windows`` independent clean windows that a level-``alpha`` test gives
    with probability 0.999."""
    return int(stats.binom.isf(0.001, n_windows, alpha))


# ---------------------------------------------------------------------------------------------- clean data


@pytest.mark.parametrize(
    ("make", "splits", "per_split", "size"),
    [(_digits, 3, 20, _WINDOW), (_cancer, 5, 12, 100)],
    ids=["digits", "breast_cancer"],
)
def test_clean_windows_pass(make: Callable[[int], Dataset], splits: int, per_split: int, size: int) -> None:
    """Held-out windows, over several reference splits (the guarantee is over the reference sample too)."""
    results = []
    for split in range(splits):
        data = make(1_000 + split)
        detector = LatentDriftDetector().fit(data.reference)
        rng = np.random.default_rng(split)
        for _ in range(per_split):
            results.append(detector.evaluate(data.batch(rng.choice(data.held_ids, size, replace=False))))
    assert all(r.status is not Status.SKIPPED for r in results)
    alerts = sum(r.alerting for r in results)
    # With the default 100 permutations the exact size of the test is 1/101.
    assert alerts <= _alert_bound(len(results)), f"{alerts} false alarms in {len(results)} clean windows"
    p_values = np.array([r.p_value for r in results])
    assert 0.3 < np.median(p_values) < 0.7, np.median(p_values)  # roughly uniform under no drift


def test_result_fields(digits: Dataset, digits_detector: LatentDriftDetector) -> None:
    window = digits.batch(digits.held_ids[:_WINDOW])
    result = digits_detector.evaluate(window)
    assert result.detector == "latent_drift" and result.threat is Threat.DRIFT
    assert result.n_events == _WINDOW and result.reason is None
    evidence = result.evidence
    assert set(evidence) >= {"mmd2", "critical_mmd2", "n_reference", "n_window", "latent_dim", "sigma"}
    assert evidence["n_reference"] == 1000 and evidence["n_window"] == _WINDOW
    assert evidence["latent_dim"] == digits_detector.encoder.latent_dim == 8
    assert evidence["sigma"] == digits_detector.sigma > 0
    assert result.statistic == evidence["mmd2"] and result.threshold == evidence["critical_mmd2"]
    permutations = evidence["n_permutations"]
    assert permutations == digits_detector.permutations == 100
    assert result.p_value == (evidence["n_exceeding"] + 1) / (permutations + 1)
    assert evidence["share_exceeding"] == evidence["n_exceeding"] / permutations
    # The threshold is the decision boundary: alert iff the MMD^2 is above it.
    assert result.alerting == (result.statistic > result.threshold)
    json.dumps(dict(evidence))


# ---------------------------------------------------------------------------------------------- shifts


def test_a_disappearing_class_alerts_on_breast_cancer(
    cancer: Dataset, cancer_detector: LatentDriftDetector
) -> None:
    """Windows of only benign (about 125 held-out events) or only malignant (about 75) tumours."""
    rng = np.random.default_rng(7)
    for label in (0, 1):
        window = cancer.without_class(rng, label, _WINDOW)
        result = cancer_detector.evaluate(window)
        assert result.alerting, (label, len(window), result.p_value)
        assert result.statistic is not None and result.threshold is not None
        assert result.statistic > 3 * result.threshold


def test_a_disappearing_digit_is_detected_well_above_the_false_alarm_rate(
    digits: Dataset, digits_detector: LatentDriftDetector
) -> None:
    """One of ten digit classes missing from 200-event windows: a 10 % change of the mix, a weak shift for
    the latent MMD (label_drift and output_drift are the detectors that catch it for sure). Measured here:
    5 of 30 windows alert at 200 events, 21 of 30 at 500 (clean windows: 0 of 120 in the tests above)."""
    rng = np.random.default_rng(11)
    rates = {}
    for size in (_WINDOW, 500):
        results = [
            digits_detector.evaluate(digits.without_class(rng, label, size))
            for label in range(10)
            for _ in range(3)
        ]
        rates[size] = sum(r.alerting for r in results)
    # Far more alerts than 30 clean windows give: significant at 0.1 % against the test's size, 1/101.
    assert stats.binom.sf(rates[_WINDOW] - 1, 30, 1 / 101) < 1e-3, rates
    assert rates[500] >= 15, rates


@pytest.mark.xfail(
    strict=True,
    reason="the brief asks for alerts at 200 events; measured: 0 of these 10 windows alert (1 of 15 digits "
    "and 0 of 25 breast cancer windows in a wider run). The encoder's posterior mean averages such noise "
    "away: in an exploratory run alibi's MMDDrift on the raw 64 pixels flagged 10 of 30 such windows, "
    "on the latent codes 1 of 30.",
)
def test_half_a_standard_deviation_of_noise_alerts(
    digits: Dataset, digits_detector: LatentDriftDetector
) -> None:
    rng = np.random.default_rng(13)
    results = [digits_detector.evaluate(digits.noisy(rng, _WINDOW, 0.5)) for _ in range(10)]
    assert sum(r.alerting for r in results) >= 8


def test_strong_noise_alerts(digits: Dataset, digits_detector: LatentDriftDetector) -> None:
    """Two reference standard deviations of noise on half the pixels: every window alerts."""
    rng = np.random.default_rng(17)
    for _ in range(5):
        assert digits_detector.evaluate(digits.noisy(rng, _WINDOW, 2.0)).alerting


# ---------------------------------------------------------------------------------------------- mechanics


def test_skips_small_windows(digits: Dataset, digits_detector: LatentDriftDetector) -> None:
    small = digits_detector.evaluate(digits.batch(digits.held_ids[:49]))
    assert small.status is Status.SKIPPED and small.reason == "too few events: 49 < 50"
    assert small.n_events == 49 and small.p_value is None
    assert digits_detector.evaluate(digits.batch(digits.held_ids[:50])).status is not Status.SKIPPED
    no_features = Batch(event_ids=[f"x{i}" for i in range(60)], features=())
    assert digits_detector.evaluate(no_features).reason == "the window carries no features"


def test_not_fitted() -> None:
    detector = LatentDriftDetector()
    assert not detector.fitted
    with pytest.raises(NotFittedError):
        detector.evaluate(Batch(event_ids=["a"], features=[{"x": 1.0}]))
    with pytest.raises(NotFittedError):
        detector.state_dict()


def test_state_round_trip_is_identical(digits: Dataset, digits_detector: LatentDriftDetector) -> None:
    state = load_state(dump_state(digits_detector.state_dict()))
    twin = LatentDriftDetector(**json.loads(json.dumps(digits_detector.get_params()))).load_state_dict(state)
    rng = np.random.default_rng(19)
    windows = [digits.batch(digits.held_ids[:_WINDOW]), digits.without_class(rng, 3, _WINDOW)]
    for window in windows:
        assert twin.evaluate(window) == digits_detector.evaluate(window)
    assert dump_state(twin.state_dict()) == dump_state(digits_detector.state_dict())
    np.testing.assert_array_equal(twin.reference_latent, digits_detector.reference_latent)


def test_load_state_rejects_mismatches(cancer: Dataset, cancer_detector: LatentDriftDetector) -> None:
    state = cancer_detector.state_dict()
    with pytest.raises(ValueError, match="version"):
        LatentDriftDetector().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        LatentDriftDetector().load_state_dict({k: v for k, v in state.items() if k != "log_sigma"})
    with pytest.raises(ValueError, match="reference codes have shape"):
        LatentDriftDetector(max_reference=100).load_state_dict(state)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentDriftDetector(vae={"latent_dim": 4}).load_state_dict(state)


def test_same_seed_same_results(cancer: Dataset, cancer_detector: LatentDriftDetector) -> None:
    twin = LatentDriftDetector().fit(cancer.reference)
    assert dump_state(twin.state_dict()) == dump_state(cancer_detector.state_dict())
    window = cancer.batch(cancer.held_ids[:100])
    first = cancer_detector.evaluate(window)
    assert twin.evaluate(window) == first == cancer_detector.evaluate(window)
    # The inner VAE is the monitor's vae_anomaly with the same parameters: same weights.
    vae = VAEAnomalyDetector().fit(cancer.reference)
    assert dump_state(vae.state_dict()) == dump_state(twin.encoder.state_dict())
    # Another seed draws other permutations (and another reference subsample, if any).
    other = LatentDriftDetector(seed=1).load_state_dict(cancer_detector.state_dict()).evaluate(window)
    assert other.statistic == first.statistic and other.threshold != first.threshold


def test_subsampling_bounds_both_sides(cancer: Dataset) -> None:
    detector = LatentDriftDetector(max_reference=150, max_window=80, vae={"max_epochs": 20}).fit(
        cancer.reference
    )
    assert detector.reference_latent.shape == (150, 8)
    window = cancer.batch(cancer.held_ids)
    result = detector.evaluate(window)
    assert result.n_events == 200 and result.evidence["n_window"] == 80
    assert result.evidence["n_reference"] == 150
    assert detector.evaluate(window) == result
    assert detector.state_dict()["n_reference_events"] == 369


# ---------------------------------------------------------------------------------------------- alibi


@pytest.mark.parametrize("same", [True, False], ids=["x is y", "x and y differ"])
def test_kernel_is_alibis_gaussian_rbf_to_the_bit(same: bool) -> None:
    # The detector computes alibi's kernel itself (importing alibi-detect costs every daemon ~220 MiB): the
    # bandwidth it infers and the matrices it gives must be alibi's exactly, in float64 as the detector runs.
    from alibi_detect.utils.pytorch.kernels import GaussianRBF as AlibiGaussianRBF

    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(size=(300, 8)))
    y = x if same else torch.from_numpy(rng.normal(0.5, 1.3, size=(200, 8)))
    ours, theirs = GaussianRBF(), AlibiGaussianRBF()
    with torch.no_grad():
        assert torch.equal(ours(x, y, infer_sigma=True), theirs(x, y, infer_sigma=True))
        assert torch.equal(ours.log_sigma, theirs.log_sigma.detach())
        z = torch.from_numpy(rng.normal(size=(50, 8)))
        assert torch.equal(ours(x, z), theirs(x, z))  # with the inferred bandwidth kept


def test_same_test_as_alibi_mmd_drift(cancer: Dataset) -> None:
    """For the same codes and torch seed: alibi's MMD^2, kernel bandwidth, p_val and thresholds.

    alibi draws its permutations from torch's global generator; seeding it and the detector's local generator
    alike reproduces its permutation order, so the permutation distributions must coincide (alibi rounds the
    permuted values to float32: hence the tolerance). Its ``distance_threshold`` is the
    ``int(p_val * n_permutations)``-th largest permuted MMD^2: probing several ``p_val`` checks several
    order statistics.
    """
    from alibi_detect.cd import MMDDrift

    detector = LatentDriftDetector(max_reference=200, vae={"max_epochs": 30}).fit(cancer.reference)
    reference = detector.reference_latent
    rng = np.random.default_rng(23)
    windows = [
        detector.encoder.encode_latent(cancer.batch(rng.choice(cancer.held_ids, 60, replace=False))),
        detector.encoder.encode_latent(cancer.without_class(rng, 0, 60)),
    ]
    for p_val in (0.01, 0.2, 0.5):
        alibi = MMDDrift(reference, backend="pytorch", p_val=p_val, n_permutations=100)
        assert float(alibi._detector.kernel.sigma) == detector.sigma
        for index, latent in enumerate(windows):
            for seed in (0, 1) if p_val == 0.01 else (index,):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    expected = alibi.predict(latent)["data"]
                ours = detector.permutation_test(latent, torch.Generator().manual_seed(seed))
                assert ours.mmd2 == pytest.approx(expected["distance"], rel=1e-9, abs=1e-12)
                assert ours.share_exceeding == pytest.approx(expected["p_val"], abs=1e-6)
                descending = np.sort(ours.permuted)[::-1]
                threshold = descending[int(p_val * 100)]
                assert threshold == pytest.approx(expected["distance_threshold"], rel=1e-6, abs=1e-9)
    # The shifted window is drift for both; the clean one for neither.
    assert detector.permutation_test(windows[1], torch.Generator().manual_seed(0)).n_exceeding == 0
    assert detector.permutation_test(windows[0], torch.Generator().manual_seed(0)).n_exceeding > 10


# ---------------------------------------------------------------------------------------------- parameters


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 0.5\)"):
        LatentDriftDetector(alpha=0.5)
    with pytest.raises(TypeError, match="alpha must be a number"):
        LatentDriftDetector(alpha="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n_permutations must be >= 99 for alpha=0.01"):
        LatentDriftDetector(n_permutations=50)
    with pytest.raises(ValueError, match="min_events must be >= 2"):
        LatentDriftDetector(min_events=1)
    with pytest.raises(ValueError, match="max_window must be >= 50"):
        LatentDriftDetector(max_window=20)
    with pytest.raises(TypeError, match="max_reference must be an int"):
        LatentDriftDetector(max_reference=True)
    with pytest.raises(TypeError, match=r"^vae: .*unexpected keyword argument 'depth'"):
        LatentDriftDetector(vae={"depth": 3})
    with pytest.raises(ValueError, match=r"^vae: latent_dim must be >= 1"):
        LatentDriftDetector(vae={"latent_dim": 0})


def test_permutations_follow_alpha() -> None:
    assert LatentDriftDetector().permutations == 100
    assert LatentDriftDetector(alpha=0.05, n_permutations=19).permutations == 19
    # The monitor splits its 1 % budget over six detectors: 1/(n + 1) <= 0.01/6 needs 599 permutations.
    detector = LatentDriftDetector(alpha=0.01 / 6)
    assert detector.permutations == 599 and detector.get_params()["n_permutations"] is None
    assert LatentDriftDetector(alpha=0.001).permutations == 999
    params = LatentDriftDetector(vae={"latent_dim": 4}).get_params()
    assert params["vae"]["latent_dim"] == 4 and params["vae"]["hidden_dim"] == 64
    assert json.loads(json.dumps(params)) == params
    assert LatentDriftDetector(**params).get_params() == params
