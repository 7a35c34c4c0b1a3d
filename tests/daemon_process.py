"""Run ``sentinel run`` as a real process and watch its log, for the end-to-end tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml


class DaemonProcess:
    """A ``sentinel run`` child process whose stderr lines are collected as they come."""

    def __init__(self, config: dict[str, object], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = workdir / f"sentinel-{time.monotonic_ns()}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        # Only the test's own configuration counts; the tests' key for sealing webhook secrets is kept.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SENTINEL_") or k == "SENTINEL_ALERTING__SECRET_KEY"
        }
        self.env.update(env or {})
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> DaemonProcess:
        # The same entrypoint as the container image: `sentinel run`.
        sentinel = Path(sys.executable).with_name("sentinel")
        self.process = subprocess.Popen(
            [str(sentinel), "run", "--config", str(self.config_path)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def wait_for(self, fragment: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        for line in list(self.lines):
            if fragment in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.process is not None and self.process.poll() is not None:
                    break
                continue
            if fragment in line:
                return line
        raise AssertionError(
            f"no log line with {fragment!r} within {timeout} s; log:\n" + "\n".join(self.lines[-40:])
        )

    def wait_for_count(self, fragment: str, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(fragment) < count:
            if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                raise AssertionError(
                    f"fewer than {count} log lines with {fragment!r}; log:\n" + self.log[-4000:]
                )
            time.sleep(0.1)

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)
