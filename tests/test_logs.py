"""Logging: JSON lines on request, repeated library errors held back."""

from __future__ import annotations

import json
import logging

import pytest

from monitor.logs import JsonLineFormatter, RepeatFilter, configure_logging


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


def test_library_tracebacks_become_one_line_and_the_daemons_own_stay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO")
    try:
        try:
            raise ConnectionResetError("Connection reset by peer")
        except ConnectionResetError:
            logging.getLogger("kafka.net.transport").exception("Error receiving network data closing socket")
            logging.getLogger("sentinel.daemon").exception("crashed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    kafka_line = next(line for line in err.splitlines() if "kafka.net.transport" in line)
    assert "ConnectionResetError: Connection reset by peer" in kafka_line
    assert err.count("Traceback") == 1  # the daemon's own error keeps its traceback
    assert err.index("Traceback") > err.index("sentinel.daemon")
