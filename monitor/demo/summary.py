"""The demo's closing summary: per attack caught or missed, the false alarms, the counts, and summary.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from monitor.demo.alert_watcher import SeenAlert
from monitor.demo.assessment import Assessment, PhaseSpan
from monitor.demo.console import BOLD, DIM, GREEN, RED, YELLOW, Console
from monitor.demo.timeline import BENIGN_CLIENTS, FAST, MODEL, Pace


@dataclass(frozen=True)
class RunRecord:
    """What one run of the demo leaves to report, gathered once the daemon has stopped."""

    pace: Pace
    spans: Sequence[PhaseSpan]
    alerts: Sequence[SeenAlert]  # every alert the watcher saw
    deliveries: Sequence[dict[str, Any]]  # every webhook delivery the receiver got
    counters: dict[str, int]  # the pipeline's message counters (empty if it never started)
    repeating_clients: Sequence[str]  # benign clients that ran out of fresh inputs
    lag: float  # the sender's largest lag behind its schedule, seconds
    dashboard: str


def report(console: Console, assessment: Assessment, run: RunRecord, workdir: Path) -> None:
    """Print the summary and write it to ``workdir/summary.json``."""
    console.plain()
    console.plain("Summary", BOLD)
    _print_attacks(console, assessment, run.spans)
    _print_false_alarms(console, assessment)
    _print_counts(console, run, workdir)
    path = workdir / "summary.json"
    path.write_text(json.dumps(summary_document(assessment, run), indent=2) + "\n")
    console.plain(f"summary written to {path}")


def _print_attacks(console: Console, assessment: Assessment, spans: Sequence[PhaseSpan]) -> None:
    """One row per injected attack, then the other alerts that fired while each ran."""
    console.plain(
        f"{'attack':<23} {'expected detector':<18} {'subject':<16} {'caught':<6} {'window':>6} "
        f"{'after':>6}  {'alert':>5}  evidence"
    )
    windows_of = {s.phase.name: s.phase.windows for s in spans}
    for v in assessment.verdicts:
        if v.caught:
            console.plain(
                f"{v.phase:<23} {v.detector:<18} {v.subject:<16} {'yes':<6} "
                f"{f'{v.window}/{windows_of[v.phase]}':>6} {v.seconds:>5.1f}s  {'#' + str(v.alert_id):>5}  "
                f"{v.evidence}",
                GREEN,
            )
        else:
            console.plain(
                f"{v.phase:<23} {v.detector:<18} {v.subject:<16} {'MISSED':<6} {'-':>6} {'-':>6}  {'-':>5}",
                RED + BOLD,
            )
    console.plain(
        "(window: the attack's window whose result opened the alert, of the attack's windows; after: seconds "
        "from the attack's first event to the alert)",
        DIM,
    )
    console.plain(
        "\nalso fired while an attack ran (other indicators on the same traffic, or naming the attacker):"
    )
    for v in assessment.verdicts:
        if v.also:
            console.plain(f"  {v.phase:<23} " + _wrap(", ".join(v.also), 26))


def _print_false_alarms(console: Console, assessment: Assessment) -> None:
    """The false alarms' count, then one line per detector, phase and reason."""
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for alarm in assessment.false_alarms:
        by_reason.setdefault(
            f"{alarm['detector']} in phase {alarm['phase']!r}: {alarm['reason']}", []
        ).append(alarm)
    on_clean = sum(a["reason"] == "opened on a clean phase" for a in assessment.false_alarms)
    console.plain(
        f"\nfalse alarms: {len(assessment.false_alarms)} ({on_clean} opened on a clean phase, "
        f"{len(assessment.benign_named)} naming a benign client)",
        RED + BOLD if assessment.false_alarms else GREEN,
    )
    for text, group in by_reason.items():
        subjects = [a["subject"] for a in group if a["subject"]]
        names = f" ({', '.join(subjects[:8])}{' +' + str(len(subjects) - 8) if len(subjects) > 8 else ''})"
        ids = sorted(a["alert_id"] for a in group)
        console.plain(
            f"  {len(group):>2} x {text}{names if subjects else ''}; alerts #{ids[0]}"
            + (f"..#{ids[-1]}" if len(ids) > 1 else "")
        )


def _print_counts(console: Console, run: RunRecord, workdir: Path) -> None:
    """Deliveries, messages and alerts counted, with notes on anything that made the run less clean."""
    deliveries = run.deliveries
    console.plain(
        f"\nwebhook deliveries received: {len(deliveries)} ({_valid_signatures(deliveries)} with a valid "
        f"signature, {sum(d['status'] == 'firing' for d in deliveries)} firing, "
        f"{sum(d['status'] == 'resolved' for d in deliveries)} resolved)"
    )
    counters = run.counters
    if counters:
        console.plain(
            f"messages: {counters['consumed']} consumed, {counters['accepted']} accepted, "
            f"{counters['rejected']} dead-lettered (malformed, kept with their reason), "
            f"{counters['duplicates']} duplicates, {counters['late']} late"
        )
    if run.repeating_clients:
        console.plain(
            f"note: benign clients that ran out of fresh inputs and repeated: {sorted(run.repeating_clients)}"
        )
    if run.lag > 1.0:
        console.plain(f"note: the sender fell {run.lag:.1f} s behind its schedule (a busy machine)", YELLOW)
    console.plain(
        f"alerts opened: {len(run.alerts)}; the dashboard is gone with the daemon, the database stays: "
        f"sentinel alerts --db sqlite:///{workdir / 'sentinel.db'}"
    )


def summary_document(assessment: Assessment, run: RunRecord) -> dict[str, Any]:
    """The content of ``summary.json``: the run's settings, phases, verdicts, alerts and deliveries."""
    return {
        "model": MODEL,
        "fast": run.pace is FAST,
        "window_seconds": run.pace.window,
        "persistence": {"k": 2, "n": 3, "immediate_p": 1e-6, "resolve_after": 3},
        "dashboard_url": run.dashboard,
        "benign_clients": list(BENIGN_CLIENTS),
        "phases": [
            {
                "name": s.phase.name,
                "start": s.start,
                "end": s.end,
                "windows": s.phase.windows,
                "detector": s.phase.detector,
                "subject": s.phase.subject,
                "attacker": s.phase.attacker,
            }
            for s in run.spans
        ],
        "attacks": [asdict(v) for v in assessment.verdicts],
        "false_alarms": assessment.false_alarms,
        "benign_named": assessment.benign_named,
        "alerts": [asdict(a) for a in sorted(run.alerts, key=lambda a: a.id)],
        "webhook": {
            "received": len(run.deliveries),
            "valid_signatures": _valid_signatures(run.deliveries),
            "deliveries": list(run.deliveries),
        },
        "messages": run.counters,
        "max_send_lag_seconds": round(run.lag, 3),
        "benign_clients_repeating": sorted(run.repeating_clients),
    }


def _valid_signatures(deliveries: Sequence[dict[str, Any]]) -> int:
    return sum(d["signature_valid"] for d in deliveries)


def _wrap(text: str, indent: int, width: int = 110) -> str:
    """``text`` wrapped at commas to ``width`` columns, continuation lines indented by ``indent``."""
    lines, current = [], ""
    for part in text.split(", "):
        candidate = f"{current}, {part}" if current else part
        if current and indent + len(candidate) > width:
            lines.append(current + ",")
            current = part
        else:
            current = candidate
    lines.append(current)
    return ("\n" + " " * indent).join(lines)
