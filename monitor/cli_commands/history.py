"""``sentinel alerts`` and ``sentinel dead-letters``: the stored history, newest first, as a table or JSON.

Both only read: the database must exist and be migrated
(:func:`~monitor.cli_commands.database.open_existing`), and neither imports a detector.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from monitor.cli_commands import CommandError
from monitor.cli_commands.database import open_existing
from monitor.config import AppConfig
from monitor.settings_base import parse_duration
from storage import AlertRecord, DeadLetter
from storage.alert_store import SEVERITIES

__all__ = [
    "dead_letter_document",
    "list_alerts",
    "list_dead_letters",
    "parse_since",
    "payload_preview",
    "show",
]

PREVIEW_CHARS = 60  # of a dead letter's escaped payload in the table
Row = TypeVar("Row")


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``--since``: an RFC 3339 time (UTC when it has no offset), or a duration back from ``now``.

    >>> now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    >>> parse_since("2h", now).isoformat()
    '2026-01-02T10:00:00+00:00'
    >>> parse_since("2026-01-01T08:00:00", now).isoformat()
    '2026-01-01T08:00:00+00:00'
    """
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except ValueError:
            raise CommandError(f"--since {text!r} is not an RFC 3339 time or a duration") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)  # times are UTC in and out


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise CommandError("--limit must be at least 1")


def list_alerts(config: AppConfig, args: argparse.Namespace) -> int:
    """``sentinel alerts``: the alert history as a table, or as JSON as the API shows it."""
    from monitor.alerting.rendering import alert_document

    since = parse_since(args.since, datetime.now(UTC))
    severities = [s.strip() for s in args.severity.split(",") if s.strip()] if args.severity else None
    bad = [s for s in severities or [] if s not in SEVERITIES]
    if bad:
        raise CommandError(f"unknown severity {bad[0]!r}; use info, warning or critical")
    _check_limit(args.limit)
    with open_existing(config) as database:
        rows = database.alerts.list_alerts(
            model=args.model,
            detector=args.detector,
            state=args.state,
            severities=severities,
            since=since,
            limit=args.limit,
        )
    header = (
        f"{'id':>6}  {'last seen (UTC)':<19}  {'state':<8}  {'severity':<8}  {'count':>5}  "
        f"{'model':<20}  {'detector':<18}  title"
    )

    def table_lines(row: AlertRecord) -> list[str]:
        return [
            f"{row.id:>6}  {row.last_seen:%Y-%m-%d %H:%M:%S}  {row.state:<8}  {row.severity:<8}  "
            f"{row.count:>5}  {row.model:<20}  {row.detector:<18}  {row.title}"
        ]

    show(
        rows, as_json=args.json, document=alert_document, empty="no alerts", header=header, lines=table_lines
    )
    return 0


def list_dead_letters(config: AppConfig, args: argparse.Namespace) -> int:
    """``sentinel dead-letters``: the messages the intake refused, with why, where from and a safe preview."""
    since = parse_since(args.since, datetime.now(UTC))
    _check_limit(args.limit)
    with open_existing(config) as database:
        letters = database.store.dead_letters(limit=args.limit, model=args.model, since=since)
    header = (
        f"{'id':>6}  {'received (UTC)':<19}  {'model':<20}  {'topic/partition/offset':<24}  "
        f"{'bytes':>8}  reason"
    )

    def table_lines(letter: DeadLetter) -> list[str]:
        where = f"{letter.topic}/{_or_dash(letter.partition)}/{_or_dash(letter.offset)}"
        return [
            f"{letter.id:>6}  {letter.received_at:%Y-%m-%d %H:%M:%S}  {letter.model or '-':<20}  "
            f"{where:<24}  {letter.size:>8}  {letter.reason}",
            f"{'':>6}  {payload_preview(letter.raw, size=letter.size)}",
        ]

    show(
        letters,
        as_json=args.json,
        document=dead_letter_document,
        empty="no dead letters",
        header=header,
        lines=table_lines,
    )
    return 0


def show(
    rows: Sequence[Row],
    *,
    as_json: bool,
    document: Callable[[Row], dict[str, Any]],
    empty: str,
    header: str,
    lines: Callable[[Row], list[str]],
) -> None:
    """Print ``rows`` as a JSON list of documents, or as a table under ``header`` (``empty`` when none)."""
    if as_json:
        print(json.dumps([document(row) for row in rows], indent=2))
    elif not rows:
        print(empty)
    else:
        print(header)
        for row in rows:
            print("\n".join(lines(row)))


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def payload_preview(raw: bytes, *, size: int | None = None, chars: int = PREVIEW_CHARS) -> str:
    r"""The start of a payload, safe to print: control and non-ASCII bytes escaped, cut to ``chars``.

    ``size`` is the original length when ``raw`` holds only the first bytes of a message.

    >>> print(payload_preview(b'{"model": "m1"}\x1b[2J\xff'))
    {"model": "m1"}\x1b[2J\xff
    >>> payload_preview(b"x" * 100, chars=8)
    'xxxxxxxx... (100 bytes)'
    """
    size = len(raw) if size is None else size
    escaped = repr(bytes(raw))[2:-1]  # no byte reaches the terminal unescaped
    if len(escaped) <= chars and size == len(raw):
        return escaped
    return f"{escaped[:chars]}... ({size} bytes)"


def dead_letter_document(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as JSON: the fields of the HTTP API's ``GET /v1/dead-letters`` but its ``preview``
    (UTF-8 text), and the table's ``escaped_preview`` instead."""
    return {
        "id": letter.id,
        "received_at": letter.received_at.isoformat(),
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "model": letter.model,
        "reason": letter.reason,
        "size": letter.size,
        "truncated": letter.truncated,
        "key_base64": None if letter.key is None else base64.b64encode(letter.key).decode(),
        "raw_base64": base64.b64encode(letter.raw).decode(),
        "escaped_preview": payload_preview(letter.raw, size=letter.size),
    }
