"""The one interface every detector implements, and the values it exchanges.

A detector is fitted on a reference :class:`Batch`, evaluates one window :class:`Batch` at a time and
returns a :class:`DetectionResult`. Its constructor arguments (``get_params``) and its learned state
(``state_dict``) are kept apart, as in alibi-detect's saved detectors, so that the monitor can store the
fitted state and restore it exactly without refitting.

The plumbing is written here once: ``get_params`` is read from the constructor's signature, ``state_dict``
and ``load_state_dict`` convert the detector's typed state dataclass (:class:`detectors.state.DetectorState`),
and ``_require_fitted`` guards everything that needs a fitted detector. A detector module keeps only its
algorithm: ``__init__`` (hyper-parameters under their own names), ``fit``, ``evaluate``, and the two
conversions ``_save_state`` / ``_load_state`` between its learned attributes and its state dataclass.

Detectors are pure: no Kafka, no SQL, no HTTP, no clocks. Everything they need arrives as arguments.
"""

from __future__ import annotations

import abc
import copy
import enum
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, cast, get_args

import numpy as np

from detectors.state import DetectorState, MalformedState

if TYPE_CHECKING:
    from detectors.encoding import FeatureSchema

FeatureValue = float | int | str | bool | None


class Threat(enum.StrEnum):
    """The threat classes a detector reports under."""

    DRIFT = "drift"
    PRIVACY = "privacy"
    CONFIDENTIALITY = "confidentiality"
    INTEGRITY = "integrity"
    ROBUSTNESS = "robustness"
    BACKDOOR = "backdoor"


class Status(enum.StrEnum):
    """Outcome of one detector on one window."""

    OK = "ok"
    ALERT = "alert"
    SKIPPED = "skipped"  # the window could not be tested (too few events, no labels, ...); see ``reason``


class NotFittedError(RuntimeError):
    """A detector was asked to evaluate or save state before ``fit`` or ``load_state_dict``."""


@dataclass(frozen=True)
class Batch:
    """A column-oriented set of prediction events: a reference, or one window.

    Every sequence has one entry per event, in the same order.
    """

    event_ids: Sequence[str]
    features: Sequence[Mapping[str, FeatureValue]]
    predictions: Sequence[Mapping[str, Any]] = ()
    labels: Sequence[str | None] = ()
    client_ids: Sequence[str | None] = ()
    timestamps: Sequence[float] = ()  # event time, epoch seconds
    embeddings: Sequence[Sequence[float] | None] = ()
    groups: Sequence[Mapping[str, str]] = ()
    streams: Sequence[str] = ()  # "inference" (live traffic) or "training" (labelled data for retraining)
    # Encoded feature matrices by schema, filled by ``encoded``: seven of the default detectors encode the
    # same window with equal schemas (all fitted on the same reference), and encoding the feature dicts is
    # the costliest shared step of a large window.
    _encodings: dict[FeatureSchema, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        n = len(self.event_ids)
        columns = (
            "features",
            "predictions",
            "labels",
            "client_ids",
            "timestamps",
            "embeddings",
            "groups",
            "streams",
        )
        for name in columns:
            column = getattr(self, name)
            if len(column) not in (0, n):
                raise ValueError(f"Batch.{name} has {len(column)} entries, expected {n} (one per event_id)")

    def __len__(self) -> int:
        return len(self.event_ids)

    def encoded(self, schema: FeatureSchema) -> np.ndarray:
        """``schema.encode(self.features)``, computed once per batch and equal schema.

        The matrix is shared by every caller with an equal schema, so it is returned read-only: a detector
        that needs to change it must copy it first.
        """
        matrix = self._encodings.get(schema)
        if matrix is None:
            matrix = schema.encode(self.features)
            matrix.flags.writeable = False
            self._encodings[schema] = matrix
        return matrix


@dataclass(frozen=True)
class EventScore:
    """One event's anomaly score, for the evidence of a result."""

    event_id: str
    score: float


@dataclass(frozen=True)
class DetectionResult:
    """What one detector concluded about one window."""

    detector: str
    threat: Threat
    status: Status
    n_events: int
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None  # set when ``status`` is SKIPPED
    event_scores: tuple[EventScore, ...] = ()  # the most anomalous events, highest score first

    @property
    def alerting(self) -> bool:
        return self.status is Status.ALERT


StateT = TypeVar("StateT", bound=DetectorState)


@functools.cache
def _constructor_parameters(cls: type) -> tuple[str, ...]:
    """The keyword parameters of ``cls.__init__``, in order."""
    parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return tuple(p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD)


class Detector(abc.ABC, Generic[StateT]):
    """Base class of all detectors.

    A detector class names its state dataclass as the type argument and its stable id and threat as class
    keywords, ``class FeatureDriftDetector(Detector[FeatureDriftState], id="feature_drift",
    threat=Threat.DRIFT)``; it stores its hyper-parameters under their own names in ``__init__`` (validated
    there, with the valid range in the message) and keeps learned state in ``_``-prefixed attributes.
    """

    id: ClassVar[str]
    threat: ClassVar[Threat]
    state_type: ClassVar[type[DetectorState]]
    """The state dataclass: the type argument of ``Detector[...]`` (or of an intermediate base class)."""
    calibrated_with: ClassVar[tuple[str, ...]] = ()
    """Hyper-parameters a calibration in ``fit`` depends on, saved together in the state (as ``params``) and
    compared on load by :meth:`_check_calibration`."""
    stateful: ClassVar[bool] = False
    """True for detectors whose ``evaluate`` also learns (per-client query histories, ...): the monitor then
    stores ``state_dict()`` after every evaluated window, in the same transaction as the window's results,
    so that a restart resumes from exactly the state the stored results saw."""

    def __init_subclass__(
        cls,
        *,
        id: str | None = None,
        threat: Threat | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if id is not None:
            cls.id = id
        if threat is not None:
            cls.threat = threat
        for base in getattr(cls, "__orig_bases__", ()):
            for argument in get_args(base):
                if isinstance(argument, type) and issubclass(argument, DetectorState):
                    cls.state_type = argument

    @abc.abstractmethod
    def fit(self, reference: Batch) -> Self:
        """Learn what normal looks like from the reference events.

        Parameters
        ----------
        reference
            The reference events (the detector's docstring says which columns it uses).

        Returns
        -------
        Detector
            ``self``, fitted; a detector that learns while evaluating forgets what it learnt.

        Raises
        ------
        ValueError
            If the reference lacks what the detector needs (too few events, no features, labels, ...).
        """

    @abc.abstractmethod
    def evaluate(self, window: Batch) -> DetectionResult:
        """Test one window against the reference.

        Parameters
        ----------
        window
            The events of one window.

        Returns
        -------
        DetectionResult
            See the detector's docstring for ``statistic``, ``threshold``, ``p_value`` and ``evidence``;
            ``SKIPPED``, with a ``reason``, when the window lacks what the test needs.

        Raises
        ------
        NotFittedError
            If the detector has not been fitted or loaded.
        """

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable: ``type(d)(**d.get_params())`` is an unfitted twin.

        Read from the constructor's signature: every hyper-parameter is stored under its own name.
        """
        return {name: copy.deepcopy(getattr(self, name)) for name in _constructor_parameters(type(self))}

    @property
    @abc.abstractmethod
    def fitted(self) -> bool:
        """Whether ``evaluate`` can be called (after ``fit`` or ``load_state_dict``)."""

    def _require_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the detector is fitted."""
        if not self.fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit() or load_state_dict() first"
            )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The learned state: values are numpy arrays or JSON-serialisable scalars, lists and dicts.

        Raises
        ------
        NotFittedError
            If there is nothing to save yet.
        """
        self._require_fitted()
        return self._save_state().to_mapping()

    def load_state_dict(self, state: Mapping[str, Any]) -> Self:
        """Restore the learned state saved by ``state_dict``; evaluation is then identical to the original.

        Raises
        ------
        ValueError
            If the state is malformed, of another version, or does not fit this detector's parameters.
        """
        try:
            saved = self.state_type.from_mapping(state)
        except ValueError as error:
            raise ValueError(f"{self.id}: {error}") from error
        for name, value in saved.hyperparameters().items():
            if value != getattr(self, name):
                raise ValueError(
                    f"{self.id}: the state was fitted with {name}={value}, "
                    f"this detector has {name}={getattr(self, name)}"
                )
        try:
            self._load_state(cast(StateT, saved))
        except ValueError as error:
            if str(error).startswith(f"{self.id}: "):
                raise
            raise ValueError(f"{self.id}: {error}") from error
        return self

    @abc.abstractmethod
    def _save_state(self) -> StateT:
        """The learned state as the detector's state dataclass (called on a fitted detector only)."""

    @abc.abstractmethod
    def _load_state(self, state: StateT) -> None:
        """Install a loaded state, after the checks the field types cannot express.

        Raises
        ------
        ValueError
            If the state is inconsistent, or does not fit this detector's parameters (see
            :meth:`_malformed`).
        """

    def _calibration(self) -> dict[str, Any]:
        """The ``calibrated_with`` hyper-parameters, by name, to save with the state."""
        return {name: getattr(self, name) for name in self.calibrated_with}

    def _check_calibration(self, saved: Mapping[str, Any]) -> None:
        """A ValueError unless the state was calibrated with this detector's ``calibrated_with`` values."""
        if saved != self._calibration():
            raise ValueError(
                f"{self.id}: the state was calibrated with {saved}, this detector has {self._calibration()}"
            )

    @staticmethod
    def _malformed(problem: str) -> MalformedState:
        """The error for a loaded state that is inconsistent in itself (``load_state_dict`` prefixes the
        detector id to every ValueError of ``_load_state`` that lacks it)."""
        return MalformedState(f"malformed state: {problem}")

    # ------------------------------------------------------------------ results

    def result(
        self,
        n_events: int,
        *,
        alert: bool,
        statistic: float | None,
        threshold: float | None,
        p_value: float | None,
        evidence: Mapping[str, Any],
        event_scores: tuple[EventScore, ...] = (),
    ) -> DetectionResult:
        """The result of a tested window: alerting or not."""
        return DetectionResult(
            detector=self.id,
            threat=self.threat,
            status=Status.ALERT if alert else Status.OK,
            n_events=n_events,
            statistic=statistic,
            threshold=threshold,
            p_value=p_value,
            evidence=evidence,
            event_scores=event_scores,
        )

    def skipped(self, n_events: int, reason: str) -> DetectionResult:
        """A result for a window this detector cannot test."""
        return DetectionResult(
            detector=self.id, threat=self.threat, status=Status.SKIPPED, n_events=n_events, reason=reason
        )


def feature_window_problem(window: Batch, min_events: int) -> str | None:
    """Why a detector that scores each event's features cannot test ``window`` (the reason of its skipped
    result), or None when it can."""
    n = len(window)
    if n < min_events:
        return f"too few events: {n} < {min_events}"
    if len(window.features) != n:
        return "the window carries no features"
    return None


def as_float_array(values: Sequence[Sequence[float]]) -> np.ndarray:
    """A 2-D float64 array from nested sequences (helper for embeddings and encoded features)."""
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)
