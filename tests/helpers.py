"""Test helpers: configurations, digits traffic laid out on whole windows, and the real daemon's set-up.

The second half serves the tests that run ``sentinel run`` against the real broker (end to end, scale-out,
soak, faults): their settings, producing to a topic, waiting on a condition, and cleaning up the process.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monitor.config import DEFAULT_DETECTORS, AppConfig
from monitor.demo.data import live_events, reference_events
from tests.daemon_process import DaemonProcess

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


# ----------------------------------------------------------------------------------- the real daemon


def kafka_settings(bootstrap_servers: str, topic: str, **extra: Any) -> dict[str, Any]:
    """The daemon's ``kafka`` setting for a test's own topic, in a consumer group of the topic's own."""
    return {"bootstrap_servers": bootstrap_servers, "topic": topic, "group_id": f"g-{topic}", **extra}


def replay_settings(
    database_url: str,
    bootstrap_servers: str,
    topic: str,
    *,
    kafka: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Settings of a ``sentinel run`` that reads a test's events from ``topic``, plus ``extra`` sections.

    Windows close on event time only: the tests' events are in the past, so wall-clock closing would close
    windows early. Kafka retries back off from 0.2 s to 2 s, so a test that cuts the broker off waits for
    the reconnect, not for production back-off; ``kafka`` adds to the Kafka settings.
    """
    return {
        "database_url": database_url,
        "tick_interval": "0.3s",
        "close_on_wall_clock": False,
        "kafka": kafka_settings(
            bootstrap_servers, topic, retry_backoff_initial="0.2s", retry_backoff_max="2s", **(kafka or {})
        ),
        **extra,
    }


def file_references(workdir: Path, models: Sequence[str]) -> dict[str, Any]:
    """A ``models`` setting: each model with the digits reference written for it to ``workdir``."""
    return {
        name: {"reference": {"source": "file", "path": str(write_reference(workdir / f"{name}.jsonl", name))}}
        for name in models
    }


def produce_events(
    bootstrap_servers: str,
    topic: str,
    events: Sequence[dict[str, Any]],
    partition: Callable[[int, dict[str, Any]], int],
    **producer_options: Any,
) -> list[Any]:
    """Send the events as JSON keyed by their model, event ``i`` to ``partition(i, event)``; flush.

    Returns the send futures, resolved (their record metadata: partition and offset).
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **producer_options)
    try:
        futures = [
            producer.send(
                topic,
                value=json.dumps(event).encode(),
                key=event["model"].encode(),
                partition=partition(i, event),
            )
            for i, event in enumerate(events)
        ]
        producer.flush()
    finally:
        producer.close()
    return futures


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] = str
) -> None:
    """Poll ``predicate`` every 0.3 s; fail naming ``what`` (and ``log()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()}")


def log_tail(*daemons: DaemonProcess, chars: int = 4000) -> Callable[[], str]:
    """The end of each daemon's log, read when called (for a timeout's message)."""
    return lambda: "\n\n".join(daemon.log[-chars:] for daemon in daemons)


def running(daemon: DaemonProcess) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


@contextlib.contextmanager
def killed_if_left(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The daemon for the block; whatever of it still runs when the block ends (a failure) is SIGKILLed."""
    try:
        yield daemon
    finally:
        if running(daemon):
            daemon.kill()
