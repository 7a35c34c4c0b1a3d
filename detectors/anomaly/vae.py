"""Per-event anomaly detection with a variational autoencoder, aggregated per window by a count test.

The VAE learns to reconstruct the encoded reference features (:class:`detectors.encoding.FeatureSchema`).
An event's score is its reconstruction error through the posterior mean, so scoring is deterministic.
Events unlike the reference (corrupted inputs, out-of-distribution queries, adversarial probing) are
reconstructed badly and score high.

Turning per-event scores into a per-window decision is a conformal-style test:

1. The reference is split (seeded) into train (60 %), validation (20 %, early stopping) and calibration
   (20 %). The calibration events were never seen in training, so their scores are distributed like the
   scores of new clean events.
2. The per-event threshold is the ``quantile`` of the calibration scores; the share of clean events
   expected above it is ``p0 = (#calibration scores above + 1) / (n_calibration + 1)``, the usual
   conservative conformal estimate.
3. In a window of ``n`` events of which ``k`` score above the threshold, ``P(X >= k)`` is the p-value;
   the window alerts when it is below ``alpha``.

Which distribution ``X`` has is the ``window_test`` parameter. ``"binomial"``, ``X ~ Binomial(n, p0)``,
treats ``p0`` as exact. It is not: with a 200-event calibration set and ``quantile=0.99``, ``p0`` rests
on two or three calibration events, and the true share of clean events above the threshold varies by a
factor of several between reference samples. On load_digits (1,000 reference events, 200-event clean
windows, 8 reference resamplings) the binomial test raised false alarms in 4 % of clean windows at
``alpha=0.01``, up to 27 % for an unlucky calibration; on load_breast_cancer, 6.6 % (up to 42 %).
The default ``"beta_binomial"`` takes that uncertainty into account exactly: if ``c`` of the ``m``
calibration scores lie above the threshold, the share of clean events above it is Beta(c + 1, m - c)
distributed (an order-statistic fact, given exchangeable scores), so ``k`` follows
BetaBinomial(n, c + 1, m - c), whose mean is still ``n * p0``. In the same experiment it gave 0.7 % and
0.1 % false alarms; the corrupted windows of the tests alert just as clearly.

The module stays above 500 lines because the network, its training with early stopping, the calibrated
window test and :func:`inner_vae_params` (the inner VAE of ``latent_drift``, ``evasion`` and ``backdoor``)
are one algorithm: split, each part would need the others' private details.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Self

import numpy as np
import torch
from scipy import stats
from torch import nn

from detectors._checks import check_choice, check_float, check_int
from detectors.base import Batch, DetectionResult, Detector, EventScore, Threat, feature_window_problem
from detectors.encoding import FeatureSchema
from detectors.state import HYPERPARAMETER, DetectorState, Float32Array, Float64Array

__all__ = ["VAEAnomalyDetector", "VAEAnomalyState", "inner_vae_params"]

# Share of the reference used for training and for validation; the rest calibrates the threshold.
_TRAIN_SHARE = 0.6
_VALIDATION_SHARE = 0.2

# Early stopping: an epoch counts as an improvement only if it lowers the best validation loss by this
# relative amount, so that noise-level gains do not keep training alive.
_MIN_RELATIVE_IMPROVEMENT = 1e-4

# Bounds on the encoder's log-variance: keeps exp() finite in the first, noisy epochs.
_LOG_VAR_RANGE = (-10.0, 10.0)

# Scoring works in chunks so that a very large window does not allocate one huge activation matrix.
_SCORE_CHUNK = 8192

_WINDOW_TESTS = ("beta_binomial", "binomial")


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the previous setting afterwards.

    The networks here are tiny: thread hand-offs cost more than they save, and one thread also makes the
    floating-point reduction order independent of the machine.
    """
    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _VAE(nn.Module):
    """A one-hidden-layer Gaussian VAE (encoder and decoder are mirror images)."""

    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU())
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.log_var = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, input_dim)
        )

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x)."""
        hidden = self.encoder(x)
        return self.mean(hidden), self.log_var(hidden).clamp(*_LOG_VAR_RANGE)

    def loss(self, x: torch.Tensor, beta: float, generator: torch.Generator | None) -> torch.Tensor:
        """Negative ELBO per event, averaged over the batch.

        With a generator, z is sampled (training); without one, the posterior mean is decoded, which
        gives the deterministic validation loss used for early stopping.
        """
        mean, log_var = self.posterior(x)
        if generator is None:
            z = mean
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * log_var) * noise
        reconstruction = self.decoder(z)
        # Unit-variance Gaussian likelihood, which matches standardised inputs.
        nll = 0.5 * (reconstruction - x).pow(2).sum(dim=1)
        kl = -0.5 * (1.0 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1)
        return (nll + beta * kl).mean()


@dataclass
class VAEAnomalyState(DetectorState):
    """The feature schema, the network's weights and the calibration of the threshold."""

    architecture: dict[str, int]  # input_dim, hidden_dim, latent_dim
    quantile: Annotated[float, HYPERPARAMETER]
    schema: dict[str, Any]  # FeatureSchema.state_dict(), checked by FeatureSchema.from_state
    weights: dict[str, Float32Array]  # the network's state_dict
    score_threshold: float
    expected_share: float
    calibration_scores: Float64Array
    calibration_above: int
    training: dict[str, Any] = field(default_factory=dict)  # epochs, best epoch and loss, split sizes


class VAEAnomalyDetector(Detector[VAEAnomalyState], id="vae_anomaly", threat=Threat.ROBUSTNESS):
    """Flags windows with too many events that a VAE, trained on the reference, reconstructs badly.

    Parameters
    ----------
    latent_dim
        Size of the latent space (>= 1).
    hidden_dim
        Width of the hidden layer of encoder and decoder (>= 1).
    quantile
        The per-event score threshold is this quantile of the calibration scores, in [0.5, 0.9999].
    alpha
        False-alarm rate of the window test, in (0, 0.5).
    max_epochs
        Training epochs at most (>= 1).
    patience
        Early stopping: epochs without a relative validation-loss improvement of 1e-4 (>= 1).
    batch_size
        Training mini-batch size (>= 1).
    learning_rate
        Adam's learning rate, in (0, 1].
    beta
        Weight of the KL term of the loss, in [0, 100].
    seed
        Seed of the reference split, the weight initialisation, shuffling and sampling (>= 0).
    min_reference
        ``fit`` refuses fewer reference events (>= 10, so every split holds a couple of events).
    min_events
        ``evaluate`` skips windows with fewer events (>= 1).
    top_k
        Number of most anomalous events reported per window (>= 0).
    window_test
        Null distribution of the window's anomalous count: ``"beta_binomial"`` (accounts for the
        calibration set's finite size; see the module docstring) or ``"binomial"`` (``p0`` taken as
        exact, anti-conservative with small calibration sets).

    Examples
    --------
    >>> from detectors._examples import gaussian, statuses
    >>> detector = VAEAnomalyDetector(hidden_dim=8, latent_dim=2, max_epochs=20).fit(gaussian(300, seed=0))
    >>> statuses(detector, gaussian(100, seed=1), gaussian(100, seed=2, scale=[1, 1, 1, 6]))  # x3 wider
    ('ok', 'alert')
    """

    def __init__(
        self,
        *,
        latent_dim: int = 8,
        hidden_dim: int = 64,
        quantile: float = 0.99,
        alpha: float = 0.01,
        max_epochs: int = 200,
        patience: int = 10,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        beta: float = 1.0,
        seed: int = 0,
        min_reference: int = 100,
        min_events: int = 20,
        top_k: int = 10,
        window_test: str = "beta_binomial",
    ) -> None:
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.hidden_dim = check_int("hidden_dim", hidden_dim, 1)
        self.quantile = check_float("quantile", quantile, 0.5, 0.9999, low_open=False, high_open=False)
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.max_epochs = check_int("max_epochs", max_epochs, 1)
        self.patience = check_int("patience", patience, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.learning_rate = check_float("learning_rate", learning_rate, 0.0, 1.0, high_open=False)
        self.beta = check_float("beta", beta, 0.0, 100.0, low_open=False, high_open=False)
        self.seed = check_int("seed", seed, 0)
        self.min_reference = check_int("min_reference", min_reference, 10)
        self.min_events = check_int("min_events", min_events, 1)
        self.top_k = check_int("top_k", top_k, 0)
        self.window_test = check_choice("window_test", window_test, _WINDOW_TESTS)

        self._schema: FeatureSchema | None = None
        self._model: _VAE | None = None
        self._score_threshold = math.nan
        self._expected_share = math.nan
        self._calibration_scores = np.empty(0, dtype=np.float64)
        self._n_above = 0  # calibration scores above the threshold
        self._training: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return self._model is not None

    @property
    def schema(self) -> FeatureSchema:
        """The feature encoding learned from the reference."""
        return self._network()[0]

    @property
    def score_threshold(self) -> float:
        """Per-event score threshold (the ``quantile`` of the calibration scores)."""
        self._require_fitted()
        return self._score_threshold

    @property
    def expected_share(self) -> float:
        """``p0``: the share of clean events expected above the threshold."""
        self._require_fitted()
        return self._expected_share

    def _network(self) -> tuple[FeatureSchema, _VAE]:
        """The fitted schema and network."""
        self._require_fitted()
        assert self._schema is not None and self._model is not None  # both are set by fit and load
        return self._schema, self._model

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Learn the schema, train the VAE and calibrate the threshold on the reference's ``features``; a
        ValueError if it has fewer than ``min_reference`` events (or no features)."""
        n = len(reference)
        if n < self.min_reference:
            raise ValueError(
                f"{self.id}: the reference has {n} events, at least min_reference={self.min_reference} "
                "are needed to train and calibrate"
            )
        if len(reference.features) != n:
            raise ValueError(f"{self.id}: the reference has no features")
        schema = FeatureSchema.fit(reference.features)
        encoded = reference.encoded(schema)

        # Seeded three-way split; calibration scores must come from events the network never trained on.
        order = np.random.default_rng(self.seed).permutation(n)
        n_train = round(_TRAIN_SHARE * n)
        n_validation = round(_VALIDATION_SHARE * n)
        train = torch.from_numpy(encoded[order[:n_train]])
        validation = torch.from_numpy(encoded[order[n_train : n_train + n_validation]])
        calibration = encoded[order[n_train + n_validation :]]

        with _torch_threads(1):
            model, training = self._train(schema.dim, train, validation)
            calibration_scores = self._reconstruction_error(model, calibration)

        threshold = float(np.quantile(calibration_scores, self.quantile))
        n_above = int(np.count_nonzero(calibration_scores > threshold))
        self._schema = schema
        self._model = model
        self._score_threshold = threshold
        self._expected_share = (n_above + 1) / (calibration_scores.size + 1)
        self._calibration_scores = calibration_scores
        self._n_above = n_above
        self._training = {**training, "n_train": n_train, "n_validation": n_validation}
        return self

    def _train(
        self, input_dim: int, train: torch.Tensor, validation: torch.Tensor
    ) -> tuple[_VAE, dict[str, Any]]:
        """Train with Adam and early stopping; return the best-validation model and a training summary."""
        # fork_rng: the weight initialisation is seeded without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = _VAE(input_dim, self.hidden_dim, self.latent_dim)
        generator = torch.Generator().manual_seed(self.seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=self.learning_rate)

        best_loss = math.inf
        best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        best_epoch = 0
        stale = 0
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            permutation = torch.randperm(train.shape[0], generator=generator)
            for start in range(0, train.shape[0], self.batch_size):
                batch = train[permutation[start : start + self.batch_size]]
                loss = model.loss(batch, self.beta, generator)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            model.eval()
            with torch.no_grad():
                validation_loss = float(model.loss(validation, self.beta, None))
            # The first finite loss always counts (inf - inf would be NaN and never compare true).
            improved = validation_loss < best_loss - _MIN_RELATIVE_IMPROVEMENT * abs(best_loss)
            if improved or (math.isinf(best_loss) and math.isfinite(validation_loss)):
                best_loss, best_epoch, stale = validation_loss, epoch, 0
                best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        return model, {"epochs": epoch, "best_epoch": best_epoch, "best_validation_loss": best_loss}

    # ------------------------------------------------------------------ scoring

    @staticmethod
    def _reconstruction_error(model: _VAE, encoded: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per row, decoding the posterior mean (deterministic)."""
        scores = np.empty(encoded.shape[0], dtype=np.float64)
        with torch.no_grad():
            for start in range(0, encoded.shape[0], _SCORE_CHUNK):
                x = encoded[start : start + _SCORE_CHUNK]
                # torch.tensor copies: ``encoded`` may be a window's shared, read-only matrix.
                mean, _ = model.posterior(torch.tensor(x))
                reconstruction = model.decoder(mean).numpy().astype(np.float64)
                scores[start : start + x.shape[0]] = np.mean((reconstruction - x) ** 2, axis=1)
        # A NaN score (only conceivable with absurd inputs) must not hide an event: count it as worst.
        return np.where(np.isnan(scores), np.inf, scores)

    def score(self, batch: Batch) -> np.ndarray:
        """Per-event anomaly scores (mean squared reconstruction error over the encoded dimensions).

        Parameters
        ----------
        batch
            Events to score; only ``features`` is used.

        Returns
        -------
        np.ndarray
            float64, one score per event; higher is more anomalous.
        """
        schema, model = self._network()
        with _torch_threads(1):
            return self._reconstruction_error(model, batch.encoded(schema))

    def encode_latent(self, batch: Batch) -> np.ndarray:
        """Posterior means of the events' latent codes.

        Returns
        -------
        np.ndarray
            float64, shape ``(len(batch), latent_dim)``.
        """
        schema, model = self._network()
        encoded = batch.encoded(schema)
        out = np.empty((encoded.shape[0], self.latent_dim), dtype=np.float64)
        with _torch_threads(1), torch.no_grad():
            for start in range(0, encoded.shape[0], _SCORE_CHUNK):
                mean, _ = model.posterior(torch.tensor(encoded[start : start + _SCORE_CHUNK]))
                out[start : start + mean.shape[0]] = mean.numpy()
        return out

    # ------------------------------------------------------------------ testing a window

    def tail_probabilities(self, n: int) -> np.ndarray:
        """``P(X >= k)`` for ``k = 0 .. n``, ``X`` the anomalous count of a clean ``n``-event window.

        Parameters
        ----------
        n
            Window size.

        Returns
        -------
        np.ndarray
            float64, shape ``(n + 1,)``; entry ``k`` is the p-value of a window with ``k`` anomalous events.
        """
        self._require_fitted()
        counts = np.arange(n + 1)
        if self.window_test == "binomial":
            tails = stats.binom.sf(counts - 1, n, self._expected_share)
        else:
            m = self._calibration_scores.size
            # Beta(c + 1, m - c): the share of clean events above the (m - c)-th calibration order
            # statistic; m - c >= 1 because the quantile never lies above the largest calibration score.
            # scipy's betabinom.sf sums the pmf from 0 for every k (quadratic: minutes for n = 10^5), so
            # the tails are summed here once, from the top, which also keeps tiny tails accurate.
            pmf = stats.betabinom.pmf(counts, n, self._n_above + 1, m - self._n_above)
            tails = np.cumsum(pmf[::-1])[::-1]
        return np.minimum(np.asarray(tails, dtype=np.float64), 1.0)

    def tail_probability(self, k: int, n: int) -> float:
        """``P(X >= k)``: the p-value of an ``n``-event window with ``k`` anomalous events."""
        return float(self.tail_probabilities(n)[k])

    def critical_count(self, n: int) -> int | None:
        """Smallest number of anomalous events among ``n`` that makes the window alert (None: none does)."""
        return self._critical_count(self.tail_probabilities(n))

    def _critical_count(self, tails: np.ndarray) -> int | None:
        alerting = np.flatnonzero(tails < self.alpha)
        return int(alerting[0]) if alerting.size else None

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test whether the window holds more anomalous events than the reference predicts (uses
        ``event_ids`` and ``features``).

        ``statistic`` is the share of events above the score threshold, ``threshold`` the share at which the
        window would alert, ``p_value`` the tail probability of the count. ``event_scores`` holds the
        ``top_k`` highest-scoring events, also for windows that pass.
        """
        self._require_fitted()
        n = len(window)
        if (problem := feature_window_problem(window, self.min_events)) is not None:
            return self.skipped(n, problem)
        scores = self.score(window)
        k = int(np.count_nonzero(scores > self._score_threshold))
        tails = self.tail_probabilities(n)
        p_value = float(tails[k])
        critical = self._critical_count(tails)

        top = np.argsort(-scores, kind="stable")[: self.top_k]
        event_scores = tuple(
            EventScore(event_id=str(window.event_ids[i]), score=float(scores[i])) for i in top
        )
        return self.result(
            n,
            alert=p_value < self.alpha,
            statistic=k / n,
            threshold=None if critical is None else critical / n,
            p_value=p_value,
            evidence={
                "anomalous": k,
                "critical_count": critical,
                "expected_share": self._expected_share,
                "score_threshold": self._score_threshold,
                "top_events": [{"event_id": e.event_id, "score": e.score} for e in event_scores],
            },
            event_scores=event_scores,
        )

    # ------------------------------------------------------------------ state

    def _save_state(self) -> VAEAnomalyState:
        schema, model = self._network()
        return VAEAnomalyState(
            architecture={
                "input_dim": schema.dim,
                "hidden_dim": self.hidden_dim,
                "latent_dim": self.latent_dim,
            },
            quantile=self.quantile,
            schema=schema.state_dict(),
            weights={name: tensor.detach().numpy() for name, tensor in model.state_dict().items()},
            score_threshold=self._score_threshold,
            expected_share=self._expected_share,
            calibration_scores=self._calibration_scores,
            calibration_above=self._n_above,
            training=dict(self._training),
        )

    def _load_state(self, state: VAEAnomalyState) -> None:
        schema = FeatureSchema.from_state(state.schema)
        expected = {"input_dim": schema.dim, "hidden_dim": self.hidden_dim, "latent_dim": self.latent_dim}
        if state.architecture != expected:
            raise ValueError(
                f"{self.id}: the state was fitted with {state.architecture}, "
                f"this detector's parameters give {expected}"
            )
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: spare the global RNG
            model = _VAE(schema.dim, self.hidden_dim, self.latent_dim)
        try:
            model.load_state_dict({name: torch.from_numpy(array) for name, array in state.weights.items()})
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(f"{self.id}: the state's weights do not fit the network: {error}") from error
        model.eval()
        scores, n_above = state.calibration_scores, state.calibration_above
        if scores.ndim != 1 or not 0 <= n_above < scores.size:
            raise self._malformed(f"{n_above} calibration scores above the threshold out of {scores.size}")
        self._schema = schema
        self._model = model
        self._score_threshold = state.score_threshold
        self._expected_share = state.expected_share
        self._calibration_scores = scores
        self._n_above = n_above
        self._training = state.training


def inner_vae_params(vae: Any, **defaults: Any) -> dict[str, Any]:
    """Every parameter of a detector's inner :class:`VAEAnomalyDetector`, spelt out.

    Parameters
    ----------
    vae
        The detector's ``vae`` argument: a mapping of the inner VAE's constructor arguments, or None.
    defaults
        Arguments that ``vae`` may override (the outer detector's seed, a per-event quantile).

    Raises
    ------
    TypeError, ValueError
        As the VAE's constructor would, the message prefixed with ``vae: ``.
    """
    if vae is None:
        vae = {}
    if not isinstance(vae, Mapping):
        raise TypeError(f"vae must be a mapping of VAEAnomalyDetector parameters, got {type(vae).__name__}")
    try:
        inner = VAEAnomalyDetector(**{**defaults, **vae})
    except TypeError as error:
        raise TypeError(f"vae: {error}") from error
    except ValueError as error:
        raise ValueError(f"vae: {error}") from error
    return inner.get_params()
