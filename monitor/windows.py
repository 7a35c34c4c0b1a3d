"""Tumbling event-time windows of one model: which window an event goes to, and when a window is due.

:class:`WindowAssigner` holds one model's open and closing windows. It drops events it holds already, tracks
event time per Kafka partition (the watermark), sends late events to the window still open, and says which
windows are due to close.

A window ``[start, start + length)`` is aligned to the window length (``start`` is a multiple of it in epoch
seconds). Every event is counted exactly and keeps a small row (id, time, client, predicted class, label) for
the idempotency record; full events (features and all) are kept up to ``max_sample`` by reservoir sampling,
so memory per open window stays bounded however busy the model is.

Each window also remembers, per Kafka partition, the smallest offset it holds: the consumer may commit a
partition only below the smallest offset of any window not yet stored.
"""

from __future__ import annotations

import logging
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from monitor.intake.parsing import PredictionEvent

# The pipeline's logger: this line was written by pipeline.py before windowing moved here, and log readers
# filter on the logger's name.
log = logging.getLogger("sentinel.pipeline")

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message came from: the unit of offset bookkeeping."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


def window_start(timestamp: float, length: float) -> float:
    """The aligned start of the window holding ``timestamp``."""
    return math.floor(timestamp / length) * length


class OffsetFloor:
    """The smallest offset per partition of a set of messages."""

    __slots__ = ("floors",)

    def __init__(self) -> None:
        self.floors: dict[TopicPartition, int] = {}

    def note(self, position: Position | None) -> None:
        if position is None:
            return
        current = self.floors.get(position.tp)
        if current is None or position.offset < current:
            self.floors[position.tp] = position.offset


@dataclass
class Window:
    """One open (or closing) window of one model."""

    model: str
    start: float
    end: float
    max_sample: int
    event_ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    clients: list[str | None] = field(default_factory=list)
    predicted: list[str | None] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    late: list[bool] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    # Reservoir sample of full events, as (position in the lists above, event).
    sample: list[tuple[int, PredictionEvent]] = field(default_factory=list)
    offsets: OffsetFloor = field(default_factory=OffsetFloor)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        # Seeded by model and start, so a replay of the same input keeps the same sample.
        self._rng = random.Random(zlib.crc32(f"{self.model}|{self.start}".encode()))

    @property
    def n_events(self) -> int:
        return len(self.event_ids)

    @property
    def n_late(self) -> int:
        return sum(self.late)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self.index

    def add(self, event: PredictionEvent, *, late: bool, position: Position | None) -> None:
        """Count one new event (the caller has checked it is not a duplicate)."""
        slot = len(self.event_ids)
        self.index[event.event_id] = slot
        self.event_ids.append(event.event_id)
        self.times.append(event.timestamp)
        self.clients.append(event.client_id)
        self.predicted.append(event.predicted)
        self.labels.append(event.label)
        self.late.append(late)
        self.offsets.note(position)
        # Algorithm R: the first max_sample events are kept, then each new one replaces a random
        # kept one with probability max_sample / seen, which keeps a uniform sample of all events.
        if len(self.sample) < self.max_sample:
            self.sample.append((slot, event))
        else:
            victim = self._rng.randrange(slot + 1)
            if victim < self.max_sample:
                self.sample[victim] = (slot, event)

    def set_label(self, event_id: str, label: str, position: Position | None) -> bool:
        """Attach a feedback label to an event of this window."""
        slot = self.index.get(event_id)
        if slot is None:
            return False
        self.labels[slot] = label
        self.offsets.note(position)
        return True

    def discard(self, event_ids: set[str]) -> None:
        """Remove events that turned out to be stored already (redelivered after a restart)."""
        if not event_ids:
            return
        keep = [slot for slot, event_id in enumerate(self.event_ids) if event_id not in event_ids]
        remap = {old: new for new, old in enumerate(keep)}
        self.event_ids = [self.event_ids[slot] for slot in keep]
        self.times = [self.times[slot] for slot in keep]
        self.clients = [self.clients[slot] for slot in keep]
        self.predicted = [self.predicted[slot] for slot in keep]
        self.labels = [self.labels[slot] for slot in keep]
        self.late = [self.late[slot] for slot in keep]
        self.index = {event_id: slot for slot, event_id in enumerate(self.event_ids)}
        self.sample = [(remap[slot], event) for slot, event in self.sample if slot in remap]

    def sampled_events(self) -> list[tuple[int, PredictionEvent]]:
        """The kept full events in arrival order, with their positions."""
        return sorted(self.sample, key=lambda item: item[0])


class WindowAssigner:
    """One model's windows: assigns each new event to its window and closes windows once they are due.

    The caller holds the pipeline's lock around every call; the assigner does no I/O.
    """

    def __init__(self, model: str, length: float, max_sample: int) -> None:
        self.model = model
        self.length = length
        self.max_sample = max_sample
        self.open: dict[float, Window] = {}
        # Taken out of ``open`` by :meth:`close_due`, and left here until the pipeline has stored them.
        self.closing: list[Window] = []
        self.closed_until: float | None = None  # end of the newest window closed; earlier events are late
        # Event-time progress: the newest event time per partition, and their minimum. One model's events may
        # come from several partitions read at different speeds; the slowest one says how far event time has
        # surely got, so a fast partition cannot close a window whose events are still coming on another.
        self.partition_marks: dict[TopicPartition, float] = {}
        self.watermark = float("-inf")
        self._spread_warned = False  # logged once that the model's events come from several partitions

    def __iter__(self) -> Iterator[Window]:
        """Every window not yet stored: the open ones, then the closing ones."""
        yield from self.open.values()
        yield from self.closing

    def absorb_duplicate(self, event_id: str, position: Position | None) -> bool:
        """Whether a window not yet stored holds ``event_id`` already. If so, the duplicate's position is
        noted on that window, so its offset is committed only once the window is stored."""
        for window in self:
            if event_id in window:
                window.offsets.note(position)
                return True
        return False

    def assign(self, event: PredictionEvent, position: Position) -> bool:
        """Add a new event to its window; whether it came late (its own window was closed already)."""
        start = window_start(event.timestamp, self.length)
        late = self.closed_until is not None and start < self.closed_until
        if late:
            # Its window is closed: the event goes into the window that is still open, counted as late.
            assert self.closed_until is not None
            start = window_start(self.closed_until, self.length)
        target = self.open.get(start)
        if target is None:
            target = self.open[start] = Window(self.model, start, start + self.length, self.max_sample)
        target.add(event, late=late, position=position)
        self._advance(event.timestamp, position.tp)
        return late

    def _advance(self, timestamp: float, tp: TopicPartition) -> None:
        """Move the partition's event-time mark, and the watermark with it."""
        if tp not in self.partition_marks and self.partition_marks and not self._spread_warned:
            # One replica handles this fine; with several, two replicas would each store part of the same
            # window (counts stay exact, but each evaluates only its share). Say so once.
            self._spread_warned = True
            log.warning(
                "model %s: events arrive on more than one partition (%s); with several replicas, key "
                "events by model id so that one replica owns each model's windows",
                self.model,
                ", ".join(f"{topic}[{part}]" for topic, part in (*self.partition_marks, tp)),
            )
        if timestamp > self.partition_marks.get(tp, float("-inf")):
            self.partition_marks[tp] = timestamp
            self.watermark = min(self.partition_marks.values())

    def attach_label(self, event_id: str, label: str, position: Position | None) -> bool:
        """Attach a feedback label to an event of an open window; whether one held it."""
        return any(window.set_label(event_id, label, position) for window in self.open.values())

    def close_due(self, *, now: float | None, lateness: float, final: bool = False) -> None:
        """Move the windows that are due from open to closing, oldest first.

        Due: event time (the watermark), or the wall clock ``now`` when windows also close on it, has passed
        the window's end plus ``lateness``. ``final`` closes every window (end of a replay).
        """
        horizon = self.watermark if now is None else max(self.watermark, now)
        for start in sorted(self.open):
            window = self.open[start]
            if not final and window.end + lateness > horizon:
                break
            del self.open[start]
            self.closing.append(window)
            self.closed_until = max(self.closed_until or window.end, window.end)

    def release(self, window: Window) -> None:
        """A closing window is stored (or held nothing new): it no longer holds offsets back."""
        self.closing.remove(window)

    def forget_open(self) -> None:
        """Drop the open windows and the event-time marks (a rebalance: what they held is read again)."""
        self.open.clear()
        # Partitions given up would hold event time back for good; the re-read rebuilds the marks.
        self.partition_marks.clear()
