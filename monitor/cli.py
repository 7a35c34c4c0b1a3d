"""The ``sentinel`` command line: ``run`` (the daemon), ``replay``, ``demo``, ``alerts`` and ``migrate``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from detectors.base import DetectionResult
from monitor.config import AppConfig, load_config, redact_url
from monitor.database import open_store
from monitor.errors import ConfigError
from monitor.logs import configure_logging
from monitor.pipeline import ClosedWindow, Pipeline, RawMessage
from monitor.windows import Position
from storage import StorageError

log = logging.getLogger("sentinel.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel", description="Watch deployed ML models for drift and attack."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the daemon: consume, window, detect, store")
    run.add_argument("--config", type=Path, help="YAML configuration file (or SENTINEL_CONFIG)")

    replay = sub.add_parser("replay", help="feed a JSONL file of events through the pipeline, then exit")
    replay.add_argument("file", type=Path)
    replay.add_argument("--config", type=Path)
    replay.add_argument("--db", help="database URL (overrides the configuration)")
    replay.add_argument("--json", action="store_true", help="print each stored window result as JSON")

    demo = sub.add_parser(
        "demo", help="the main job on embedded defaults: broker, SQLite, a model under attack"
    )
    demo.add_argument("--fast", action="store_true", help="shorter windows and phases")
    demo.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    demo.add_argument("--db", help="database URL (default: SQLite in ./sentinel-demo)")

    alerts = sub.add_parser("alerts", help="query the alert history")
    alerts.add_argument("--config", type=Path)
    alerts.add_argument("--db", help="database URL (overrides the configuration)")
    alerts.add_argument("--model")
    alerts.add_argument("--detector")
    alerts.add_argument("--state", choices=["firing", "resolved"])
    alerts.add_argument("--severity", help="info, warning or critical; several separated by commas")
    alerts.add_argument("--since", help="RFC 3339 time, or a duration back from now such as 2h or 1d")
    alerts.add_argument("--limit", type=int, default=50)
    alerts.add_argument("--json", action="store_true", help="the alerts as JSON, as the API shows them")

    mig = sub.add_parser("migrate", help="create or upgrade the database schema")
    mig.add_argument("--config", type=Path)
    mig.add_argument("--db", help="database URL (overrides the configuration)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from monitor.demo.runner import run_demo

            return run_demo(fast=args.fast, bootstrap_servers=args.bootstrap_servers, database_url=args.db)
        config = _config(args)
        configure_logging(config.log.level, config.log.json_lines)
        if args.command == "run":
            from monitor.daemon import Daemon

            daemon = Daemon(config)
            daemon.install_signal_handlers()
            return daemon.run()
        if args.command == "replay":
            return replay(args.file, config, as_json=args.json)
        if args.command == "migrate":
            with open_store(config) as database:
                database.migrate()
            print(f"database schema is up to date ({redact_url(config.database_url)})")
            return 0
        if args.command == "alerts":
            return _alerts(config, args)
    except ConfigError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"sentinel: database error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _config(args: argparse.Namespace) -> AppConfig:
    config = load_config(getattr(args, "config", None))
    db = getattr(args, "db", None)
    if db:
        config = config.model_copy(update={"database_url": db})
    return config


def replay(path: Path, config: AppConfig, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Feed a JSONL file through the pipeline on event time only, close every window, exit."""
    stream = out if out is not None else sys.stdout
    database = open_store(config)
    database.migrate()
    store = database.store

    def show(closed: ClosedWindow) -> None:
        print(format_window(closed, as_json=as_json), file=stream)

    pipeline = Pipeline(config, store, live=False, on_window=show)
    try:
        handle = path.open("rb")
    except OSError as exc:
        print(f"sentinel: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    with handle:
        for number, line in enumerate(handle):
            pipeline.ingest(RawMessage(line.rstrip(b"\r\n"), Position(str(path), 0, number)))
            if number % 200 == 0:
                pipeline.flush()
                pipeline.fit_pending()
                pipeline.close_due()
    pipeline.flush()
    pipeline.fit_pending()
    pipeline.close_due(final=True)
    counters = pipeline.counters
    print(
        f"replayed {counters['consumed']} messages: {counters['accepted']} accepted, "
        f"{counters['rejected']} dead-lettered, {counters['duplicates']} duplicates, {counters['late']} late",
        file=sys.stderr,
    )
    return 0


def format_window(closed: ClosedWindow, *, as_json: bool = False) -> str:
    """One line per stored window: its span, count and each detector's verdict."""
    stored = closed.stored
    if as_json:
        return json.dumps(
            {
                "model": stored.model,
                "window_start": stored.start.isoformat(),
                "window_end": stored.end.isoformat(),
                "n_events": stored.n_events,
                "results": [
                    {
                        "detector": r.detector,
                        "status": r.status.value,
                        "statistic": r.statistic,
                        "threshold": r.threshold,
                        "p_value": r.p_value,
                        "reason": r.reason,
                    }
                    for r in closed.results
                ],
            }
        )
    alerting = [r for r in closed.results if r.status.value == "alert"]
    skipped = [r for r in closed.results if r.status.value == "skipped"]
    quiet = [r.detector for r in closed.results if r.status.value == "ok"]
    parts = [
        f"{r.detector} ALERT p={r.p_value:.2g}{_evidence_hint(r)}"
        if r.p_value is not None
        else f"{r.detector} ALERT"
        for r in alerting
    ]
    if quiet:
        parts.append(f"ok: {', '.join(quiet)}")
    parts += [f"{r.detector} skipped ({r.reason})" for r in skipped]
    return (
        f"{stored.model} {stored.start:%Y-%m-%d %H:%M:%S}-{stored.end:%H:%M:%S} n={stored.n_events}  "
        + "; ".join(parts)
    )


def _evidence_hint(result: DetectionResult) -> str:
    """A few words of the evidence: what moved, or how much of the window was anomalous."""
    evidence = result.evidence
    drifted = evidence.get("drifted")
    if isinstance(drifted, list) and drifted:
        names = ", ".join(str(d.get("feature")) for d in drifted[:3] if isinstance(d, dict))
        more = f" +{len(drifted) - 3}" if len(drifted) > 3 else ""
        return f" ({names}{more})"
    if result.detector == "vae_anomaly" and result.statistic is not None:
        return f" ({result.statistic:.0%} of inputs anomalous)"
    if "window_accuracy" in evidence and "reference_accuracy" in evidence:
        return f" (accuracy {evidence['window_accuracy']:.2f} vs {evidence['reference_accuracy']:.2f})"
    return ""


def _alerts(config: AppConfig, args: argparse.Namespace) -> int:
    """``sentinel alerts``: the alert history, newest first, as a table or as JSON."""
    from datetime import UTC, datetime, timedelta

    from monitor.alerting import alert_document
    from monitor.settings_base import parse_duration

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            try:
                since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
            except ValueError:
                problem = f"--since {args.since!r} is not an RFC 3339 time or a duration"
                print(f"sentinel: {problem}", file=sys.stderr)
                return 2
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # times are UTC in and out
    severities = [s.strip() for s in args.severity.split(",") if s.strip()] if args.severity else None
    bad = [s for s in severities or [] if s not in ("info", "warning", "critical")]
    if bad:
        print(f"sentinel: unknown severity {bad[0]!r}; use info, warning or critical", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("sentinel: --limit must be at least 1", file=sys.stderr)
        return 2
    with open_store(config) as database:
        rows = database.alerts.list_alerts(
            model=args.model,
            detector=args.detector,
            state=args.state,
            severities=severities,
            since=since,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([alert_document(row) for row in rows], indent=2))
        return 0
    if not rows:
        print("no alerts")
        return 0
    print(
        f"{'id':>6}  {'last seen (UTC)':<19}  {'state':<8}  {'severity':<8}  {'count':>5}  "
        f"{'model':<20}  {'detector':<18}  title"
    )
    for row in rows:
        print(
            f"{row.id:>6}  {row.last_seen:%Y-%m-%d %H:%M:%S}  {row.state:<8}  {row.severity:<8}  "
            f"{row.count:>5}  {row.model:<20}  {row.detector:<18}  {row.title}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
