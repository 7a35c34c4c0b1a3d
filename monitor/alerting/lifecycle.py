"""The alert lifecycle: window results in, alerts and notifications (outbox rows) out.

:class:`AlertEngine` does not look at the pipeline's memory. Each :meth:`AlertEngine.run_once` reads from
the database the window results it has not processed yet, in commit order (``window_results.revision``),
applies them to the alerts, decides which notifications are due, and writes the alert changes, the
deliveries and its new cursor in one transaction (:meth:`storage.AlertStore.evaluation`). A crash before the
commit leaves everything as it was, and the next run does the same work again; after it, the work is done
and is not repeated.

The rules, per fingerprint (model + detector + subject, Alertmanager style: a hash of the identifying labels):

* a result with status ``alert`` opens an alert, or refreshes the firing one (``last_seen``, ``count``,
  the newest window's evidence; the severity may rise, never fall while firing);
* a clean result (``ok``) of the same model and detector counts towards resolving each firing alert of that
  detector; ``resolve_after`` consecutive clean windows resolve it; ``skipped`` results count neither way,
  and an alert of another subject neither counts nor resets;
* windows are counted once: a result re-evaluated later (late labels) that does not come after the newest
  window already counted is not counted again. If it turns a window into a failure, it refreshes the alert
  (or opens a new one, unless it is the same failing window of the fingerprint's last episode).

Notifications: :func:`needs_notification` is a pure function of the alert, the notification log entry of one
target (the newest delivery of that alert to it) and ``now``: first firing, escalation, resolution, and a
repeat every ``repeat_interval`` while firing. Silenced alerts are stored as usual and notify no one.

Why one module of over 500 lines: the rules above (identity, transitions, notification) are pure functions and
the engine only applies them to one batch of results in one transaction; they are read, and changed, together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.alerting.rendering import render_body
from monitor.alerting.settings import LOWER_IS_WORSE, AlertingSettings, SeverityBands
from monitor.clock import WallClock, utcnow
from storage import (
    AlertState,
    AlertStore,
    AlertWork,
    DeliveryIn,
    NotificationLogEntry,
    ResultEvent,
    SubscriptionRecord,
)

__all__ = [
    "SEVERITY_RANK",
    "AlertEngine",
    "EngineReport",
    "SilenceMatcher",
    "Target",
    "effect_size",
    "fingerprint",
    "needs_notification",
    "observe_clean",
    "observe_failure",
    "open_alert",
    "per_subject",
    "severity_of",
    "silenced",
    "subject_of",
]

log = logging.getLogger("sentinel.alerts")

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MAX_SUBJECTS = 20  # alerts one window of one detector may open or refresh, one per flagged subject

# ----------------------------------------------------------------------------------- identity and severity


def subject_of(evidence: dict[str, Any]) -> str:
    """What a result is about within its detector (a client, a feature, a class); "" for the whole model."""
    subject = evidence.get("subject") if isinstance(evidence, dict) else None
    return "" if subject is None else str(subject)


def per_subject(result: ResultEvent) -> list[ResultEvent] | None:
    """A failing result that names several subjects (``evidence["subjects"]``: the clients, groups or
    classes a security detector flagged) as one result per subject, each with its own finding's
    statistic, threshold and p-value; None for a result about the model as a whole.

    Each subject gets its own alert (fingerprint), so two attacking clients are two alerts that fire and
    resolve independently. At most MAX_SUBJECTS per window, most significant first as the detector
    ordered them: a flood of flagged clients must not become a flood of alerts.
    """
    evidence = result.evidence if isinstance(result.evidence, dict) else {}
    subjects = evidence.get("subjects")
    if result.status != "alert" or not isinstance(subjects, list) or not subjects:
        return None
    findings = {
        str(f.get("subject")): f
        for f in evidence.get("findings", ())
        if isinstance(f, dict) and "subject" in f
    }
    shared = {k: v for k, v in evidence.items() if k not in ("subjects", "findings")}
    split = []
    for subject in [str(s) for s in subjects][:MAX_SUBJECTS]:
        finding = findings.get(subject, {})

        def number(name: str, fallback: float | None, finding: dict[str, Any] = finding) -> float | None:
            value = finding.get(name)
            return (
                float(value) if isinstance(value, int | float) and not isinstance(value, bool) else fallback
            )

        split.append(
            replace(
                result,
                statistic=number("statistic", result.statistic),
                threshold=number("threshold", result.threshold),
                p_value=number("p_value", result.p_value),
                evidence={**shared, **finding, "subject": subject, "subjects_flagged": len(subjects)},
            )
        )
    return split


def fingerprint(model: str, detector: str, subject: str) -> str:
    """SHA-256 (hex) of the sorted identifying labels, so equal conditions always map to one alert."""
    labels = json.dumps({"detector": detector, "model": model, "subject": subject}, sort_keys=True)
    return hashlib.sha256(labels.encode()).hexdigest()


def effect_size(detector: str, statistic: float | None, threshold: float | None) -> float | None:
    """How far past its threshold a statistic is, as a ratio (>= 1 when failing); None if undefined."""
    if statistic is None or threshold is None:
        return None
    if not (math.isfinite(statistic) and math.isfinite(threshold)) or statistic <= 0 or threshold <= 0:
        return None
    return threshold / statistic if detector in LOWER_IS_WORSE else statistic / threshold


def severity_of(result: ResultEvent, bands: SeverityBands) -> str:
    """The severity of a failing result: the stronger of its p-value band and its effect-size band."""
    levels: list[str] = []
    p = result.p_value
    if p is not None and math.isfinite(p):
        if bands.critical_p is not None and p < bands.critical_p:
            levels.append("critical")
        elif bands.warning_p is not None and p < bands.warning_p:
            levels.append("warning")
        else:
            levels.append("info")
    effect = effect_size(result.detector, result.statistic, result.threshold)
    if effect is not None and (bands.critical_effect is not None or bands.warning_effect is not None):
        if bands.critical_effect is not None and effect >= bands.critical_effect:
            levels.append("critical")
        elif bands.warning_effect is not None and effect >= bands.warning_effect:
            levels.append("warning")
        else:
            levels.append("info")
    if not levels:
        return "warning"  # the detector said alert and gave nothing to grade it by
    return max(levels, key=SEVERITY_RANK.__getitem__)


# ----------------------------------------------------------------------------------- alert transitions


def _text(result: ResultEvent, subject: str) -> tuple[str, str]:
    about = f" ({subject})" if subject else ""
    title = f"{result.detector} alert on {result.model}{about}"
    parts = []
    if result.statistic is not None:
        parts.append(f"statistic {result.statistic:.4g}")
    if result.threshold is not None:
        parts.append(f"threshold {result.threshold:.4g}")
    if result.p_value is not None:
        parts.append(f"p = {result.p_value:.3g}")
    span = f"{result.window_start.isoformat()} to {result.window_end.isoformat()}"
    summary = (
        f"{result.threat} threat: {', '.join(parts) or 'no statistic'} over {result.n_events} events, {span}"
    )
    return title, summary


def _evidence_fields(result: ResultEvent, subject: str) -> dict[str, Any]:
    title, summary = _text(result, subject)
    details = dict(result.evidence) if isinstance(result.evidence, dict) else {}
    details.update({"n_events": result.n_events, "window_id": result.window_id, "result_id": result.id})
    if subject:
        details["subject"] = subject
    return {
        "title": title,
        "summary": summary,
        "window_start": result.window_start,
        "window_end": result.window_end,
        "statistic": result.statistic,
        "threshold": result.threshold,
        "p_value": result.p_value,
        "details": details,
    }


def open_alert(result: ResultEvent, severity: str, now: datetime) -> AlertState:
    """A new firing alert for a failing result (not stored yet: ``id`` None)."""
    subject = subject_of(result.evidence)
    return AlertState(
        id=None,
        fingerprint=fingerprint(result.model, result.detector, subject),
        model=result.model,
        detector=result.detector,
        threat=result.threat,
        severity=severity,
        state="firing",
        first_seen=now,
        last_seen=now,
        count=1,
        resolved_at=None,
        subject=subject,
        clean_streak=0,
        streak_window=result.window_start,
        **_evidence_fields(result, subject),
    )


def observe_failure(alert: AlertState, result: ResultEvent, severity: str, now: datetime) -> AlertState:
    """The firing ``alert``'s condition was observed again in ``result``.

    A newer window: counted, its evidence becomes the alert's, the clean streak restarts. The alert's own
    newest failing window re-evaluated: its evidence is updated, nothing is counted. An older window newly
    found failing: counted, the evidence stays the newest window's.
    """
    newest = alert.window_start
    escalated = max(alert.severity, severity, key=SEVERITY_RANK.__getitem__)
    if newest is None or result.window_start > newest:
        counted = alert.streak_window
        return replace(
            alert,
            severity=escalated,
            last_seen=now,
            count=alert.count + 1,
            clean_streak=0,
            streak_window=result.window_start if counted is None else max(counted, result.window_start),
            **_evidence_fields(result, alert.subject),
        )
    if result.window_start == newest:
        return replace(alert, severity=escalated, last_seen=now, **_evidence_fields(result, alert.subject))
    return replace(alert, severity=escalated, last_seen=now, count=alert.count + 1)


def observe_clean(
    alert: AlertState, window_start: datetime, now: datetime, resolve_after: int
) -> AlertState | None:
    """A clean window of the alert's detector; the changed alert, or None when it does not count.

    Only windows after the newest one counted so far count, so a re-evaluated window is never counted twice.
    """
    if alert.streak_window is not None and window_start <= alert.streak_window:
        return None
    streak = alert.clean_streak + 1
    if streak >= resolve_after:
        return replace(
            alert, clean_streak=streak, streak_window=window_start, state="resolved", resolved_at=now
        )
    return replace(alert, clean_streak=streak, streak_window=window_start)


# ----------------------------------------------------------------------------------- notifications


def needs_notification(
    last: NotificationLogEntry | None,
    *,
    state: str,
    severity: str,
    now: datetime,
    repeat_interval: timedelta,
) -> str | None:
    """Whether one target must be notified about an alert now, and why (Alertmanager's ``needsUpdate``).

    ``last`` is the newest notification of this alert to this target (None: never notified). Returns
    ``"firing"`` (first notification), ``"escalated"`` (severity above the one last notified),
    ``"repeat"`` (still firing ``repeat_interval`` after the last notification), ``"resolved"`` (resolved,
    and the target was told it fired), or None.
    """
    if state == "resolved":
        return "resolved" if last is not None and last.status == "firing" else None
    if last is None or last.status == "resolved":
        return "firing"
    if SEVERITY_RANK[severity] > SEVERITY_RANK[last.severity]:
        return "escalated"
    if now >= last.at + repeat_interval:
        return "repeat"
    return None


class SilenceLabels(Protocol):
    """What a silence matches on; None matches anything."""

    @property
    def fingerprint(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def detector(self) -> str | None: ...


@dataclass(frozen=True)
class SilenceMatcher:
    """A silence, from the configuration or the database: every matcher given must match."""

    ends_at: datetime
    starts_at: datetime | None = None
    fingerprint: str | None = None
    model: str | None = None
    detector: str | None = None

    @classmethod
    def of(cls, labels: SilenceLabels, *, ends_at: datetime, starts_at: datetime | None) -> SilenceMatcher:
        """The matcher of a configured or stored silence (they name their times differently)."""
        return cls(
            ends_at=ends_at,
            starts_at=starts_at,
            fingerprint=labels.fingerprint,
            model=labels.model,
            detector=labels.detector,
        )

    def mutes(self, alert: AlertState, now: datetime) -> bool:
        """Whether this silence mutes ``alert`` at ``now``."""
        if now >= self.ends_at or (self.starts_at is not None and now < self.starts_at):
            return False
        return (
            (self.fingerprint is None or self.fingerprint == alert.fingerprint)
            and (self.model is None or self.model == alert.model)
            and (self.detector is None or self.detector == alert.detector)
        )


def silenced(alert: AlertState, silences: Iterable[SilenceMatcher], now: datetime) -> bool:
    """Whether any silence mutes ``alert`` at ``now``."""
    return any(s.mutes(alert, now) for s in silences)


@dataclass(frozen=True)
class Target:
    """Where notifications go: a webhook subscription, or the Kafka alerts topic (which takes every alert)."""

    key: str
    channel: str
    subscription: SubscriptionRecord | None = None
    topic: str | None = None

    @classmethod
    def webhook(cls, subscription: SubscriptionRecord) -> Target:
        return cls(f"subscription:{subscription.id}", "webhook", subscription=subscription)

    @classmethod
    def kafka(cls, topic: str) -> Target:
        return cls(f"kafka:{topic}", "kafka", topic=topic)

    def matches(self, alert: AlertState) -> bool:
        """Whether this target's filters let ``alert`` through."""
        sub = self.subscription
        if sub is None:
            return True
        return (
            (not sub.models or alert.model in sub.models)
            and (not sub.detectors or alert.detector in sub.detectors)
            and (not sub.threats or alert.threat in sub.threats)
            and SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[sub.min_severity]
        )


# ----------------------------------------------------------------------------------- the engine


@dataclass
class EngineReport:
    """What one :meth:`AlertEngine.run_once` did."""

    processed: int = 0
    opened: int = 0
    refreshed: int = 0
    resolved: int = 0
    notifications: int = 0
    locked: bool = False  # another replica's engine held the cursor
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pass:
    """State of one engine transaction."""

    work: AlertWork
    now: datetime
    targets: list[Target]
    silences: list[SilenceMatcher]
    firing: dict[str, AlertState]
    log: dict[tuple[int, str], NotificationLogEntry] = field(default_factory=dict)
    log_loaded: set[int] = field(default_factory=set)


class AlertEngine:
    """Turns stored window results into alerts and outbox rows; see the module docstring.

    Parameters
    ----------
    store
        The alerting store (same database as the pipeline's results).
    settings
        The ``alerting`` configuration.
    now
        The clock (aware UTC); tests inject one. ``run_once(now=...)`` overrides it per call.
    """

    def __init__(self, store: AlertStore, settings: AlertingSettings, *, now: WallClock = utcnow) -> None:
        self.store = store
        self.settings = settings
        self._now = now
        self._config_silences = [
            SilenceMatcher.of(s, ends_at=s.until, starts_at=s.starts) for s in settings.silences
        ]

    def run_once(self, now: datetime | None = None) -> EngineReport:
        """Process every result not processed yet (in batches, one transaction each) and enqueue the
        notifications that are due, including repeats. Raises StorageUnavailable when the database is away
        (nothing is half done then)."""
        now = now if now is not None else self._now()
        report = EngineReport()
        if not self.store.engine_has_work():
            return report  # idle: no write transaction (and on SQLite no write lock) on every tick
        while True:
            with self.store.evaluation(now) as work:
                if work is None:
                    report.locked = True
                    return report
                batch = work.results(self.settings.batch_size)
                state = self._begin(work, now)
                for result in batch:
                    self._apply(state, result, report)
                if batch:
                    work.advance(batch[-1].revision)
                # Repeats (and first notifications to subscriptions created since, or after a silence ended).
                self._notify(state, list(state.firing.values()), report)
            report.processed += len(batch)
            if len(batch) < self.settings.batch_size:
                return report

    def _begin(self, work: AlertWork, now: datetime) -> _Pass:
        targets = [Target.webhook(s) for s in work.subscriptions()]
        if self.settings.kafka_topic:
            targets.append(Target.kafka(self.settings.kafka_topic))
        silences = self._config_silences + [
            SilenceMatcher.of(s, ends_at=s.ends_at, starts_at=s.starts_at) for s in work.silences(now)
        ]
        firing = {a.fingerprint: a for a in work.firing_alerts()}
        return _Pass(work=work, now=now, targets=targets, silences=silences, firing=firing)

    def _apply(self, state: _Pass, result: ResultEvent, report: EngineReport) -> None:
        if result.status == "skipped":
            return
        split = per_subject(result)
        if split is not None:
            for one in split:
                self._failure(state, one, report)
            # The detector tested every subject: for those it did not name, this window was clean.
            flagged = {subject_of(one.evidence) for one in split}
            self._clean(state, result, report, unless=flagged)
            return
        if result.status == "alert":
            self._failure(state, result, report)
            return
        self._clean(state, result, report, unless=set())

    def _clean(self, state: _Pass, result: ResultEvent, report: EngineReport, unless: set[str]) -> None:
        """A clean window of this detector counts towards resolving each of its firing alerts on this model
        (except those of the subjects in ``unless``, which failed in this window)."""
        for alert in [
            a
            for a in state.firing.values()
            if a.model == result.model and a.detector == result.detector and a.subject not in unless
        ]:
            changed = observe_clean(alert, result.window_start, state.now, self.settings.resolve_after)
            if changed is None:
                continue
            saved = state.work.save_alert(changed)
            if saved.state == "resolved":
                del state.firing[saved.fingerprint]
                report.resolved += 1
                log.info(
                    "alert %d resolved: %s on %s after %d clean windows",
                    saved.id,
                    saved.detector,
                    saved.model,
                    saved.clean_streak,
                )
                self._notify(state, [saved], report)
            else:
                state.firing[saved.fingerprint] = saved

    def _failure(self, state: _Pass, result: ResultEvent, report: EngineReport) -> None:
        severity = severity_of(result, self.settings.bands(result.detector))
        subject = subject_of(result.evidence)
        key = fingerprint(result.model, result.detector, subject)
        current = state.firing.get(key)
        if current is None:
            previous = state.work.latest_alert(key)
            if previous is not None and previous.window_start == result.window_start:
                return  # the last episode's failing window, re-evaluated after it resolved: reported already
            saved = state.work.save_alert(open_alert(result, severity, state.now))
            report.opened += 1
            log.info(
                "alert %d opened: %s on %s%s, %s (window %s)",
                saved.id,
                saved.detector,
                saved.model,
                f" ({subject})" if subject else "",
                saved.severity,
                result.window_start.isoformat(),
            )
        else:
            saved = state.work.save_alert(observe_failure(current, result, severity, state.now))
            report.refreshed += 1
            if saved.severity != current.severity:
                log.info("alert %d escalated: %s -> %s", saved.id, current.severity, saved.severity)
        state.firing[key] = saved
        self._notify(state, [saved], report)

    def _notify(self, state: _Pass, alerts: Sequence[AlertState], report: EngineReport) -> None:
        """Enqueue the notifications these alerts need now, per target, and note them in the log."""
        todo = [a for a in alerts if a.id is not None and not silenced(a, state.silences, state.now)]
        missing = [a.id for a in todo if a.id is not None and a.id not in state.log_loaded]
        if missing:
            state.log.update(state.work.last_notifications(missing))
            state.log_loaded.update(missing)
        repeat = timedelta(seconds=self.settings.repeat_interval)
        for alert in todo:
            assert alert.id is not None
            public = alert.public()
            for target in state.targets:
                last = state.log.get((alert.id, target.key))
                # A firing alert goes to targets whose filters match; a resolution to whoever heard it fire.
                if alert.state == "firing" and not target.matches(alert):
                    continue
                reason = needs_notification(
                    last, state=alert.state, severity=alert.severity, now=state.now, repeat_interval=repeat
                )
                if reason is None:
                    continue
                sub = target.subscription
                body = render_body(
                    sub.format if sub is not None else "native",
                    public,
                    receiver=sub.name if sub else target.key,
                )
                entry = state.work.add_delivery(
                    DeliveryIn(
                        alert_id=alert.id,
                        target=target.key,
                        channel=target.channel,
                        subscription_id=sub.id if sub is not None else None,
                        topic=target.topic,
                        status=alert.state,
                        reason=reason,
                        severity=alert.severity,
                        body=body,
                        created_at=state.now,
                    )
                )
                state.log[(alert.id, target.key)] = entry
                report.notifications += 1
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
