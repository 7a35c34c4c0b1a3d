"""Logging: JSON lines on request, repeated library errors held back."""

from __future__ import annotations

import json
import logging

from monitor.logs import JsonLineFormatter, RepeatFilter


def record(message: str, created: float, level: int = logging.ERROR) -> logging.LogRecord:
    rec = logging.LogRecord("kafka.net.manager", level, __file__, 1, message, None, None)
    rec.created = created
    return rec


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord(
            "sentinel.x", logging.ERROR, __file__, 1, "window %s failed", ("w1",), sys.exc_info()
        )
    document = json.loads(JsonLineFormatter().format(rec))
    assert document["level"] == "ERROR" and document["logger"] == "sentinel.x"
    assert document["message"] == "window w1 failed"
    assert "ValueError: boom" in document["exception"]
    assert document["time"].endswith("+00:00")


def test_repeat_filter_lets_one_through_per_interval_and_counts_the_rest() -> None:
    gate = RepeatFilter(interval=30)
    assert gate.filter(record("refused", 100.0))
    assert not gate.filter(record("refused", 101.0))
    assert not gate.filter(record("refused", 110.0))
    later = record("refused", 131.0)
    assert gate.filter(later)
    assert "2 similar messages" in later.getMessage()
