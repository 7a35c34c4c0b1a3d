"""Records turned into column values, checked before any SQL runs, so that a bad record fails at once.

Pure functions: no session, no I/O. They also make values storable on both backends (NaN, NumPy
scalars, enums).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any

from storage import models as orm
from storage.records import DetectorStateRow, WindowRecord
from storage.session import check_name

__all__ = ["RESULT_STATUSES", "anomaly_values", "check_state_row", "json_safe", "result_values"]

RESULT_STATUSES = frozenset({"ok", "alert", "skipped"})


def check_state_row(row: DetectorStateRow) -> None:
    """A detector state's key fits its columns."""
    check_name(row.detector, "detector", orm.DETECTOR_NAME_LENGTH)
    check_name(row.params_hash, "params_hash", orm.HASH_LENGTH)


def result_values(record: WindowRecord) -> list[dict[str, Any]]:
    """Validated column values for the record's results (checked before any SQL runs)."""
    values: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in record.results:
        detector = _text(r.detector)
        check_name(detector, "detector", orm.DETECTOR_NAME_LENGTH)
        if detector in seen:
            raise ValueError(f"window {record.start.isoformat()} has two results for detector {detector!r}")
        seen.add(detector)
        status = _text(r.status)
        if status not in RESULT_STATUSES:
            raise ValueError(f"result status must be one of {sorted(RESULT_STATUSES)}, got {status!r}")
        values.append(
            {
                "detector": detector,
                "threat": _text(r.threat),
                "status": status,
                "statistic": _float_or_none(r.statistic),
                "threshold": _float_or_none(r.threshold),
                "p_value": _float_or_none(r.p_value),
                "n_events": int(r.n_events),
                "evidence": json_safe(r.evidence or {}),
                "reason": r.reason,
            }
        )
    return values


def anomaly_values(record: WindowRecord) -> list[dict[str, Any]]:
    """Column values for the record's anomalies, all but ``window_id``."""
    values = []
    for a in record.anomalies:
        score = float(a.score)
        if math.isnan(score):
            raise ValueError(f"anomaly score of event {a.event_id!r} is NaN")
        values.append(
            {
                "model": record.model,
                "detector": _text(a.detector),
                "event_id": a.event_id,
                "score": score,
                "event_time": a.event_time,
                "client_id": a.client_id,
                "features": None if a.features is None else json_safe(a.features),
            }
        )
    return values


def _text(value: object) -> str:
    """Enum members as their value (psycopg would otherwise store an Enum's *name*)."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _float_or_none(value: float | None) -> float | None:
    """A plain float; NaN becomes NULL, as SQLite would store it anyway (PostgreSQL would keep NaN)."""
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def json_safe(value: Any) -> Any:
    """Make ``value`` storable as JSON on both backends.

    NumPy scalars and arrays become Python numbers and lists; NaN and infinities become null
    (PostgreSQL's JSON rejects them); enums become their values, dates ISO strings, mapping
    keys strings. Anything else is stored as its ``str()`` rather than losing the whole window.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        return json_safe(value.tolist())
    if hasattr(value, "item"):
        return json_safe(value.item())
    return str(value)
