"""Cursor paging: the opaque ``next_cursor`` of the alert and window-result lists, and the ids inside them.

A page asks the store for one row more than it shows; that row only tells whether a next page exists. The
cursor names the last row shown by its keyset (an alert id; a window start and result id), so rows that
arrive between two requests never shift later pages. Cursors are base64 to keep clients from building them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from monitor.api.errors import bad_param
from storage import WindowResultRecord

__all__ = [
    "alert_cursor",
    "from_micros",
    "next_page",
    "parse_alert_cursor",
    "parse_id",
    "parse_window_cursor",
    "to_micros",
    "window_cursor",
]

Row = TypeVar("Row")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INVALID_CURSOR = "invalid cursor (pass back a next_cursor unchanged)"


def next_page(
    rows: Sequence[Row], limit: int, cursor_of: Callable[[Row], str]
) -> tuple[list[Row], str | None]:
    """The first ``limit`` of ``rows`` (fetched as ``limit + 1``) and the cursor to the next page, if any."""
    shown = list(rows[:limit])
    return shown, cursor_of(shown[-1]) if len(rows) > limit else None


def alert_cursor(alert_id: int) -> str:
    """The cursor of the page after the alert ``alert_id`` (alerts are paged newest id first)."""
    return _encode(f"a:{alert_id}")


def parse_alert_cursor(cursor: str) -> int:
    """The alert id in ``cursor``; a 422 naming the parameter when it is not an alert cursor."""
    try:
        kind, _, value = _decode(cursor).partition(":")
        if kind != "a":
            raise ValueError("wrong kind")
        return parse_id(value)
    except ValueError:
        raise bad_param("query", "cursor", _INVALID_CURSOR) from None


def window_cursor(result: WindowResultRecord) -> str:
    """The cursor of the page after ``result`` (latest window first, then id descending)."""
    return _encode(f"w:{to_micros(result.window_start)}:{result.id}")


def parse_window_cursor(cursor: str) -> tuple[datetime, int]:
    """The (window start, result id) keyset in ``cursor``; a 422 when it is not a window cursor."""
    try:
        kind, micros, last_id = _decode(cursor).split(":")
        if kind != "w":
            raise ValueError("wrong kind")
        return from_micros(int(micros)), parse_id(last_id)
    except (ValueError, OverflowError, OSError):
        raise bad_param("query", "cursor", _INVALID_CURSOR) from None


def parse_id(text: str) -> int:
    """A database id from a cursor: a 64-bit positive integer (larger ones would fail in SQL, not here)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError("out of range")
    return value


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch: exact (a float timestamp would round)."""
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The UTC time ``micros`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def _encode(text: str) -> str:
    # Opaque to clients: they must pass it back, not construct it.
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor") from exc
