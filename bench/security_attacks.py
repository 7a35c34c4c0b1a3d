"""Detection quality of the per-client attack indicators (evasion, extraction, probing) on real data.

    .venv/bin/python -m bench.security_attacks            # 5 splits per dataset
    .venv/bin/python -m bench.security_attacks --quick    # 2 splits, fewer windows: a smoke run

For digits and breast_cancer and several seeded splits: a logistic regression is trained on 30 % of the data,
the reference is its traffic on another 30 %, and 20 benign clients send the held-out 40 % (each client its
own random order, no repeats until the pool is exhausted), 20 queries per client per one-minute window. Each
detector runs at alpha = 0.01 / 12 (the monitor's default significance split over its detectors). Scenarios,
each with its own one attacker added to the benign clients:

* clean: benign clients only (false alarms per window, benign clients named);
* evasion, out of range: 30 held-out inputs per window with their 8 most variable features + 4 sd;
* evasion, FGSM 1 sd: 30 held-out inputs per window, each feature moved by 1 sd in the sign of the gradient
  towards another class (the classifier is linear, so this is the exact FGSM step);
* extraction, uniform: 100 queries per window drawn uniformly within the reference's per-feature range;
* extraction, replay: 100 natural held-out inputs per window (the hard case: the queries look natural);
* probing: 25 held-out records x 40 perturbations of 1 % sd, 250 per window, after 3 clean windows;
* population drift, no attacker: every benign input's 8 most variable features moved + 4 sd (the drift of
  ``sentinel demo``); for evasion in every window, for extraction in 2 windows after 3 clean ones, followed by
  clean windows whose clients' histories still hold the shifted queries. Reported: benign clients named;
* evasion, + 6 sd among a population drifted + 4 sd: an evader further out than everyone else;
* extraction, uniform after a population drift: 3 clean windows, 2 drifted, then the uniform extractor.

Reported per dataset, detector and scenario: the share of attack windows that alert naming the attacker, the
false alarms per clean window (for the drift scenarios: the windows without attacker that alert), the
benign clients ever named, and the delay (windows, and queries of the attacker, to the first alert naming
it), the median over splits.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.common import benchmark_parser
from detectors.base import Batch, Detector, Status
from detectors.security.evasion import EvasionDetector
from detectors.security.extraction import ExtractionDetector
from detectors.security.probing import ProbingDetector

ALPHA = 0.01 / 12
N_BENIGN = 20
PER_CLIENT = 20
WINDOW = 60.0


@dataclass(frozen=True)
class Split:
    name: str
    classifier: Any
    classes: tuple[str, ...]
    reference_x: np.ndarray
    live_x: np.ndarray
    std: np.ndarray

    def batch(self, x: np.ndarray, clients: list[str], start: float, prefix: str) -> Batch:
        proba = self.classifier.predict_proba(x)
        names = [f"f{i}" for i in range(x.shape[1])]
        return Batch(
            event_ids=[f"{prefix}{i}" for i in range(len(x))],
            features=[dict(zip(names, map(float, row), strict=True)) for row in x],
            predictions=[
                {
                    "label": self.classes[int(np.argmax(p))],
                    "scores": dict(zip(self.classes, map(float, p), strict=True)),
                }
                for p in proba
            ],
            client_ids=clients,
            timestamps=list(np.linspace(start, start + WINDOW - 1.0, len(x))),
        )


def load(name: str, seed: int) -> Split:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_digits() if name == "digits" else load_breast_cancer()
    x, y = data.data.astype(float), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.3 * len(y)), int(0.6 * len(y))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[order[:a]], y[order[:a]])
    ref, live = x[order[a:b]], x[order[b:]]
    return Split(name, clf, tuple(str(c) for c in clf.classes_), ref, live, ref.std(axis=0))


# ---------------------------------------------------------------------------------------------- attackers

Attacker = Callable[[Split, int, np.random.Generator], np.ndarray]


DRIFT_SD = 4.0  # the population drift: + 4 sd on the 8 most variable features, as the out-of-range evader


def shifted(split: Split, x: np.ndarray, sd: float) -> np.ndarray:
    """A copy of ``x`` with its 8 most variable features moved up by ``sd`` reference standard deviations."""
    moved = np.argsort(-split.std)[:8]
    out = x.copy()
    out[:, moved] += sd * split.std[moved]
    return out


def out_of_range(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    return shifted(split, split.live_x[rng.choice(len(split.live_x), n, replace=False)], DRIFT_SD)


def further_out(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    """Out-of-range inputs 2 sd further than the population drift moves everyone."""
    return shifted(split, split.live_x[rng.choice(len(split.live_x), n, replace=False)], DRIFT_SD + 2.0)


def no_attacker(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.empty((0, split.live_x.shape[1]))


def fgsm(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    x = split.live_x[rng.choice(len(split.live_x), n, replace=False)].copy()
    scaler, lr = split.classifier[0], split.classifier[-1]
    weights = lr.coef_ / scaler.scale_  # d logit / d x of the linear model
    predicted = lr.predict(scaler.transform(x))
    for i in range(n):
        if weights.shape[0] == 1:  # binary: push the single logit across zero
            gradient = weights[0] * (1.0 if predicted[i] == lr.classes_[0] else -1.0)
        else:
            source = int(np.flatnonzero(lr.classes_ == predicted[i])[0])
            target = int(rng.choice([c for c in range(len(lr.classes_)) if c != source]))
            gradient = weights[target] - weights[source]
        x[i] += 1.0 * split.std * np.sign(gradient)
    return x


def uniform(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(
        split.reference_x.min(axis=0), split.reference_x.max(axis=0), (n, split.live_x.shape[1])
    )


def replay(split: Split, n: int, rng: np.random.Generator) -> np.ndarray:
    return split.live_x[rng.choice(len(split.live_x), n, replace=n > len(split.live_x))]


def probing_attack(split: Split, rng: np.random.Generator) -> np.ndarray:
    records = split.live_x[rng.choice(len(split.live_x), 25, replace=False)]
    queries = np.repeat(records, 40, axis=0) + rng.normal(0.0, 0.01, (1000, records.shape[1])) * split.std
    return queries[rng.permutation(1000)]


@dataclass
class Scenario:
    detector: str
    name: str
    per_window: int
    attacker: Attacker | None  # None: the probing attack, a fixed 1,000-query sequence
    clean_before: int = 0
    drifted: range = range(0)  # windows in which every benign client's inputs are shifted (population drift)
    after: int = 0  # windows of benign traffic (and the attacker, if any) after the attack windows


SCENARIOS = [
    Scenario("evasion", "out of range (+4 sd, 8 features)", 30, out_of_range),
    Scenario("evasion", "FGSM 1 sd", 30, fgsm),
    Scenario("extraction", "uniform random queries", 100, uniform),
    Scenario("extraction", "replay of natural held-out data (hard case)", 100, replay),
    Scenario("probing", "25 records x 40 perturbations", 250, None, clean_before=3),
    Scenario(
        "evasion", "population drift (+4 sd, every client), no attacker", 0, no_attacker, drifted=range(99)
    ),
    Scenario(
        "evasion", "out of range (+6 sd) among a population drifted +4 sd", 30, further_out, drifted=range(99)
    ),
    Scenario(
        "extraction",
        "population drift (+4 sd) for 2 windows after 3 clean, no attacker",
        0,
        no_attacker,
        clean_before=5,
        drifted=range(3, 5),
    ),
    Scenario(
        "extraction",
        "uniform random queries after a population drift",
        100,
        uniform,
        clean_before=5,
        drifted=range(3, 5),
    ),
]


@dataclass
class Outcome:
    alerts: int = 0
    windows: int = 0
    quiet_alerts: int = 0  # alerts in windows without an active attacker
    quiet_windows: int = 0
    named_benign: set[str] = field(default_factory=set)
    delay_windows: float = float("nan")
    delay_queries: float = float("nan")


def traffic(
    split: Split, windows: int, scenario: Scenario | None, rng: np.random.Generator
) -> list[tuple[Batch, bool]]:
    """The windows of one run, each with whether the attacker is active in it."""
    orders = [rng.permutation(len(split.live_x)) for _ in range(N_BENIGN)]
    attack = probing_attack(split, rng) if scenario is not None and scenario.attacker is None else None
    out = []
    for w in range(windows):
        rows, clients = [], []
        drift = DRIFT_SD if scenario is not None and w in scenario.drifted else 0.0
        for c, order in enumerate(orders):
            chosen = order[(w * PER_CLIENT) % len(order) :][:PER_CLIENT]
            rows.append(shifted(split, split.live_x[chosen], drift))
            clients += [f"benign-{c}"] * len(chosen)
        active = scenario is not None and w >= scenario.clean_before
        if scenario is not None and active:
            k = w - scenario.clean_before
            if scenario.attacker is None:
                assert attack is not None
                x = attack[k * scenario.per_window : (k + 1) * scenario.per_window]
            else:
                x = scenario.attacker(split, scenario.per_window, rng)
            active = len(x) > 0
            rows.append(x)
            clients += ["attacker"] * len(x)
        x = np.concatenate(rows)
        mixed = rng.permutation(len(x))
        out.append((split.batch(x[mixed], [clients[i] for i in mixed], w * WINDOW, f"w{w}-"), active))
    return out


def run_scenario(
    detector: Detector, windows: list[tuple[Batch, bool]], per_window: int, before: int
) -> Outcome:
    outcome = Outcome()
    for w, (window, active) in enumerate(windows):
        result = detector.evaluate(window)
        subjects = list(result.evidence.get("subjects", [])) if result.status is not Status.SKIPPED else []
        outcome.named_benign |= {s for s in subjects if s != "attacker"}
        if active:
            outcome.windows += 1
            hit = result.status is Status.ALERT and "attacker" in subjects
            outcome.alerts += hit
            if hit and np.isnan(outcome.delay_windows):
                outcome.delay_windows = w - before + 1
                outcome.delay_queries = (w - before + 1) * per_window
        elif result.status is not Status.SKIPPED:
            outcome.quiet_windows += 1
            outcome.quiet_alerts += result.status is Status.ALERT
    return outcome


def fit(split: Split, quick: bool) -> dict[str, tuple[Detector, dict[str, Any]]]:
    reference = split.batch(split.reference_x, [], 0.0, "ref-")
    detectors: list[Detector] = [
        EvasionDetector(alpha=ALPHA, vae={"max_epochs": 60} if quick else {}),
        ExtractionDetector(alpha=ALPHA),
        ProbingDetector(alpha=ALPHA),
    ]
    fitted = {}
    for detector in detectors:
        detector.fit(reference)
        fitted[detector.id] = (detector, detector.state_dict())  # the state to reset to before each run
    return fitted


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="2 splits, fewer windows: a smoke run")
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args()
    splits = 2 if args.quick else args.splits
    attack_windows = 3 if args.quick else 5
    clean_windows = 6 if args.quick else 10
    started = time.time()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; alpha {ALPHA:.6f}, {N_BENIGN} benign clients x {PER_CLIENT} "
        f"queries per window, {splits} splits"
    )
    rows: list[tuple[str, str, str, str, str, str, str, str]] = []
    goals: list[tuple[str, str, bool]] = []
    for name in ("digits", "breast_cancer"):
        clean_alarms: dict[str, list[int]] = {"evasion": [], "extraction": [], "probing": []}
        # The window's corrected p-value (its most significant client): the share of clean windows at or below
        # 0.01 / 0.05 is the false-alarm rate the detector would have at that alpha, a calibration check that
        # the few clean windows cannot give at alpha = 0.01 / 12.
        clean_p: dict[str, list[float]] = {d: [] for d in clean_alarms}
        clean_named: dict[str, set[str]] = {d: set() for d in clean_alarms}
        per_scenario: dict[int, list[Outcome]] = {i: [] for i in range(len(SCENARIOS))}
        for seed in range(splits):
            split = load(name, seed)
            fitted = fit(split, args.quick)
            rng = np.random.default_rng(1000 + seed)
            clean = traffic(split, clean_windows, None, rng)
            for detector_id, (detector, state) in fitted.items():
                detector.load_state_dict(state)
                for window, _ in clean:
                    result = detector.evaluate(window)
                    clean_alarms[detector_id].append(int(result.status is Status.ALERT))
                    if result.status is not Status.SKIPPED:
                        clean_named[detector_id] |= set(result.evidence.get("subjects", []))
                        clean_p[detector_id].append(1.0 if result.p_value is None else result.p_value)
            for i, scenario in enumerate(SCENARIOS):
                detector, state = fitted[scenario.detector]
                detector.load_state_dict(state)
                windows = traffic(split, scenario.clean_before + attack_windows, scenario, rng)
                per_scenario[i].append(
                    run_scenario(detector, windows, scenario.per_window, scenario.clean_before)
                )
        for detector_id, alarms in clean_alarms.items():
            rows.append(
                (
                    name,
                    detector_id,
                    "clean (20 benign clients)",
                    "-",
                    f"{np.mean(alarms):.3f} ({sum(alarms)}/{len(alarms)}); tested windows with p <= 0.01: "
                    f"{np.mean(np.array(clean_p[detector_id]) <= 0.01):.3f}, <= 0.05: "
                    f"{np.mean(np.array(clean_p[detector_id]) <= 0.05):.3f} (of {len(clean_p[detector_id])})",
                    str(len(clean_named[detector_id])),
                    "-",
                    "-",
                )
            )
        for i, scenario in enumerate(SCENARIOS):
            outcomes = per_scenario[i]
            attacked = sum(o.windows for o in outcomes)
            rate = f"{sum(o.alerts for o in outcomes) / attacked:.2f}" if attacked else "-"
            quiet = sum(o.quiet_windows for o in outcomes)
            quiet_alarms = sum(o.quiet_alerts for o in outcomes)
            false_alarms = f"{quiet_alarms / quiet:.3f} ({quiet_alarms}/{quiet})" if quiet else "-"
            named = set().union(*(o.named_benign for o in outcomes))
            caught = [o for o in outcomes if not np.isnan(o.delay_windows)]
            delay_w = f"{np.median([o.delay_windows for o in caught]):.0f}" if caught else "never"
            delay_q = f"{np.median([o.delay_queries for o in caught]):.0f}" if caught else "never"
            if not attacked:  # no attacker to catch
                delay_w = delay_q = "-"
            rows.append(
                (
                    name,
                    scenario.detector,
                    scenario.name,
                    rate,
                    false_alarms,
                    str(len(named)),
                    delay_w,
                    delay_q,
                )
            )
            if scenario.drifted and scenario.attacker is no_attacker:
                goals.append(
                    (
                        f"{name}: {scenario.detector} names no benign client in a population drift",
                        str(len(named)),
                        not named,
                    )
                )
            elif scenario.drifted:
                ok = len(caught) == len(outcomes) and not named
                goals.append(
                    (
                        f"{name}: {scenario.detector}, {scenario.name}: caught in every run, no benign named",
                        delay_w,
                        ok,
                    )
                )
            elif scenario.detector == "extraction" and scenario.attacker is uniform:
                ok = (
                    len(caught) == len(outcomes)
                    and all(o.delay_queries <= 500 for o in outcomes)
                    and not named
                )
                goals.append(
                    (f"{name}: uniform extraction caught within 500 queries, no benign named", delay_q, ok)
                )
            if scenario.detector == "probing":
                ok = (
                    len(caught) == len(outcomes) and all(o.delay_windows == 1 for o in outcomes) and not named
                )
                goals.append(
                    (f"{name}: probing caught in the window it starts, no benign named", delay_w, ok)
                )
        for detector_id, alarms in clean_alarms.items():
            ok = not clean_named[detector_id]
            goals.append(
                (f"{name}: {detector_id} names no benign client on clean traffic", str(sum(alarms)), ok)
            )

    print(
        "\n| dataset | detector | scenario | detection rate (attack windows) | false alarms / clean window "
        "| benign clients named | median delay (windows) | median delay (attacker queries) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n| goal | measured | met |\n|---|---:|---|")
    for text, value, ok in goals:
        print(f"| {text} | {value} | {'yes' if ok else 'NO'} |")
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
