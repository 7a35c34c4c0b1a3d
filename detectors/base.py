"""The one interface every detector implements, and the values it exchanges.

A detector is fitted on a reference :class:`Batch`, evaluates one window :class:`Batch` at a time and
returns a :class:`DetectionResult`. Its constructor arguments (``get_params``) and its learned state
(``state_dict``) are kept apart, as in alibi-detect's saved detectors, so that the monitor can store the
fitted state and restore it exactly without refitting.

Detectors are pure: no Kafka, no SQL, no HTTP, no clocks. Everything they need arrives as arguments.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

if TYPE_CHECKING:
    from detectors.encoding import FeatureSchema

FeatureValue = float | int | str | bool | None


class Threat(enum.StrEnum):
    """Threat classes of the contract (section 3)."""

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


class Detector(abc.ABC):
    """Base class of all detectors.

    Subclasses set ``id`` (the stable detector id of the contract) and ``threat``, store their
    hyper-parameters under their own names in ``__init__`` (validated there, with the valid range in the
    message) and keep learned state in ``_``-prefixed attributes.
    """

    id: ClassVar[str]
    threat: ClassVar[Threat]
    stateful: ClassVar[bool] = False
    """True for detectors whose ``evaluate`` also learns (per-client query histories, ...): the monitor then
    stores ``state_dict()`` after every evaluated window, in the same transaction as the window's results,
    so that a restart resumes from exactly the state the stored results saw."""

    @abc.abstractmethod
    def fit(self, reference: Batch) -> Self:
        """Learn what normal looks like from the reference events."""

    @abc.abstractmethod
    def evaluate(self, window: Batch) -> DetectionResult:
        """Test one window against the reference."""

    @abc.abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable: ``type(d)(**d.get_params())`` is an unfitted twin."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The learned state: values are numpy arrays or JSON-serialisable scalars, lists and dicts."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> Self:
        """Restore the learned state saved by ``state_dict``; evaluation is then identical to the original."""

    @property
    @abc.abstractmethod
    def fitted(self) -> bool:
        """Whether ``evaluate`` can be called."""

    def _not_fitted(self) -> NotFittedError:
        """The error for ``evaluate`` or ``state_dict`` before ``fit`` or ``load_state_dict``."""
        return NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load_state_dict() first")

    def skipped(self, n_events: int, reason: str) -> DetectionResult:
        """A result for a window this detector cannot test."""
        return DetectionResult(
            detector=self.id, threat=self.threat, status=Status.SKIPPED, n_events=n_events, reason=reason
        )


def as_float_array(values: Sequence[Sequence[float]]) -> np.ndarray:
    """A 2-D float64 array from nested sequences (helper for embeddings and encoded features)."""
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)
