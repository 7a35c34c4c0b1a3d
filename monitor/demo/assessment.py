"""Judging a run of the demo: which injected attack its detector caught, which alerts were false alarms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.demo.alert_watcher import SeenAlert
from monitor.demo.timeline import Phase


@dataclass(frozen=True)
class PhaseSpan:
    """Where a phase of the timeline fell in (event = wall) time."""

    phase: Phase
    start: float
    end: float
    first_window: int  # index of its first window in the whole timeline


@dataclass
class Verdict:
    """Whether one injected attack was caught."""

    phase: str
    story: str
    detector: str
    subject: str
    caught: bool
    alert_id: int | None = None
    window: int | None = None  # 1 = the attack's first window; above its length: caught after it ended
    seconds: float | None = None  # from the attack's start to the alert's opening
    severity: str | None = None
    p_value: float | None = None
    evidence: str = ""
    also: list[str] = field(default_factory=list)  # other alerts opened during the phase


@dataclass
class Assessment:
    verdicts: list[Verdict]
    false_alarms: list[dict[str, Any]]  # alerts opened on a clean phase, or naming a benign client
    benign_named: list[dict[str, Any]]


def _phase_of(spans: Sequence[PhaseSpan], when: float) -> PhaseSpan | None:
    for span in spans:
        if span.start - 0.5 <= when < span.end - 0.5:
            return span
    return spans[-1] if spans and when >= spans[-1].end - 0.5 else None


def assess(
    spans: Sequence[PhaseSpan], alerts: Sequence[SeenAlert], window: float, benign: Sequence[str]
) -> Assessment:
    """Match the alerts with the injected attacks, and sort out the false alarms.

    Each alert belongs to the phase of the window it opened for. An attack is caught by the first alert of
    its detector naming its subject that opened for a window at or after the attack's start. Every other
    alert is either a side effect of the attack running (listed in ``Verdict.also``: a model-wide alert, or
    one naming the attacker or the attack's subject; in a population-wide phase such as drift, any subject
    but a benign client) or a false alarm: it opened on a clean phase, it names a benign client, or it names
    a subject the attack running has nothing to do with.
    """
    benign_set = set(benign)
    verdicts: dict[str, Verdict] = {}  # by phase name
    hit_ids: set[int] = set()
    for span in spans:
        phase = span.phase
        if phase.detector is None:
            continue
        hits = sorted(
            (
                a
                for a in alerts
                if a.detector == phase.detector
                and a.subject == phase.subject
                and a.window_start >= span.start - 0.5
            ),
            key=lambda a: a.window_start,
        )
        verdict = Verdict(phase.name, phase.story, phase.detector, phase.subject or "(model)", bool(hits))
        if hits:
            hit = hits[0]
            hit_ids.add(hit.id)
            verdict.alert_id = hit.id
            verdict.window = round((hit.window_start - span.start) / window) + 1
            verdict.seconds = round(hit.first_seen - span.start, 1)
            verdict.severity = hit.severity
            verdict.p_value = hit.p_value
            verdict.evidence = hit.evidence
        verdicts[phase.name] = verdict
    false_alarms, benign_named = [], []
    for alert in sorted(alerts, key=lambda a: a.id):
        if alert.id in hit_ids:
            continue
        opened_in = _phase_of(spans, alert.window_start)
        during = opened_in.phase if opened_in is not None else None
        where = during.name if during is not None else "before the timeline"
        name = alert.detector + (f" ({alert.subject})" if alert.subject else "")
        reason = None
        if alert.subject in benign_set:
            reason = "names a benign client"
        elif during is None or during.detector is None:
            reason = "opened on a clean phase"
        elif not during.population_wide and alert.subject not in ("", during.subject, during.attacker):
            reason = f"names {alert.subject}, which the {during.name} attack does not touch"
        if reason is None and during is not None:
            verdicts[during.name].also.append(name)
            continue
        record = {
            "alert_id": alert.id,
            "detector": alert.detector,
            "subject": alert.subject,
            "phase": where,
            "reason": reason,
            "evidence": alert.evidence,
        }
        false_alarms.append(record)
        if alert.subject in benign_set:
            benign_named.append(record)
    return Assessment(list(verdicts.values()), false_alarms, benign_named)
