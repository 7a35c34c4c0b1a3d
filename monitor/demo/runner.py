"""``sentinel demo``: the main job on embedded defaults, a digits classifier under a scripted attack.

Starts the embedded Kafka-compatible broker and a SQLite database in ``./sentinel-demo/`` (or uses
``--bootstrap-servers`` and ``--db``), trains a classifier on scikit-learn's digits and runs the daemon on its
prediction logs with all twelve detectors, the alert engine, a webhook subscription and the HTTP API with the
dashboard. Twenty benign clients (``app-01`` .. ``app-20``) send natural traffic throughout, each input at
most once per client, with a ``region`` group; on top of it the timeline plays, one phase after another
(:func:`timeline`): clean traffic, drift (a broken feature pipeline), a poisoned training feed, model
extraction, probing, evasion, a backdoor trigger, one region's outcomes forced, and clean traffic again.

The terminal shows each phase as it starts, each window as it closes, each alert as it fires and resolves
(with its key evidence) and each webhook delivery a local receiver gets (its HMAC signature checked). The
summary says, per injected attack, whether the detector built for it caught it, when, and with which alert,
and lists the false alarms: alerts opened on the clean phases and alerts naming a benign client. It is also
written to ``sentinel-demo/summary.json``. The exit code is 0 whatever was caught (it is a demo); Ctrl-C stops
everything cleanly (130).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import Status
from monitor.alerting import AlertingSettings, DeliverySettings, verify_signature
from monitor.broker import EmbeddedBroker, create_topic, free_port
from monitor.config import AppConfig
from monitor.daemon import Daemon
from monitor.demo.attacks import (
    flip_labels,
    out_of_range_inputs,
    probing_queries,
    shift_inputs,
    target_class,
    uniform_queries,
    with_trigger,
)
from monitor.demo.data import REGIONS, BenignClients, digits_model, prediction_events, reference_events
from monitor.logs import configure_logging
from monitor.pipeline import ClosedWindow
from storage import AlertRecord, AlertStore

MODEL = "digits-classifier"
TOPIC = "predictions"
WORKDIR = Path("sentinel-demo")
BENIGN_CLIENTS = tuple(f"app-{i:02d}" for i in range(1, 21))
BENIGN_PER_WINDOW = 20  # queries per benign client per window, as in bench/security_attacks.py
FORCED_REGION = "latam"  # the region whose outcomes the group_outcome phase forces
FLIP_SHARE = 0.15  # labels flipped in the poisoned training feed
WEBHOOK_SECRET = "sentinel-demo-secret"  # signs the deliveries to the local receiver; a demo value only
BOLD, RED, GREEN, YELLOW, CYAN, DIM, RESET = (
    "\033[1m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[36m",
    "\033[2m",
    "\033[0m",
)

log = logging.getLogger("sentinel.demo")


# ---------------------------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Phase:
    """One step of the scripted timeline; benign clients send throughout every phase."""

    name: str
    windows: int
    story: str
    detector: str | None = None
    """The detector built to catch this phase's attack (None: a clean phase, where any alert is false)."""
    subject: str = ""
    """The subject its alert should name: the attacker's client id, ``stream=…``, ``region=…``, ``class=…``,
    or "" for an alert about the model as a whole."""
    attacker: str | None = None
    """The client id of the attacker, if one client carries the attack."""
    population_wide: bool = False
    """Whether the phase changes every client's traffic (drift): then any group or class may shift."""


@dataclass(frozen=True)
class Pace:
    """How fast the timeline plays: window length and per-window volumes."""

    window: float
    clean_windows: int
    attack_windows: int
    tail_windows: int
    training_per_window: int = 200  # the poisoned feed's labelled events per window
    extraction_per_window: int = 250  # uniform random queries of the extractor per window
    evasion_per_window: int = 30  # out-of-range inputs of the evader per window (bench/security_attacks.py)
    trigger_share: float = 0.08  # triggered inputs as a share of the benign traffic (bench: 8 %)
    probing_records: int = 25
    probing_perturbations: int = 40


FAST = Pace(window=3.0, clean_windows=2, attack_windows=2, tail_windows=1)
DEFAULT = Pace(window=8.0, clean_windows=3, attack_windows=2, tail_windows=2)


def timeline(pace: Pace, target: str) -> list[Phase]:
    """The scripted phases, in order; ``target`` is the class the backdoor and the forced region answer."""
    a = pace.attack_windows
    return [
        Phase("clean", pace.clean_windows, "20 benign clients, natural digits"),
        Phase(
            "drift",
            a,
            "a broken feature pipeline: 8 pixels of every input +4 sd",
            detector="feature_drift",
            population_wide=True,
        ),
        Phase(
            "poisoned training feed",
            a,
            f"a labelled training feed (stream=training) with {FLIP_SHARE:.0%} of its labels flipped",
            detector="label_consistency",
            subject="stream=training",
        ),
        Phase(
            "extraction",
            a,
            f"client 'extractor' sends {pace.extraction_per_window} uniform random queries per window",
            detector="extraction",
            subject="extractor",
            attacker="extractor",
        ),
        Phase(
            "probing",
            a,
            f"client 'prober' queries {pace.probing_records} records x {pace.probing_perturbations} tiny "
            "perturbations",
            detector="probing",
            subject="prober",
            attacker="prober",
        ),
        Phase(
            "evasion",
            a,
            f"client 'evader' sends {pace.evasion_per_window} out-of-range inputs per window",
            detector="evasion",
            subject="evader",
            attacker="evader",
        ),
        Phase(
            "backdoor",
            a,
            f"client 'trigger-user' sends inputs with the trigger patch; the model answers {target}",
            detector="backdoor",
            subject=f"class={target}",
            attacker="trigger-user",
        ),
        Phase(
            "group outcome",
            a,
            f"every answer for region={FORCED_REGION} is forced to class {target}",
            detector="group_outcome",
            subject=f"region={FORCED_REGION}",
        ),
        Phase("clean again", pace.tail_windows, "benign traffic only"),
    ]


@dataclass
class WindowPlan:
    """The events of one window of the timeline, in sending order (timestamps set when sent)."""

    phase: int
    index: int  # the window's number within its phase, from 0
    events: list[dict[str, Any]]
    malformed: list[bytes] = field(default_factory=list)


class TrafficScript:
    """Builds the events of every window of the timeline (benign traffic plus the phase's attack).

    Parameters
    ----------
    model_id
        The model the events belong to.
    pace
        Window length and volumes.
    seed
        Seed of every random draw: the same seed gives the same traffic.
    """

    def __init__(self, model_id: str, pace: Pace, *, seed: int = 0) -> None:
        self.model_id = model_id
        self.pace = pace
        self.model = digits_model()
        self.target = target_class(self.model)
        self.classes = [str(c) for c in self.model.classifier.classes_]
        self.benign = BenignClients(BENIGN_CLIENTS, seed=seed)
        self._rng = np.random.default_rng(seed + 1)
        self._training_rows = self._rng.permutation(len(self.model.live_y))
        self._probing = probing_queries(
            self.model,
            self._rng,
            records=pace.probing_records,
            perturbations=pace.probing_perturbations,
        )

    def plans(self, phases: Sequence[Phase]) -> list[WindowPlan]:
        """Every window of ``phases``, in order."""
        return [self.window(p, phase, k) for p, phase in enumerate(phases) for k in range(phase.windows)]

    def window(self, p: int, phase: Phase, k: int) -> WindowPlan:
        """The events of window ``k`` of phase number ``p``."""
        model = self.model
        prefix = f"p{p}w{k}-"
        rows, clients, groups = self.benign.take(BENIGN_PER_WINDOW)
        x = model.live_x[rows]
        if phase.name == "drift":
            x = shift_inputs(model, x)
        forced = None
        if phase.detector == "group_outcome":
            forced = np.array([g["region"] == FORCED_REGION for g in groups])
        events = prediction_events(
            self.model_id,
            x,
            timestamps=[0.0] * len(x),
            id_prefix=prefix + "b",
            clients=clients,
            labels=[str(int(v)) for v in model.live_y[rows]],
            groups=groups,
            forced_class=self.target,
            forced=forced,
        )
        events += self._attack(phase, k, prefix, len(x))
        order = self._rng.permutation(len(events))
        plan = WindowPlan(p, k, [events[i] for i in order])
        if phase.name == "drift" and k == 0:
            # A broken pipeline also sends garbage: kept in the dead-letter store with the reason.
            plan.malformed = [b"{not json", json.dumps({"model": self.model_id, "features": {}}).encode()]
        return plan

    def _attack(self, phase: Phase, k: int, prefix: str, n_benign: int) -> list[dict[str, Any]]:
        pace, model, rng = self.pace, self.model, self._rng
        zero = [0.0]
        if phase.detector == "label_consistency":
            n = pace.training_per_window
            rows = self._training_rows[k * n : (k + 1) * n]
            labels, _ = flip_labels([str(int(v)) for v in model.live_y[rows]], FLIP_SHARE, rng, self.classes)
            # A batch feed for retraining, not a caller: no client id, so the per-client indicators ignore it.
            return prediction_events(
                self.model_id,
                model.live_x[rows],
                timestamps=zero * n,
                id_prefix=prefix + "t",
                clients=[None],
                labels=labels,
                stream="training",
            )
        if phase.attacker is None:
            return []
        if phase.detector == "extraction":
            x = uniform_queries(model, pace.extraction_per_window, rng)
        elif phase.detector == "probing":
            share = len(self._probing) // phase.windows
            x = self._probing[k * share : (k + 1) * share]
        elif phase.detector == "evasion":
            x = out_of_range_inputs(model, pace.evasion_per_window, rng)
        elif phase.detector == "backdoor":
            n = max(1, round(pace.trigger_share * n_benign))
            x = with_trigger(model.live_x[rng.choice(len(model.live_y), n, replace=False)])
        else:
            raise ValueError(f"phase {phase.name!r} has an attacker but no traffic for it")
        return prediction_events(
            self.model_id,
            x,
            timestamps=zero * len(x),
            id_prefix=prefix + "a",
            clients=[phase.attacker],
            forced_class=self.target if phase.detector == "backdoor" else None,
            forced=np.ones(len(x), dtype=bool) if phase.detector == "backdoor" else None,
        )


def stamp(event: dict[str, Any], when: float) -> dict[str, Any]:
    """The event with its ``timestamp`` set to ``when`` (epoch seconds, RFC 3339 UTC)."""
    event["timestamp"] = datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
    return event


# ---------------------------------------------------------------------------------------------- configuration


def demo_config(
    *,
    database_url: str,
    bootstrap_servers: str,
    reference_path: Path,
    window: float,
    api_port: int,
    webhook_url: str,
) -> AppConfig:
    """The daemon's configuration: every default detector and the production alarm rules (2 of 3 windows,
    or at once below p = 1e-6; resolve after 3 clean windows), plus the demo's webhook and API port."""
    delivery: dict[str, Any] = {"poll_interval": 0.5, "timeout": 5}
    alerting: dict[str, Any] = {
        "delivery": delivery,
        "subscriptions": [{"name": "demo-receiver", "url": webhook_url, "secret": WEBHOOK_SECRET}],
    }
    if "allowed_networks" in DeliverySettings.model_fields:
        # The SSRF guard refuses loopback webhooks by default; the demo's receiver is on this machine.
        delivery["allowed_networks"] = ["127.0.0.1/32"]
    if "secret_key" in AlertingSettings.model_fields:
        # Webhook secrets are stored sealed; a key of this run's own (PostgreSQL refuses secrets without one).
        alerting["secret_key"] = base64.b64encode(os.urandom(32)).decode()
    return AppConfig.model_validate(
        {
            "database_url": database_url,
            "kafka": {
                "bootstrap_servers": bootstrap_servers,
                "topic": TOPIC,
                "group_id": f"sentinel-demo-{int(time.time())}",
            },
            "tick_interval": 0.5,
            "models": {
                MODEL: {
                    "window": window,
                    "allowed_lateness": 1,
                    "reference": {"source": "file", "path": str(reference_path)},
                }
            },
            "alerting": alerting,
            "api": {"host": "127.0.0.1", "port": api_port},
        }
    )


# ---------------------------------------------------------------------------------------------- output


class Console:
    """Thread-safe printing (the daemon's threads, the alert watcher and the webhook receiver all print),
    coloured only on a terminal, with the seconds since the traffic started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.color = sys.stdout.isatty()
        self.started: float | None = None

    def paint(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def line(self, text: str, code: str = "") -> None:
        clock = "" if self.started is None else f"[{time.time() - self.started:6.1f}s] "
        with self._lock:
            print(self.paint(clock, DIM) + (self.paint(text, code) if code else text), flush=True)

    def plain(self, text: str = "", code: str = "") -> None:
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


# ---------------------------------------------------------------------------------------------- watchers


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

    def __init__(self, store: AlertStore, console: Console, interval: float = 0.5) -> None:
        self.store = store
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
        fired: list[SeenAlert] = []
        resolved: list[SeenAlert] = []
        for alert in sorted(self.store.list_alerts(model=MODEL, order="id", limit=1000), key=lambda a: a.id):
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


class WebhookReceiver:
    """A local webhook endpoint (127.0.0.1, its own thread) that checks each delivery's HMAC signature.

    Deliveries are printed once a second, those of the same status and detector on one line.
    """

    def __init__(self, secret: str, console: Console) -> None:
        self.secret = secret
        self.console = console
        self.deliveries: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.receive(body, self.headers.get("X-Sentinel-Signature"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Silent on purpose: http.server's request log would interleave with the demo's own
                line per delivery, which says more (alert, subject, signature check)."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)
        self._printer = threading.Thread(target=self._print_loop, name="demo-webhook-print", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/sentinel"

    def start(self) -> None:
        self._thread.start()
        self._printer.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._stop.set()
        self._printer.join(timeout=5)
        self.flush()

    def receive(self, body: bytes, signature: str | None) -> None:
        """Check and record one delivery (the request handler's thread)."""
        valid = verify_signature(self.secret, body, signature)
        try:
            document = json.loads(body)
            alert = document.get("alert", {})
            status = str(document.get("status"))
        except (ValueError, AttributeError):
            alert, status = {}, "unreadable"
        details = alert.get("details") if isinstance(alert.get("details"), dict) else {}
        delivery = {
            "status": status,
            "alert_id": alert.get("id"),
            "detector": alert.get("detector"),
            "subject": details.get("subject", ""),
            "signature_valid": valid,
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        with self._lock:
            self.deliveries.append(delivery)
            self._pending.append(delivery)

    def _print_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.flush()

    def flush(self) -> None:
        """Print the deliveries received since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, []
        groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
        for d in pending:
            groups.setdefault((d["status"], str(d["detector"]), d["signature_valid"]), []).append(d)
        for (status, detector, valid), group in groups.items():
            ids = sorted(int(d["alert_id"]) for d in group if isinstance(d["alert_id"], int))
            span = "" if not ids else f"#{ids[0]}" if len(ids) == 1 else f"#{ids[0]}..#{ids[-1]}"
            subjects = [str(d["subject"]) for d in group if d["subject"]]
            about = (
                f" ({', '.join(subjects[:3])}{' +' + str(len(subjects) - 3) if len(subjects) > 3 else ''})"
            )
            count = f"{len(group)} deliveries " if len(group) > 1 else ""
            check = ("signatures ok" if len(group) > 1 else "signature ok") if valid else "BAD SIGNATURE"
            self.console.line(
                f"webhook  <- {count}{status} {span} {detector}{about if subjects else ''}: {check}",
                CYAN if valid else RED,
            )


# ---------------------------------------------------------------------------------------------- assessment


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


# ---------------------------------------------------------------------------------------------- the run


def run_demo(
    *, fast: bool = False, bootstrap_servers: str | None = None, database_url: str | None = None
) -> int:
    """Run the demo in ``./sentinel-demo``; returns the exit code (0, or 130 when interrupted)."""
    configure_logging("WARNING")
    # kafka-python logs its own slow polls as warnings; they say nothing about the demo.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    console = Console()
    pace = FAST if fast else DEFAULT
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    WORKDIR.mkdir()
    reference_path = WORKDIR / "reference.jsonl"
    reference = reference_events(MODEL)
    reference_path.write_text("\n".join(json.dumps(e) for e in reference) + "\n")
    script = TrafficScript(MODEL, pace)
    phases = timeline(pace, script.target)

    broker = None
    if bootstrap_servers is None:
        console.plain("starting the embedded Kafka-compatible broker (Tansu) ...")
        broker = EmbeddedBroker().start()
        bootstrap_servers = broker.bootstrap_servers
    receiver = WebhookReceiver(WEBHOOK_SECRET, console)
    receiver.start()
    daemon = None
    runner = None
    watcher = None
    try:
        create_topic(bootstrap_servers, TOPIC, 4)
        database_url = database_url or f"sqlite:///{WORKDIR / 'sentinel.db'}"
        api_port = free_port()
        config = demo_config(
            database_url=database_url,
            bootstrap_servers=bootstrap_servers,
            reference_path=reference_path,
            window=pace.window,
            api_port=api_port,
            webhook_url=receiver.url,
        )
        dashboard = f"http://127.0.0.1:{api_port}/dashboard"
        _introduce(
            console, phases, pace, dashboard, database_url, bootstrap_servers, receiver.url, len(reference)
        )

        windows_closed: list[ClosedWindow] = []

        def show(closed: ClosedWindow) -> None:
            windows_closed.append(closed)
            text, flagged = window_line(closed)
            console.line(text, YELLOW if flagged else DIM)

        daemon = Daemon(config, on_window=show)
        runner = threading.Thread(target=daemon.run, name="sentinel-daemon")
        runner.start()
        plans = script.plans(phases)  # built while the detectors fit
        _wait_ready(daemon, console)
        assert daemon.pipeline is not None
        watcher = AlertWatcher(AlertStore(daemon.pipeline.store.engine), console)
        watcher.start()
        spans, sent, lag = _play(console, bootstrap_servers, phases, plans, pace.window)
        console.line(f"producing done ({sent} events); waiting for the last windows to close", DIM)
        time.sleep(pace.window + 3.0)
        daemon.request_stop()
        runner.join(timeout=60)
        watcher.stop()
        time.sleep(1.0)  # the delivery worker's last sends, made during the daemon's stop
        assessment = assess(spans, list(watcher.seen.values()), pace.window, BENIGN_CLIENTS)
        _summary(console, assessment, receiver, daemon, spans, watcher, lag, dashboard, pace, script)
        return 0
    except KeyboardInterrupt:
        console.plain("\ninterrupted: stopping")
        return 130
    finally:
        if daemon is not None:
            daemon.request_stop()
        if runner is not None:
            runner.join(timeout=60)
        receiver.stop()
        if broker is not None:
            broker.stop()


def _introduce(
    console: Console,
    phases: Sequence[Phase],
    pace: Pace,
    dashboard: str,
    database_url: str,
    bootstrap_servers: str,
    webhook_url: str,
    n_reference: int,
) -> None:
    console.plain(f"dashboard:  {dashboard}", BOLD)
    console.plain(f"database:   {database_url}")
    console.plain(f"broker:     {bootstrap_servers}, topic {TOPIC!r} (4 partitions)")
    console.plain(
        f"webhook:    {webhook_url} (a local receiver; deliveries are signed, each signature checked)"
    )
    console.plain(
        f"model:      {MODEL!r}, a logistic regression on scikit-learn's digits; reference of {n_reference} "
        "predictions; all 12 detectors (three fit a VAE at start: a few seconds)"
    )
    console.plain(
        "alert rule: the production defaults: a detector alerts when 2 of its last 3 windows fail, at once "
        "when p < 1e-6; an alert resolves after 3 clean windows of its detector"
    )
    console.plain(
        f"traffic:    {len(BENIGN_CLIENTS)} benign clients {BENIGN_CLIENTS[0]}..{BENIGN_CLIENTS[-1]}, "
        f"{BENIGN_PER_WINDOW} inputs each per {pace.window:.0f} s window (no input twice per client), "
        f"groups region in {', '.join(REGIONS)}"
    )
    console.plain("timeline:")
    for number, phase in enumerate(phases, 1):
        expected = f"  -> {phase.detector}" if phase.detector else ""
        console.plain(f"  {number}. {phase.name:<24} {phase.windows} windows  {phase.story}{expected}", DIM)
    console.plain()


def _wait_ready(daemon: Daemon, console: Console) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        pipeline, intake = daemon.pipeline, daemon.intake
        if pipeline is not None and intake is not None and pipeline.ready and intake.assigned:
            console.plain(f"daemon ready: detectors fitted, partitions {len(intake.assigned)} assigned\n")
            return
        if daemon.state.value == "crashed":
            raise SystemExit("the daemon crashed during start-up; see the log above")
        time.sleep(0.2)
    raise SystemExit("the daemon did not become ready within 300 s")


def _producer(bootstrap_servers: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), linger_ms=5)


def _play(
    console: Console,
    bootstrap_servers: str,
    phases: Sequence[Phase],
    plans: Sequence[WindowPlan],
    window: float,
) -> tuple[list[PhaseSpan], int, float]:
    """Send every window's events at their times (event time = wall time); returns the phases' spans, the
    events sent and the largest lag behind the schedule."""
    producer = _producer(bootstrap_servers)
    # Start on a window boundary, so that each phase fills whole windows.
    start = (int(time.time() / window) + 1) * window
    time.sleep(max(0.0, start - time.time()))
    console.started = start
    spans: list[PhaseSpan] = []
    sent, lag = 0, 0.0
    try:
        for number, plan in enumerate(plans):
            begin = start + number * window
            phase = phases[plan.phase]
            if plan.index == 0:
                spans.append(PhaseSpan(phase, begin, begin + phase.windows * window, number))
                expected = f" (expected: {phase.detector})" if phase.detector else ""
                console.line(
                    f"--- phase {plan.phase + 1}/{len(phases)} {phase.name}: {phase.story}{expected}", BOLD
                )
            n = len(plan.events)
            for i, event in enumerate(plan.events):
                due = begin + i * window / n
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                    now = due
                lag = max(lag, now - due)
                # Event time is the sending time; a late sender keeps it inside its window (the window
                # closes 1 s after its end), so each event counts in the phase it belongs to.
                producer.send(
                    TOPIC,
                    key=MODEL.encode(),
                    value=json.dumps(stamp(event, min(now, begin + window - 0.001))).encode(),
                )
                if plan.malformed and i == n // 2:
                    for bad in plan.malformed:
                        producer.send(TOPIC, key=MODEL.encode(), value=bad)
            sent += n
            producer.flush()
    finally:
        producer.close()
    return spans, sent, lag


def _summary(
    console: Console,
    assessment: Assessment,
    receiver: WebhookReceiver,
    daemon: Daemon,
    spans: Sequence[PhaseSpan],
    watcher: AlertWatcher,
    lag: float,
    dashboard: str,
    pace: Pace,
    script: TrafficScript,
) -> None:
    console.plain()
    console.plain("Summary", BOLD)
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
    valid = sum(d["signature_valid"] for d in receiver.deliveries)
    console.plain(
        f"\nwebhook deliveries received: {len(receiver.deliveries)} ({valid} with a valid signature, "
        f"{sum(d['status'] == 'firing' for d in receiver.deliveries)} firing, "
        f"{sum(d['status'] == 'resolved' for d in receiver.deliveries)} resolved)"
    )
    counters = dict(daemon.pipeline.counters) if daemon.pipeline is not None else {}
    if counters:
        console.plain(
            f"messages: {counters['consumed']} consumed, {counters['accepted']} accepted, "
            f"{counters['rejected']} dead-lettered (malformed, kept with their reason), "
            f"{counters['duplicates']} duplicates, {counters['late']} late"
        )
    if script.benign.wrapped:
        console.plain(
            f"note: benign clients that ran out of fresh inputs and repeated: {sorted(script.benign.wrapped)}"
        )
    if lag > 1.0:
        console.plain(f"note: the sender fell {lag:.1f} s behind its schedule (a busy machine)", YELLOW)
    console.plain(
        f"alerts opened: {len(watcher.seen)}; the dashboard is gone with the daemon, the database stays: "
        f"sentinel alerts --db sqlite:///{WORKDIR / 'sentinel.db'}"
    )
    summary = {
        "model": MODEL,
        "fast": pace is FAST,
        "window_seconds": pace.window,
        "persistence": {"k": 2, "n": 3, "immediate_p": 1e-6, "resolve_after": 3},
        "dashboard_url": dashboard,
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
            for s in spans
        ],
        "attacks": [asdict(v) for v in assessment.verdicts],
        "false_alarms": assessment.false_alarms,
        "benign_named": assessment.benign_named,
        "alerts": [asdict(a) for a in sorted(watcher.seen.values(), key=lambda a: a.id)],
        "webhook": {
            "received": len(receiver.deliveries),
            "valid_signatures": valid,
            "deliveries": receiver.deliveries,
        },
        "messages": counters,
        "max_send_lag_seconds": round(lag, 3),
        "benign_clients_repeating": sorted(script.benign.wrapped),
    }
    (WORKDIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.plain(f"summary written to {WORKDIR / 'summary.json'}")


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
