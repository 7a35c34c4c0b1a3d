"""The command line answers at once: the read-only commands import neither torch nor scipy, every argument
has its help text, and a closed output pipe ends a command quietly."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.cli import OUTPUT_CLOSED, build_parser
from storage import DeadLetterIn, Store, make_engine, migrate

SENTINEL = str(Path(sys.executable).with_name("sentinel"))
HEAVY = ("torch", "scipy")


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}


def heavy_modules_after(code: str) -> list[str]:
    """Which of torch and scipy a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=clean_environment(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture
def migrated_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sentinel.db'}"
    migrate(url)
    return url


def test_importing_the_cli_imports_neither_torch_nor_scipy() -> None:
    assert heavy_modules_after("import monitor.cli") == []


def test_help_imports_neither_torch_nor_scipy() -> None:
    code = "from monitor.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("command", ["alerts", "dead-letters", "migrate"])
def test_commands_that_run_no_detector_import_neither_torch_nor_scipy(
    migrated_url: str, tmp_path: Path, command: str
) -> None:
    # A detector with parameters in the configuration: checking them would build the detector.
    config = tmp_path / "sentinel.yaml"
    config.write_text("defaults:\n  detectors:\n    vae_anomaly: {quantile: 0.995}\n")
    argv = [command, "--config", str(config), "--db", migrated_url]
    code = f"from monitor.cli import main\nassert main({argv!r}) == 0"
    assert heavy_modules_after(code) == []


def test_version() -> None:
    result = subprocess.run([SENTINEL, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("sentinel ") and result.stdout.split()[1][0].isdigit()


def _arguments_without_help(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    missing.append(f"{prefix} {choice.dest}")
            for name, subparser in action.choices.items():
                missing += _arguments_without_help(subparser, f"{prefix} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_argument_has_help_text() -> None:
    assert _arguments_without_help(build_parser(), "sentinel") == []


# ---------------------------------------------------------------------------------------- closed pipes


def _many_dead_letters(url: str, count: int) -> None:
    engine = make_engine(url)
    try:
        received = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        rows = [
            DeadLetterIn("events", 0, n, None, b"x" * 500, "invalid JSON", "m1", received)
            for n in range(count)
        ]
        Store(engine).add_dead_letters(rows)
    finally:
        engine.dispose()


def test_a_reader_that_stops_early_ends_the_command_quietly(migrated_url: str) -> None:
    # Far more than a pipe buffer holds, so the command is still writing when `head` has gone.
    _many_dead_letters(migrated_url, 600)
    command = f"{SENTINEL} dead-letters --json --limit 600 --db '{migrated_url}'"
    shell = f"{command} | head -1; echo status ${{PIPESTATUS[0]}} >&2"
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, env=clean_environment(), timeout=120
    )
    assert result.stdout == "[\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"status {OUTPUT_CLOSED}"


@pytest.mark.parametrize("command", ["alerts", "dead-letters"])
def test_a_pipe_closed_before_the_first_line_ends_the_command_quietly(
    migrated_url: str, command: str
) -> None:
    process = subprocess.Popen(
        [SENTINEL, command, "--json", "--db", migrated_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environment(),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the command has started up
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == OUTPUT_CLOSED
    assert stderr == ""
