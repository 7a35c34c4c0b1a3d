"""What the pipeline holds for one model, grouped by concern: the reference and its warm-up, the fitted
detectors, the windows, and the persistence history.

:class:`ModelRuntime` decides what one event is to its model (a duplicate, a reference event, a window event,
late or not) and does no I/O: the pipeline loads and stores, holds the lock around every call, and counts.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detectors.encoding import FeatureSchema
from monitor.config import ModelSettings
from monitor.errors import IntakeError
from monitor.evaluation import FittedDetectors, PersistenceHistory
from monitor.intake.parsing import PredictionEvent
from monitor.windows import OffsetFloor, Position, WindowAssigner

# The pipeline's logger: this line was written by pipeline.py before the model state moved here, and log
# readers filter on the logger's name.
log = logging.getLogger("sentinel.pipeline")


class ModelPhase(enum.StrEnum):
    WARMING_UP = "warming_up"  # collecting the reference from the stream
    FITTING = "fitting"  # reference known, detectors not fitted yet
    READY = "ready"


class Admission(enum.Enum):
    """What a new prediction event became."""

    DUPLICATE = "duplicate"  # held already (a reference event or one in a window not yet stored)
    REFERENCE = "reference"  # collected into the warm-up reference
    ON_TIME = "on_time"  # added to its window
    LATE = "late"  # its window was closed: added to the window still open


@dataclass
class ReferenceState:
    """The model's reference: read from a file or the store, or collected from the stream while warming up."""

    stored_id: int | None = None  # the stored reference the detectors are fitted on
    events: list[PredictionEvent] = field(default_factory=list)  # dropped once fitted
    count: int = 0  # how many events it had when they were dropped
    # Ids of reference events: after a restart the stream may deliver the warm-up events again, and they
    # are not window events.
    known_ids: frozenset[str] = frozenset()
    schema: FeatureSchema | None = None
    warmup: list[PredictionEvent] = field(default_factory=list)
    warmup_ids: set[str] = field(default_factory=set)
    warmup_offsets: OffsetFloor = field(default_factory=OffsetFloor)

    def absorb_duplicate(self, event_id: str, position: Position) -> bool:
        """Whether ``event_id`` is a reference event. A duplicate of a warm-up event not yet stored holds
        its offset back with the original's."""
        if event_id in self.warmup_ids:
            self.warmup_offsets.note(position)
            return True
        return event_id in self.known_ids

    def use(self, events: list[PredictionEvent]) -> None:
        """Take the reference's events, and learn the feature schema that window events must fit."""
        self.events = events
        self.schema = FeatureSchema.fit([e.features for e in events]) if events else None

    def fitted(self) -> None:
        """The detectors are fitted: the fitted state is what evaluation needs, and the events (megabytes
        per model) are stored."""
        self.known_ids = self.known_ids | self.warmup_ids
        self.count = len(self.events)
        self.events = []
        self.warmup = []
        self.warmup_offsets = OffsetFloor()

    def forget_warmup(self) -> None:
        """Drop the warm-up collected so far (a rebalance: it is read again)."""
        self.warmup.clear()
        self.warmup_ids.clear()
        self.warmup_offsets = OffsetFloor()

    @property
    def size(self) -> int:
        return self.count or len(self.events) or len(self.warmup)


@dataclass
class ModelRuntime:
    """Everything the pipeline holds for one model."""

    name: str
    settings: ModelSettings
    phase: ModelPhase = ModelPhase.WARMING_UP
    reference: ReferenceState = field(default_factory=ReferenceState)
    fitted: FittedDetectors = field(default_factory=FittedDetectors)
    windows: WindowAssigner = field(init=False)
    history: PersistenceHistory = field(init=False)
    duplicates: int = 0

    def __post_init__(self) -> None:
        self.windows = WindowAssigner(self.name, self.settings.window, self.settings.max_window_sample)
        self.history = PersistenceHistory.for_model(self.settings)

    # ------------------------------------------------------------------------------------ intake

    def check(self, event: PredictionEvent, now: float | None) -> None:
        """Raise IntakeError for an event the model refuses: stamped more than ``max_future_skew`` after
        ``now`` (None: no wall clock, as in a replay), or with features that do not fit the reference."""
        if now is not None and event.timestamp > now + self.settings.max_future_skew:
            raise IntakeError(
                f"timestamp {datetime.fromtimestamp(event.timestamp, UTC).isoformat()} is more than "
                f"{self.settings.max_future_skew:.0f} s in the future",
                event.model,
            )
        schema = self.reference.schema
        if schema is not None:
            problem = schema.validate(event.features)
            if problem is not None:
                raise IntakeError(
                    f"features do not match the reference schema of {event.model!r}: {problem}", event.model
                )

    def admit(self, event: PredictionEvent, position: Position) -> Admission:
        """Take a checked event: drop it as a duplicate, collect it into the reference, or window it."""
        if self.reference.absorb_duplicate(event.event_id, position) or self.windows.absorb_duplicate(
            event.event_id, position
        ):
            self.duplicates += 1
            return Admission.DUPLICATE
        if self.phase is ModelPhase.WARMING_UP:
            self._collect_reference(event, position)
            return Admission.REFERENCE
        return Admission.LATE if self.windows.assign(event, position) else Admission.ON_TIME

    def _collect_reference(self, event: PredictionEvent, position: Position) -> None:
        warmup = self.reference.warmup
        warmup.append(event)
        self.reference.warmup_ids.add(event.event_id)
        self.reference.warmup_offsets.note(position)
        if len(warmup) >= self.settings.reference.warmup_events:
            self.reference.use(warmup)
            self.phase = ModelPhase.FITTING
            log.info("model %s: reference of %d events captured from the stream", self.name, len(warmup))

    # --------------------------------------------------------------------------------- life cycle

    def reference_loaded(self) -> None:
        """A reference was read (from a file or the store): the detectors can be fitted."""
        if self.reference.events:
            self.phase = ModelPhase.FITTING

    def ready(self, fitted: FittedDetectors) -> None:
        """The detectors are fitted or loaded: windows are evaluated from now on."""
        self.fitted = fitted
        self.phase = ModelPhase.READY
        self.reference.fitted()

    def forget_uncommitted(self) -> None:
        """Drop what is not yet stored (a rebalance); windows being stored are kept."""
        self.windows.forget_open()
        self.fitted.stale = self.phase is ModelPhase.READY
        if self.reference.stored_id is None:
            self.reference.forget_warmup()
            if self.settings.reference.source == "warmup":
                self.phase = ModelPhase.WARMING_UP
                self.reference.events = []
                self.reference.schema = None

    # ------------------------------------------------------------------------------ bookkeeping

    def offset_floors(self) -> Iterator[OffsetFloor]:
        """The offsets held back by this model: its windows not yet stored, and a reference not yet stored."""
        for window in self.windows:
            yield window.offsets
        if self.phase is not ModelPhase.READY or self.reference.stored_id is None:
            yield self.reference.warmup_offsets

    @property
    def closing_events(self) -> int:
        """Events of closed windows that wait to be stored."""
        return sum(w.n_events for w in self.windows.closing)

    def status(self) -> dict[str, Any]:
        """Phase, windows, events waiting: for logs, the API and the demo."""
        return {
            "phase": self.phase.value,
            "open_windows": len(self.windows.open),
            "closing_windows": len(self.windows.closing),
            "open_events": sum(w.n_events for w in self.windows.open.values()),
            "reference_events": self.reference.size,
            "duplicates": self.duplicates,
            "fit_errors": dict(self.fitted.errors),
        }
