"""Tumbling event-time windows of one model, with exact counts and a bounded sample.

A window ``[start, start + length)`` is aligned to the window length (``start`` is a multiple of it in epoch
seconds). Every event is counted exactly and keeps a small row (id, time, client, predicted class, label) for
the idempotency record; full events (features and all) are kept up to ``max_sample`` by reservoir sampling,
so memory per open window stays bounded however busy the model is.

Each window also remembers, per Kafka partition, the smallest offset it holds: the consumer may commit a
partition only below the smallest offset of any window not yet stored.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

from monitor.intake.parsing import PredictionEvent

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
