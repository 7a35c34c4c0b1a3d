"""Checks of constructor arguments, shared by every detector.

Bad arguments fail in ``__init__`` with the valid range in the message (a ``TypeError`` for the wrong type,
a ``ValueError`` for a value out of range); :func:`detectors.registry.create_detector` prefixes the detector
id, so that a message in the logs says which configured detector is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_choice", "check_float", "check_int"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused), else a TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(
    name: str, value: Any, low: float, high: float, *, low_open: bool = True, high_open: bool = True
) -> float:
    """``value`` as a float if it lies in the interval (open at both ends unless told otherwise), else a
    TypeError/ValueError naming the interval."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (math.isfinite(number) and above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
