"""The building blocks every settings section shares: the strict model base and the duration type.

A leaf module: it imports nothing from ``monitor``, so :mod:`monitor.config` (the whole file) and the sections
defined beside their code (:mod:`monitor.alerting.settings`, :mod:`monitor.api.settings`) can all build on
it without importing each other back.

Examples
--------
>>> class Section(StrictSettings):
...     interval: Duration = 60.0
>>> Section.model_validate({"interval": "5m"}).interval
300.0
>>> parse_duration("500ms")
0.5
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["Duration", "StrictSettings", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"300"``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as '60s', '5m' or 300 (got {value!r})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be a duration such as '60s', '5m' or 300 (got {value!r})")
    if not seconds > 0:
        raise ValueError(f"must be a positive duration such as '60s', '5m' or 300 (got {value!r})")
    return seconds


# A positive number of seconds, written as a number or with a unit ("60s", "5m").
Duration = Annotated[float, BeforeValidator(parse_duration)]


class StrictSettings(BaseModel):
    """A settings section: unknown keys are errors (a typo must not be ignored) and values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
