"""Multivariate drift of the VAE latent codes: an MMD two-sample permutation test.

The encoder of a VAE trained on the reference is the dimension reduction, and the kernel maximum mean
discrepancy (MMD) between the reference's and the window's latent codes is the test statistic: the
"autoencoder + MMD" detector of Rabanser, Günnemann and Lipton, *Failing Loudly* (NeurIPS 2019). The inner
network is a :class:`~detectors.anomaly.VAEAnomalyDetector` (same seed and parameters as the monitor's
``vae_anomaly`` give identical weights); the codes are its posterior means (``encode_latent``).

The test is alibi-detect's ``MMDDrift`` on its PyTorch backend (``MMDDriftTorch``), computed in a way that
does less work per window:

* ``fit`` encodes the reference (at most ``max_reference`` codes, seeded subsample), infers the bandwidth of
  alibi's Gaussian kernel (:class:`GaussianRBF` here, the same computation without importing alibi-detect)
  on it with the median heuristic (exactly what ``configure_kernel_from_x_ref=True`` does) and keeps the
  reference block ``K_xx`` of the kernel matrix, its row sums and its total;
* ``evaluate`` computes only ``K_xy`` and ``K_yy``. The statistic is alibi's unbiased MMD^2 of the
  zero-diagonal kernel matrix, ``sum(K_xx)/(n(n-1)) + sum(K_yy)/(m(m-1)) - 2 mean(K_xy)``. The permutations
  are alibi's too (``torch.randperm`` of the ``n + m`` pooled codes, the first ``n`` form the "reference"),
  but instead of gathering a permuted copy of the ``(n + m)^2`` matrix for each one, a batch of permutations
  is one matrix product: with ``a`` the 0/1 indicator of the permuted window group, ``a^T K a``,
  ``a^T K 1 - a^T K a`` and the cached totals give the three block sums. For the same generator state the
  permuted MMD^2 values are alibi's (``tests/test_latent_drift.py`` checks this against
  ``MMDDrift.predict``).

The p-value. alibi reports ``p_val = #(permuted MMD^2 >= observed) / n_permutations`` and flags drift when
``p_val < p_val_threshold``, with the share computed in float32: with 100 permutations and
``p_val=0.01``, one exceeding permutation gives ``float32(0.01) = 0.0099999998 < 0.01``, so alibi flags
drift when at most one permutation exceeds, a test of size 2/101, twice the nominal 1 %. This detector
reports the Monte-Carlo permutation p-value ``(#exceeding + 1) / (n_permutations + 1)`` (Phipson and Smyth,
2010) and alerts when it is ``<= alpha``. It is never 0 (the monitor reads a tiny p-value as overwhelming
evidence), and under the null hypothesis ``P(p <= alpha) <= alpha`` exactly, for any number of permutations.
With the defaults (``alpha=0.01``, 100 permutations) a window alerts when no permutation reaches its MMD^2.
alibi's share is kept in the evidence (``share_exceeding``). Since the smallest possible p-value is
``1 / (n_permutations + 1)``, ``alpha`` is only attainable with at least ``1/alpha - 1`` permutations;
``n_permutations=None`` (the default) takes ``max(100, that number)``: 100 for ``alpha >= 1/101``, 599 for
``alpha = 0.01 / 6`` (the monitor's default 1 % budget split over six detectors).

Permutations and window subsamples are seeded from ``seed`` and the window's event ids, so one window always
gives the same result and different windows get independent permutations.

Reference codes. All reference events are encoded, including those the VAE was trained on; codes of training
events could in principle sit closer together than codes of new events (an overfitted encoder), which would
make clean windows look drifted. With early stopping this was not measurable: over 30 reference splits of
load_breast_cancer and 10 of load_digits, the MMD p-values of training codes against the VAE's held-out
codes were spread like uniform ones, and using only held-out codes (40 % of the reference) halved the
detection rate of a disappearing digit class.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch

from detectors._checks import check_int
from detectors.anomaly.vae import VAEAnomalyDetector, inner_vae_params
from detectors.base import Batch, DetectionResult, Detector, Threat
from detectors.state import DetectorState, Float32Array, Float64Array

__all__ = ["GaussianRBF", "LatentDriftDetector", "LatentDriftState", "MMDPermutationTest"]


class GaussianRBF:
    """The Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` of alibi-detect's
    :class:`~alibi_detect.utils.pytorch.kernels.GaussianRBF`, with its median-heuristic bandwidth, operation
    for operation (float32 ``log_sigma``, squared distances clamped at 1e-30), so that the test is alibi's
    to the last bit (``tests/test_latent_drift.py`` compares the two).

    Written out here rather than imported: importing ``alibi_detect`` loads scikit-learn, pandas and numba,
    about 220 MiB of resident memory and seconds of start-up in every daemon process, for twenty lines.
    """

    def __init__(self) -> None:
        self.log_sigma = torch.empty(1, dtype=torch.float32)
        self.init_required = True

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    @staticmethod
    def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pairwise squared Euclidean distances, shape ``(len(x), len(y))``, clamped below at 1e-30."""
        x2 = x.pow(2).sum(dim=-1, keepdim=True)
        y2 = y.pow(2).sum(dim=-1, keepdim=True)
        return torch.addmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x2).clamp_min_(1e-30)

    @staticmethod
    def median_sigma(x: torch.Tensor, y: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """The median heuristic: sqrt(median / 2) of the distances, the zero diagonal left out when x is y."""
        n = min(x.shape[0], y.shape[0])
        n = n if x.shape == y.shape and bool((x[:n] == y[:n]).all()) else 0
        n_median = n + (distances.numel() - n) // 2 - 1
        return (0.5 * distances.flatten().sort().values[n_median].unsqueeze(dim=-1)) ** 0.5

    def __call__(self, x: torch.Tensor, y: torch.Tensor, infer_sigma: bool = False) -> torch.Tensor:
        """The kernel matrix ``(len(x), len(y))``; ``infer_sigma`` (or a first call) sets the bandwidth."""
        distances = self.squared_distances(x.flatten(1), y.flatten(1))
        if infer_sigma or self.init_required:
            self.log_sigma.copy_(self.median_sigma(x, y, distances).log())
            self.init_required = False
        gamma = 1.0 / (2.0 * self.sigma**2)
        return torch.exp(-torch.cat([(g * distances)[None, :, :] for g in gamma], dim=0)).mean(dim=0)


# Default number of permutations, raised when alpha needs more (see _minimum_permutations).
_DEFAULT_PERMUTATIONS = 100

# Permutations handled by one matrix product: bounds the (chunk, n + m) indicator and product matrices.
_PERMUTATION_CHUNK = 256

# Tags of the independent random streams derived from ``seed`` (a stream per purpose: a subsample drawn with
# the bare seed would be correlated with the inner VAE's train/validation split, drawn with that seed too).
_REFERENCE_STREAM = 1
_WINDOW_STREAM = 2
_PERMUTATION_STREAM = 3


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch with one intra-op thread, restoring the previous setting afterwards.

    One thread makes the floating-point reduction order, hence every bit of the result, independent of the
    machine's core count; the matrices here are small enough for it (see ``bench/README.md``).
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _minimum_permutations(alpha: float) -> int:
    """The fewest permutations with which a p-value ``(#exceeding + 1) / (n + 1)`` can be ``<= alpha``."""
    n = max(0, math.ceil(1.0 / alpha) - 2)
    while 1.0 / (n + 1) > alpha:  # ceil() of a rounded 1/alpha may be one short
        n += 1
    return n


def _window_digest(event_ids: Sequence[str]) -> int:
    """A stable 64-bit digest of a window's event ids (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update("\x00".join(map(str, event_ids)).encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "little")


@dataclass(frozen=True)
class MMDPermutationTest:
    """The outcome of one permutation test: the observed MMD^2 and its permutation distribution."""

    mmd2: float
    """Unbiased MMD^2 between the reference codes and the window codes (alibi-detect's estimator)."""
    permuted: np.ndarray
    """float64, the MMD^2 of each permutation, in the order the permutations were drawn."""

    @property
    def n_exceeding(self) -> int:
        """Permutations whose MMD^2 reaches the observed one."""
        return int(np.count_nonzero(self.permuted >= self.mmd2))

    @property
    def share_exceeding(self) -> float:
        """``n_exceeding / n_permutations``: what alibi-detect's ``MMDDrift`` reports as ``p_val``."""
        return self.n_exceeding / self.permuted.size

    @property
    def p_value(self) -> float:
        """The Monte-Carlo permutation p-value ``(n_exceeding + 1) / (n_permutations + 1)``."""
        return (self.n_exceeding + 1) / (self.permuted.size + 1)


@dataclass
class LatentDriftState(DetectorState):
    """The inner VAE's state, the reference codes of the test and the kernel bandwidth."""

    vae: dict[str, Any]  # VAEAnomalyDetector.state_dict(), checked by its load_state_dict
    reference_latent: Float64Array
    # The kernel keeps log(sigma) as a float32 parameter: saved as such, it is restored exactly.
    log_sigma: Float32Array
    n_reference_events: int


class LatentDriftDetector(Detector[LatentDriftState], id="latent_drift", threat=Threat.DRIFT):
    """Flags windows whose VAE latent codes are distributed differently from the reference's (MMD test).

    Parameters
    ----------
    alpha
        False-alarm rate per window, in (0, 0.5).
    n_permutations
        Permutations of the test (>= 1, and enough to make ``alpha`` attainable: at least
        ``1/alpha - 1``). ``None``: 100, or the smallest sufficient number if ``alpha < 1/101``.
    max_reference
        At most this many reference codes enter the kernel matrix (seeded subsample; >= 2).
    max_window
        At most this many events of a window are encoded and tested (seeded subsample; >= ``min_events``).
    min_events
        ``evaluate`` skips windows with fewer events (>= 2).
    seed
        Seed of the subsamples and the permutations (>= 0). The inner VAE has its own ``seed`` in ``vae``.
    vae
        Parameters of the inner :class:`~detectors.anomaly.VAEAnomalyDetector` (its defaults otherwise);
        the same parameters as the monitor's ``vae_anomaly`` give the same network.

    Examples
    --------
    >>> from detectors._examples import gaussian, statuses
    >>> tiny = {"hidden_dim": 8, "latent_dim": 2, "max_epochs": 20}
    >>> detector = LatentDriftDetector(vae=tiny, max_reference=200).fit(gaussian(300, seed=0))
    >>> statuses(detector, gaussian(100, seed=1), gaussian(100, seed=2, loc=3.0))
    ('ok', 'alert')
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        n_permutations: int | None = None,
        max_reference: int = 1000,
        max_window: int = 1000,
        min_events: int = 50,
        seed: int = 0,
        vae: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
        if not (math.isfinite(float(alpha)) and 0.0 < float(alpha) < 0.5):
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)
        needed = _minimum_permutations(self.alpha)
        if n_permutations is None:
            self.n_permutations: int | None = None
            self._permutations = max(_DEFAULT_PERMUTATIONS, needed)
        else:
            self.n_permutations = check_int("n_permutations", n_permutations, 1)
            if self.n_permutations < needed:
                raise ValueError(
                    f"n_permutations must be >= {needed} for alpha={self.alpha}: the smallest p-value of "
                    f"{self.n_permutations} permutations is 1/{self.n_permutations + 1}, above alpha "
                    "(or pass None to choose automatically)"
                )
            self._permutations = self.n_permutations
        self.max_reference = check_int("max_reference", max_reference, 2)
        self.min_events = check_int("min_events", min_events, 2)
        self.max_window = check_int("max_window", max_window, self.min_events)
        self.seed = check_int("seed", seed, 0)
        self.vae: dict[str, Any] = inner_vae_params(vae)

        # p <= alpha  <=>  fewer than this many permutations reach the observed MMD^2 (computed with the
        # same float expression as the p-value, so the two can never disagree).
        self._alerting_counts = sum(
            1 for k in range(self._permutations) if (k + 1) / (self._permutations + 1) <= self.alpha
        )
        self._vae: VAEAnomalyDetector | None = None
        self._kernel: GaussianRBF | None = None
        self._reference = torch.empty(0, 0, dtype=torch.float64)  # the reference codes in the kernel
        self._k_xx = torch.empty(0, 0, dtype=torch.float64)  # their kernel matrix, zero diagonal
        self._k_xx_rows = torch.empty(0, dtype=torch.float64)  # its row sums
        self._k_xx_sum = 0.0
        self._n_reference_events = 0

    # ------------------------------------------------------------------ parameters

    @property
    def permutations(self) -> int:
        """The number of permutations the test draws (``n_permutations`` or the automatic choice)."""
        return self._permutations

    @property
    def fitted(self) -> bool:
        return self._vae is not None

    def _encoder_and_kernel(self) -> tuple[VAEAnomalyDetector, GaussianRBF]:
        """The fitted inner VAE and kernel."""
        self._require_fitted()
        assert self._vae is not None and self._kernel is not None  # both are set by fit and load
        return self._vae, self._kernel

    @property
    def encoder(self) -> VAEAnomalyDetector:
        """The inner, fitted VAE."""
        return self._encoder_and_kernel()[0]

    @property
    def reference_latent(self) -> np.ndarray:
        """The reference codes of the test, shape ``(n_reference, latent_dim)`` (a copy)."""
        self._require_fitted()
        return self._reference.numpy().copy()

    @property
    def sigma(self) -> float:
        """Bandwidth of the Gaussian kernel (median heuristic on the reference codes)."""
        return float(self._encoder_and_kernel()[1].sigma)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Train the inner VAE, encode the reference and prepare the reference side of the MMD test (only
        ``features`` is used); a ValueError if the inner VAE cannot be trained on the reference (too few
        events, no features)."""
        vae = VAEAnomalyDetector(**self.vae)
        try:
            vae.fit(reference)
        except ValueError as error:
            raise ValueError(f"{self.id}: {error}") from error
        n = len(reference)
        if n > self.max_reference:
            rng = np.random.default_rng([self.seed, _REFERENCE_STREAM])
            chosen = np.sort(rng.choice(n, self.max_reference, replace=False))
            reference = Batch(
                event_ids=[reference.event_ids[i] for i in chosen],
                features=[reference.features[i] for i in chosen],
            )
        codes = vae.encode_latent(reference)
        kernel = GaussianRBF()
        self._set_reference(vae, kernel, codes, infer_sigma=True)
        self._n_reference_events = n
        return self

    def _set_reference(
        self, vae: VAEAnomalyDetector, kernel: GaussianRBF, codes: np.ndarray, *, infer_sigma: bool
    ) -> None:
        """Cache the reference side of the test: the codes, ``K_xx`` (zero diagonal), its row sums and sum."""
        x = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float64))
        with _one_thread(), torch.no_grad():
            # As MMDDriftTorch does with configure_kernel_from_x_ref=True: sigma from the reference alone.
            k_xx = kernel(x, x, infer_sigma=infer_sigma)
            k_xx.fill_diagonal_(0.0)
            self._k_xx_rows = k_xx.sum(dim=1)
            self._k_xx_sum = float(k_xx.sum())
        self._reference, self._k_xx = x, k_xx
        self._vae, self._kernel = vae, kernel

    # ------------------------------------------------------------------ testing a window

    def permutation_test(self, latent: np.ndarray, generator: torch.Generator) -> MMDPermutationTest:
        """MMD^2 between the reference codes and ``latent``, and its permutation distribution.

        This is the computation of alibi-detect's ``MMDDriftTorch.score`` with the reference block cached:
        the same statistic, and for a generator in the same state as torch's global one, the same
        permutations (``torch.randperm`` of the pooled codes, one per permutation, in order).

        Parameters
        ----------
        latent
            The window's codes, shape ``(m, latent_dim)`` with ``m >= 2``.
        generator
            Source of the permutations (advanced by ``permutations`` draws of ``randperm``).

        Returns
        -------
        MMDPermutationTest
            The observed MMD^2 and the ``permutations`` permuted ones.
        """
        kernel = self._encoder_and_kernel()[1]
        y = torch.from_numpy(np.ascontiguousarray(latent, dtype=np.float64))
        if y.ndim != 2 or y.shape[1] != self._reference.shape[1] or y.shape[0] < 2:
            raise ValueError(
                f"latent must have shape (m >= 2, {self._reference.shape[1]}), got {tuple(latent.shape)}"
            )
        x, k_xx = self._reference, self._k_xx
        n, m = x.shape[0], y.shape[0]
        c_xx, c_yy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
        with _one_thread(), torch.no_grad():
            k_xy = kernel(x, y)  # (n, m)
            k_yy = kernel(y, y)
            k_yy.fill_diagonal_(0.0)
            s_yy_observed = k_yy.sum()
            mmd2 = float(c_xx * self._k_xx_sum + c_yy * s_yy_observed - 2.0 * k_xy.mean())

            # Row sums and total of the pooled zero-diagonal kernel matrix [[K_xx, K_xy], [K_yx, K_yy]].
            rows_x = self._k_xx_rows + k_xy.sum(dim=1)
            rows_y = k_xy.sum(dim=0) + k_yy.sum(dim=1)
            total = self._k_xx_sum + 2.0 * k_xy.sum() + s_yy_observed
            k_yx = k_xy.T.contiguous()

            permuted = torch.empty(self._permutations, dtype=torch.float64)
            for start in range(0, self._permutations, _PERMUTATION_CHUNK):
                count = min(_PERMUTATION_CHUNK, self._permutations - start)
                order = torch.stack([torch.randperm(n + m, generator=generator) for _ in range(count)])
                # alibi permutes the pooled matrix and takes the last m positions as the window.
                a = torch.zeros(count, n + m, dtype=torch.float64)
                a.scatter_(1, order[:, n:], 1.0)
                a_x, a_y = a[:, :n], a[:, n:]
                ka_x = a_x @ k_xx + a_y @ k_yx  # (K a) on the reference rows
                ka_y = a_x @ k_xy + a_y @ k_yy  # (K a) on the window rows
                s_yy = (ka_x * a_x).sum(dim=1) + (ka_y * a_y).sum(dim=1)  # a^T K a
                s_xy = a_x @ rows_x + a_y @ rows_y - s_yy  # a^T K (1 - a)
                s_xx = total - 2.0 * s_xy - s_yy
                permuted[start : start + count] = c_xx * s_xx + c_yy * s_yy - 2.0 * s_xy / (n * m)
        return MMDPermutationTest(mmd2=mmd2, permuted=permuted.numpy())

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test whether the window's latent codes come from the reference's distribution (uses
        ``event_ids`` and ``features``).

        ``statistic`` is the MMD^2, ``threshold`` the critical MMD^2 (the window alerts iff its MMD^2 is
        above it), ``p_value`` the permutation p-value ``(#exceeding + 1) / (permutations + 1)``.
        """
        vae, kernel = self._encoder_and_kernel()
        n = len(window)
        if n < self.min_events:
            return self.skipped(n, f"too few events: {n} < {self.min_events}")
        if len(window.features) != n:
            return self.skipped(n, "the window carries no features")
        digest = _window_digest(window.event_ids)
        tested = window
        if n > self.max_window:
            rng = np.random.default_rng([self.seed, _WINDOW_STREAM, digest])
            chosen = np.sort(rng.choice(n, self.max_window, replace=False))
            tested = Batch(
                event_ids=[window.event_ids[i] for i in chosen], features=[window.features[i] for i in chosen]
            )
        latent = vae.encode_latent(tested)
        torch_seed = int(
            np.random.SeedSequence([self.seed, _PERMUTATION_STREAM, digest]).generate_state(1)[0]
        )
        test = self.permutation_test(latent, torch.Generator().manual_seed(torch_seed))

        # p <= alpha iff fewer than _alerting_counts permutations reach the MMD^2, i.e. iff the MMD^2 is above
        # the _alerting_counts-th largest permuted value.
        critical = float(np.sort(test.permuted)[::-1][self._alerting_counts - 1])
        p_value = test.p_value
        return self.result(
            n,
            alert=p_value <= self.alpha,
            statistic=test.mmd2,
            threshold=critical,
            p_value=p_value,
            evidence={
                "mmd2": test.mmd2,
                "critical_mmd2": critical,
                "n_reference": int(self._reference.shape[0]),
                "n_window": int(latent.shape[0]),
                "latent_dim": int(latent.shape[1]),
                "sigma": float(kernel.sigma),
                "n_permutations": self._permutations,
                "n_exceeding": test.n_exceeding,
                "share_exceeding": test.share_exceeding,
            },
        )

    # ------------------------------------------------------------------ state

    def _save_state(self) -> LatentDriftState:
        vae, kernel = self._encoder_and_kernel()
        return LatentDriftState(
            vae=vae.state_dict(),
            reference_latent=self._reference.numpy(),
            log_sigma=kernel.log_sigma.detach().numpy(),
            n_reference_events=self._n_reference_events,
        )

    def _load_state(self, state: LatentDriftState) -> None:
        vae = VAEAnomalyDetector(**self.vae).load_state_dict(state.vae)
        codes, log_sigma = state.reference_latent, state.log_sigma.reshape(-1)
        if (
            codes.ndim != 2
            or codes.shape[1] != vae.latent_dim
            or not 2 <= codes.shape[0] <= self.max_reference
        ):
            raise ValueError(
                f"{self.id}: the state's reference codes have shape {codes.shape}, expected "
                f"(2..{self.max_reference}, {vae.latent_dim})"
            )
        if not np.isfinite(codes).all() or log_sigma.shape != (1,) or not np.isfinite(log_sigma).all():
            raise self._malformed("non-finite reference codes or bandwidth")
        kernel = GaussianRBF()
        with torch.no_grad():
            kernel.log_sigma.copy_(torch.from_numpy(log_sigma))
        kernel.init_required = False
        self._set_reference(vae, kernel, codes, infer_sigma=False)
        self._n_reference_events = state.n_reference_events
