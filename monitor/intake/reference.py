"""Reference data of a model: read from a JSONL file or captured from the first events of the stream."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from detectors.base import Batch
from monitor.errors import ConfigError, IntakeError
from monitor.intake.parsing import PredictionEvent, parse_document, parse_message


def read_reference_file(path: Path, model: str) -> tuple[list[PredictionEvent], str]:
    """Parse a JSONL reference file; return its prediction events of ``model`` and the file's hash.

    A reference is the yardstick of every later alert, so a bad line is a configuration error, not a
    dead letter.
    """
    data = path.read_bytes()
    events: list[PredictionEvent] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = parse_message(line, max_bytes=len(line) + 1)
        except IntakeError as exc:
            raise ConfigError(
                [(f"models.{model}.reference.path", f"{path}:{number}: {exc.reason}")]
            ) from None
        if isinstance(event, PredictionEvent) and event.model == model:
            events.append(event)
    if not events:
        raise ConfigError(
            [(f"models.{model}.reference.path", f"{path} holds no prediction events of {model!r}")]
        )
    return events, hashlib.sha256(data).hexdigest()


def encode_events(events: Sequence[PredictionEvent]) -> bytes:
    """Events as gzip-compressed JSONL, for the reference table."""
    lines = (json.dumps(_as_document(event), separators=(",", ":"), sort_keys=True) for event in events)
    return gzip.compress("\n".join(lines).encode("utf-8"), mtime=0)


def decode_events(payload: bytes) -> list[PredictionEvent]:
    """The inverse of :func:`encode_events`."""
    events = []
    for line in gzip.decompress(payload).decode("utf-8").splitlines():
        event = parse_document(json.loads(line))
        assert isinstance(event, PredictionEvent)
        events.append(event)
    return events


def content_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _as_document(event: PredictionEvent) -> dict[str, object]:
    document = asdict(event)
    document["type"] = "prediction"
    if event.embedding is not None:
        document["embedding"] = list(event.embedding)
    return document


def to_batch(events: Iterable[PredictionEvent], labels: Sequence[str | None] | None = None) -> Batch:
    """The detector view of a list of events (labels may override the events' own)."""
    events = list(events)
    return Batch(
        event_ids=[event.event_id for event in events],
        features=[event.features for event in events],
        predictions=[event.prediction for event in events],
        labels=list(labels) if labels is not None else [event.label for event in events],
        client_ids=[event.client_id for event in events],
        timestamps=[event.timestamp for event in events],
        embeddings=[event.embedding for event in events],
        groups=[event.groups for event in events],
        streams=[event.stream for event in events],
    )
