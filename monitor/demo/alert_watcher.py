"""The demo's view of the alert table: each alert printed as it fires and resolves, with its key evidence.

:class:`AlertWatcher` polls the table the alert engine writes and keeps a :class:`SeenAlert` per alert, what
the assessment of the run later matches against the injected attacks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.demo.console import BOLD, GREEN, RED, Console
from storage import AlertRecord, AlertStore

log = logging.getLogger("sentinel.demo")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def key_evidence(alert: AlertRecord) -> str:
    """A few words of the alert's evidence, in the terms of its detector."""
    d = alert.details if isinstance(alert.details, dict) else {}
    stat = alert.statistic
    detector = alert.detector
    if detector == "feature_drift" and isinstance(d.get("drifted"), list):
        names = [str(f.get("feature")) for f in d["drifted"] if isinstance(f, dict)]
        more = f" +{len(names) - 4}" if len(names) > 4 else ""
        return f"drifted: {', '.join(names[:4])}{more}"
    if detector == "vae_anomaly" and stat is not None:
        return f"{stat:.0%} of inputs anomalous"
    if detector == "performance" and "window_accuracy" in d:
        return f"accuracy {d['window_accuracy']:.2f} vs {d.get('reference_accuracy', float('nan')):.2f}"
    if detector == "label_consistency" and "disagreements" in d:
        return (
            f"{d['disagreements']} of {d.get('n_labelled')} labels disagree with their neighbours "
            f"(expected {d.get('expected', float('nan')):.0f})"
        )
    if detector == "group_outcome":
        window_rate, reference_rate = _number(d.get("window_rate")), _number(d.get("reference_value"))
        if window_rate is not None and reference_rate is not None:
            what = f"class {d['class']} answered" if d.get("class") is not None else f"{d.get('test')}"
            return f"{what} for {window_rate:.0%} of {d.get('n')} events (reference {reference_rate:.0%})"
    if detector == "backdoor" and "anomalous" in d:
        return (
            f"{d['anomalous']} anomalous inputs answered {d.get('class')} "
            f"(expected {d.get('expected', float('nan')):.1f})"
        )
    if detector == "evasion" and "suspicious" in d:
        return f"{d['suspicious']} of {d.get('queries')} inputs anomalous and answered with conviction"
    if detector == "extraction" and "signal" in d:
        coverage = _number(d.get("coverage"))
        return (
            f"signal {d['signal']}, median distance {d.get('median_distance', float('nan')):.3g} "
            f"(benign {d.get('benign_median_distance', float('nan')):.3g})"
            + (f", coverage {coverage:.0%}" if coverage is not None else "")
        )
    if detector == "probing" and "near_duplicates" in d:
        return f"{d['near_duplicates']} of {d.get('scored_queries')} queries near-duplicates"
    parts = []
    if stat is not None:
        parts.append(f"statistic {stat:.3g}")
    if alert.threshold is not None:
        parts.append(f"threshold {alert.threshold:.3g}")
    return ", ".join(parts)


def _subject(alert: AlertRecord) -> str:
    subject = alert.details.get("subject") if isinstance(alert.details, dict) else None
    return "" if subject is None else str(subject)


@dataclass
class SeenAlert:
    """An alert as the demo first saw it, and what became of it."""

    id: int
    detector: str
    threat: str
    subject: str
    severity: str
    window_start: float  # epoch seconds of the window it was first seen for
    first_seen: float
    p_value: float | None
    evidence: str
    resolved_at: float | None = None
    count: int = 1


class AlertWatcher:
    """Polls the alert table (the alert engine writes it) and prints each alert as it fires and resolves.

    Alerts of one detector that change together (20 clients flagged by one window) are printed as one line.
    """

    def __init__(self, store: AlertStore, model: str, console: Console, interval: float = 0.5) -> None:
        self.store = store
        self.model = model
        self.console = console
        self.interval = interval
        self.seen: dict[int, SeenAlert] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the alerts of the final windows

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a busy SQLite file or a stopping engine: the next poll catches up
                log.debug("alert poll failed", exc_info=True)

    def poll(self) -> None:
        """Read the model's alerts once; print those that fired or resolved since the last poll."""
        fired: list[SeenAlert] = []
        resolved: list[SeenAlert] = []
        listed = self.store.list_alerts(model=self.model, order="id", limit=1000)
        for alert in sorted(listed, key=lambda a: a.id):
            known = self.seen.get(alert.id)
            if known is None:
                known = self._first_sight(alert)
                self.seen[alert.id] = known
                fired.append(known)
            known.count = alert.count
            if alert.state == "resolved" and known.resolved_at is None:
                known.resolved_at = (alert.resolved_at or alert.last_seen).timestamp()
                resolved.append(known)
        for group in _by_detector(fired):
            self._print_fired(group)
        for group in _by_detector(resolved):
            names = _subjects(group)
            self.console.line(f"RESOLVED {_ids(group)} {group[0].detector}{names}", GREEN)

    @staticmethod
    def _first_sight(alert: AlertRecord) -> SeenAlert:
        return SeenAlert(
            id=alert.id,
            detector=alert.detector,
            threat=alert.threat,
            subject=_subject(alert),
            severity=alert.severity,
            window_start=(alert.window_start or alert.first_seen).timestamp(),
            first_seen=alert.first_seen.timestamp(),
            p_value=alert.p_value,
            evidence=key_evidence(alert),
            count=alert.count,
        )

    def _print_fired(self, group: list[SeenAlert]) -> None:
        first = group[0]
        p = f"p={first.p_value:.2g}" if first.p_value is not None else "p=n/a"
        severity = max((a.severity for a in group), key=["info", "warning", "critical"].index)
        if len(group) == 1:
            who = first.subject or "model-wide"
            text = f"{who:<17} {p:<9} {first.evidence}"
        else:
            text = f"{len(group)} subjects{_subjects(group)}; the first: {p}, {first.evidence}"
        self.console.line(
            f"FIRING   {_ids(group):<4} {severity:<8} {first.detector:<17} {first.threat:<15} {text}",
            RED + BOLD,
        )


def _by_detector(alerts: Sequence[SeenAlert]) -> list[list[SeenAlert]]:
    """The alerts grouped by detector, in order of their first id."""
    groups: dict[str, list[SeenAlert]] = {}
    for alert in alerts:
        groups.setdefault(alert.detector, []).append(alert)
    return list(groups.values())


def _ids(group: Sequence[SeenAlert]) -> str:
    ids = sorted(a.id for a in group)
    return f"#{ids[0]}" if len(ids) == 1 else f"#{ids[0]}..#{ids[-1]}"


def _subjects(group: Sequence[SeenAlert], show: int = 6) -> str:
    names = [a.subject for a in group if a.subject]
    if not names:
        return ""
    more = f" +{len(names) - show}" if len(names) > show else ""
    return f" ({', '.join(names[:show])}{more})"
