"""The ``sentinel`` command line: ``run`` (the daemon), ``replay``, ``demo``, ``alerts``, ``dead-letters`` and
``migrate``.

This module parses and dispatches; what each command does is in :mod:`monitor.cli_commands`. The daemon, the
pipeline and the demo, which import every detector (torch, scipy: seconds), are imported only by the commands
that run them, so ``--help``, ``--version``, ``alerts``, ``dead-letters`` and ``migrate`` answer at once.
Detector parameters are checked (by building each detector) only for the commands that run detectors.

Exit status: 0 done; 2 a usage or configuration error, named; 3 a database error; 130 interrupted; 141 the
reader of the output went away (``sentinel alerts --json | head -1``), as for a shell tool ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.cli_commands import CommandError
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.cli_commands.replay import format_window, replay
    from monitor.config import AppConfig

__all__ = ["build_parser", "format_window", "main", "replay"]

USAGE_ERROR = 2
DATABASE_ERROR = 3
INTERRUPTED = 130
OUTPUT_CLOSED = 128 + 13  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe ended

CONFIG_HELP = "YAML configuration file (default: $SENTINEL_CONFIG; SENTINEL_* variables override it)"
DB_HELP = (
    "database URL, overriding the configuration: sqlite:///relative/path.db, sqlite:////absolute/path.db "
    "or postgresql+psycopg://user:password@host/name"
)
EPILOG = (
    "exit status: 0 done, 2 usage or configuration error, 3 database error, 130 interrupted, "
    "141 output pipe closed"
)
# Commands that run detectors: only they check every detector parameter by building the detector.
RUNS_DETECTORS = frozenset({"run", "replay"})


def _package_version() -> str:
    try:
        return version("sentinel-monitor")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--db", metavar="URL", help=DB_HELP)


def _add_history_filters(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--model", help=f"only the {what} of this model id")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="RFC 3339 time (UTC if no offset), or a duration back from now: 2h, 1d",
    )
    parser.add_argument(
        "--limit", type=int, default=50, help=f"at most this many {what}, newest first (default 50)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``sentinel`` argument parser; every argument has its help text."""
    parser = argparse.ArgumentParser(
        prog="sentinel", description="Watch deployed ML models for drift and attack.", epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"sentinel {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    run = sub.add_parser("run", help="the daemon: consume, window, detect, store", epilog=EPILOG)
    run.add_argument("--config", type=Path, help=CONFIG_HELP)

    replay_ = sub.add_parser("replay", help="feed a JSONL file of events through the pipeline, then exit")
    replay_.add_argument("file", type=Path, help="JSONL file, one prediction-log event per line")
    _add_source(replay_)
    replay_.add_argument("--json", action="store_true", help="print each stored window result as JSON")

    demo = sub.add_parser(
        "demo", help="the main job on embedded defaults: broker, SQLite, a model under attack"
    )
    demo.add_argument("--fast", action="store_true", help="shorter windows and phases")
    demo.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="use this Kafka instead of starting the embedded broker",
    )
    demo.add_argument("--db", metavar="URL", help="database URL (default: SQLite in ./sentinel-demo)")

    alerts = sub.add_parser("alerts", help="query the alert history", epilog=EPILOG)
    _add_source(alerts)
    _add_history_filters(alerts, "alerts")
    alerts.add_argument("--detector", help="only the alerts of this detector id, e.g. feature_drift")
    alerts.add_argument("--state", choices=["firing", "resolved"], help="only firing or only resolved alerts")
    alerts.add_argument("--severity", help="info, warning or critical; several separated by commas")
    alerts.add_argument("--json", action="store_true", help="the alerts as JSON, as the API shows them")

    letters = sub.add_parser(
        "dead-letters", help="list the messages the intake refused, with the reason", epilog=EPILOG
    )
    _add_source(letters)
    _add_history_filters(letters, "dead letters")
    letters.add_argument(
        "--json", action="store_true", help="as JSON, with the raw bytes in base64 (raw_base64)"
    )

    mig = sub.add_parser("migrate", help="create or upgrade the database schema", epilog=EPILOG)
    _add_source(mig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sentinel`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    # Imported once the arguments are parsed: --help and --version need no database or settings code.
    from storage import StorageError

    try:
        status = _dispatch(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try and not at exit
        return status
    except BrokenPipeError:
        # Python's advice (the signal module's notes on SIGPIPE): point stdout at devnull, so that the
        # interpreter's final flush does not raise again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OUTPUT_CLOSED
    except (CommandError, ConfigError) as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except StorageError as exc:
        print(f"sentinel: database error: {exc}", file=sys.stderr)
        return DATABASE_ERROR
    except KeyboardInterrupt:
        return INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    from monitor.cli_commands.database import database_url
    from monitor.logs import configure_logging

    if args.command == "demo":
        from monitor.demo.runner import run_demo

        url = database_url("", args.db) if args.db else None
        return run_demo(fast=args.fast, bootstrap_servers=args.bootstrap_servers, database_url=url)
    config = _config(args)
    configure_logging(config.log.level, config.log.json_lines)
    if args.command == "run":
        from monitor.daemon import Daemon

        daemon = Daemon(config)
        daemon.install_signal_handlers()
        return daemon.run()
    if args.command == "replay":
        from monitor.cli_commands.replay import replay as replay_file

        return replay_file(args.file, config, as_json=args.json)
    if args.command == "migrate":
        from monitor.config import redact_url
        from monitor.database import open_store

        with open_store(config) as database:
            database.migrate()
        print(f"database schema is up to date ({redact_url(config.database_url)})")
        return 0
    from monitor.cli_commands import history

    if args.command == "alerts":
        return history.list_alerts(config, args)
    if args.command == "dead-letters":
        return history.list_dead_letters(config, args)
    raise AssertionError(f"unhandled command {args.command}")


def _config(args: argparse.Namespace) -> AppConfig:
    """The configuration of the command, ``--db`` applied and checked before anything connects."""
    from monitor.cli_commands.database import check_sqlite_directory, database_url
    from monitor.config import load_config

    config = load_config(getattr(args, "config", None), check_detector_params=args.command in RUNS_DETECTORS)
    url = database_url(config.database_url, getattr(args, "db", None))
    check_sqlite_directory(url)
    return config.model_copy(update={"database_url": url})


def __getattr__(name: str) -> Any:
    # ``replay`` and ``format_window`` stay importable from here without every command importing the pipeline.
    if name in ("replay", "format_window"):
        from monitor.cli_commands import replay as replay_module

        return getattr(replay_module, name)
    raise AttributeError(f"module 'monitor.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
