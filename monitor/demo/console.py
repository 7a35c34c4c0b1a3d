"""The demo's live output: thread-safe, coloured lines on a terminal, and one line per closed window."""

from __future__ import annotations

import sys
import threading
import time

from detectors.base import Status
from monitor.pipeline import ClosedWindow

BOLD, RED, GREEN, YELLOW, CYAN, DIM, RESET = (
    "\033[1m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[36m",
    "\033[2m",
    "\033[0m",
)


class Console:
    """Thread-safe printing (the daemon's threads, the alert watcher and the webhook receiver all print),
    coloured only on a terminal, with the seconds since the traffic started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.color = sys.stdout.isatty()
        self.started: float | None = None

    def paint(self, text: str, code: str) -> str:
        """``text`` in the colour ``code`` on a terminal, as it is otherwise."""
        return f"{code}{text}{RESET}" if self.color else text

    def line(self, text: str, code: str = "") -> None:
        """Print ``text`` after the seconds since the traffic started (once it has)."""
        clock = "" if self.started is None else f"[{time.time() - self.started:6.1f}s] "
        with self._lock:
            print(self.paint(clock, DIM) + (self.paint(text, code) if code else text), flush=True)

    def plain(self, text: str = "", code: str = "") -> None:
        """Print ``text`` as it is: the introduction and the summary."""
        with self._lock:
            print(self.paint(text, code) if code else text, flush=True)


def window_line(closed: ClosedWindow) -> tuple[str, bool]:
    """One compact line per closed window: its span, its events, the detectors that alert and those held back
    by the persistence rule; and whether any detector alerts."""
    stored = closed.stored
    alerting = [r.detector for r in closed.results if r.status is Status.ALERT]
    held = [
        r.detector
        for r in closed.results
        if r.status is Status.OK and r.evidence.get("raw_status") == "alert"
    ]
    skipped = sum(r.status is Status.SKIPPED for r in closed.results)
    quiet = sum(r.status is Status.OK for r in closed.results) - len(held)
    parts = [f"window {stored.start:%H:%M:%S}-{stored.end:%H:%M:%S} n={stored.n_events:<4}"]
    parts.append("alert: " + (", ".join(alerting) if alerting else "-"))
    if held:
        parts.append("held (1 failing window; 2 of 3 alert): " + ", ".join(held))
    parts.append(f"{quiet} ok" + (f", {skipped} skipped" if skipped else ""))
    return "  ".join(parts[:1]) + "  " + " | ".join(parts[1:]), bool(alerting)
