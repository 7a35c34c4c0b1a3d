"""The demo's scripted timeline: its phases, its pace, and the traffic of every window.

Twenty benign clients (:data:`BENIGN_CLIENTS`) send natural digits throughout; on top of them each phase of
:func:`timeline` plays one attack (or none, on the clean phases). :class:`TrafficScript` turns the phases into
:class:`WindowPlan` s, the events of each window in sending order, all drawn from one seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.demo.attacks import (
    flip_labels,
    out_of_range_inputs,
    probing_queries,
    shift_inputs,
    target_class,
    uniform_queries,
    with_trigger,
)
from monitor.demo.data import BenignClients, digits_model, prediction_events

MODEL = "digits-classifier"
BENIGN_CLIENTS = tuple(f"app-{i:02d}" for i in range(1, 21))
BENIGN_PER_WINDOW = 20  # queries per benign client per window, as in bench/security_attacks.py
FORCED_REGION = "latam"  # the region whose outcomes the group_outcome phase forces
FLIP_SHARE = 0.15  # labels flipped in the poisoned training feed


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
