"""Logging set-up: human lines by default, JSON lines on request (``log.json_lines: true``)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """Let one record of a kind through per ``interval`` seconds, with a count of those held back.

    kafka-python logs every failed reconnect at ERROR, several a second while a broker is away; an operator
    needs one clear line now and then, not a flood.
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno)
        seen, held = self._last.get(key, (float("-inf"), 0))
        if record.created - seen < self.interval:
            self._last[key] = (seen, held + 1)
            return False
        self._last[key] = (record.created, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar messages in the last {self.interval:.0f} s held back)"
        return True


class NoLibraryTracebacks(logging.Filter):
    """Drop the traceback from a third-party library's record, keep its message.

    kafka-python logs a broken connection (a broker restarting, a proxy cutting the link) with the full stack
    of its network layer; the message says what happened, and a traceback in the daemon's log reads as a
    crash of Sentinel, which it is not. The daemon's own errors keep theirs.
    """

    def __init__(self, libraries: tuple[str, ...] = ("kafka",)) -> None:
        super().__init__()
        self.prefixes = tuple(f"{name}." for name in libraries)
        self.libraries = libraries

    def filter(self, record: logging.LogRecord) -> bool:
        from_library = record.name in self.libraries or record.name.startswith(self.prefixes)
        if from_library and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.msg} ({type(error).__name__}: {error})"
            record.exc_info = None
            record.exc_text = None
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at set-up (which may be closed)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = _StderrHandler()
    if json_lines:
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    if level != "DEBUG":
        handler.addFilter(NoLibraryTracebacks())  # on the handler: logger filters do not reach child loggers
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python and APScheduler are chatty at INFO; their warnings still show.
    for noisy in ("kafka", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # A tick that is still fitting makes the next ones skip (max_instances=1): expected, not a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    if level != "DEBUG":
        for name in (
            "kafka.net.manager",
            "kafka.net.connection",
            "kafka.conn",
            "kafka.client_async",
            "kafka.coordinator",
            "kafka.coordinator.consumer",
            "kafka.consumer.fetcher",
        ):
            logging.getLogger(name).addFilter(RepeatFilter())
