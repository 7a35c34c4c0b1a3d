"""The two clocks Sentinel injects wherever a decision depends on the time, so tests never sleep.

A leaf module: it imports nothing from ``monitor``.

``WallClock`` gives an aware UTC datetime (the alert lifecycle and the delivery worker, whose times are
stored); ``EpochClock`` gives unix seconds as a float (the pipeline, which compares them with event times).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["EpochClock", "WallClock", "utcnow"]

WallClock = Callable[[], datetime]
EpochClock = Callable[[], float]


def utcnow() -> datetime:
    """The current time, aware UTC (the default :data:`WallClock`)."""
    return datetime.now(UTC)
