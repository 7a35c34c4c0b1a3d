"""``sentinel replay``: a JSONL file of events through the pipeline on event time, one line per stored window.

This is the one command module that imports the pipeline, and with it every detector (torch, scipy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from detectors.base import DetectionResult
from monitor.config import AppConfig
from monitor.database import open_store
from monitor.pipeline import ClosedWindow, Pipeline, RawMessage
from monitor.windows import Position

__all__ = ["format_window", "replay"]


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
