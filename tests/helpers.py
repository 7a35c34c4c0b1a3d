"""Test helpers: configurations and digits traffic laid out on whole windows."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.config import DEFAULT_DETECTORS, AppConfig
from monitor.demo.data import live_events, reference_events

MODEL = "digits"
T0 = 1_795_000_200.0  # a window boundary for 60 s and 5 min windows


def only_detectors(**detectors: Any) -> dict[str, Any]:
    """A model's ``detectors`` setting: these detectors on (with their parameters), the other defaults off."""
    return {**{d: False for d in DEFAULT_DETECTORS}, **detectors}


def make_config(
    database_url: str,
    *,
    reference: Path | None = None,
    warmup: int = 800,
    window: float = 60.0,
    min_events: int = 30,
    detectors: dict[str, Any] | None = None,
    **extra: Any,
) -> AppConfig:
    model: dict[str, Any] = {
        "window": window,
        "allowed_lateness": 5,
        "min_events": min_events,
        # The foundation tests watch vae_anomaly alone unless told otherwise.
        "detectors": detectors if detectors is not None else only_detectors(vae_anomaly={"max_epochs": 80}),
        "reference": {"source": "file", "path": str(reference)}
        if reference
        else {"source": "warmup", "warmup_events": warmup},
    }
    return AppConfig.model_validate({"database_url": database_url, "models": {MODEL: model}, **extra})


def write_reference(path: Path, model: str = MODEL) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in reference_events(model)) + "\n")
    return path


def windowed_traffic(
    plan: Sequence[bool],
    *,
    per_window: int = 200,
    window: float = 60.0,
    start: float = T0,
    model: str = MODEL,
    prefix: str = "w",
) -> list[dict[str, Any]]:
    """``per_window`` events in each window of ``plan``; True marks a window of corrupted inputs."""
    events: list[dict[str, Any]] = []
    for index, corrupt in enumerate(plan):
        events += live_events(
            model,
            per_window,
            start=start + index * window + 0.01,
            spacing=(window - 0.1) / per_window,
            id_prefix=f"{prefix}{index}-",
            corrupt=corrupt,
            seed=zlib.crc32(f"{prefix}{index}".encode()),
        )
    return events


def to_jsonl(path: Path, events: Sequence[dict[str, Any] | bytes]) -> Path:
    with path.open("wb") as handle:
        for event in events:
            handle.write(event if isinstance(event, bytes) else json.dumps(event).encode())
            handle.write(b"\n")
    return path
