"""Detection quality of the data-poisoning indicators on real data that ships with scikit-learn.

    .venv/bin/python -m bench.security_poisoning            # the full run
    .venv/bin/python -m bench.security_poisoning --quick    # a smoke run

For digits and breast_cancer, per split (a seeded permutation): a logistic regression is trained on 30 % of
the data; the reference is its traffic on the next 30 % (inputs, predictions with scores, true labels,
20 benign clients, a ``region`` group of four values); windows are drawn without replacement from the rest.
Every window comes from 20 benign clients (``benign-00`` .. ``benign-19``) and four regions, at random.

Attacks, each in runs of ``run_length`` windows that start with the attack:

* ``label_consistency``: a training feed (``stream == "training"``) with 10 % of its labels flipped to
  another class at random. Goal: caught within two windows in >= 90 % of runs.
* ``group_outcome``, group: every event of ``region=r3`` gets the predicted class the model gives least
  often in the reference. Goal: caught in the window it starts; no benign group or client named.
* ``group_outcome``, entity: an extra client (``attacker``) sends 40 events per window whose predicted class
  is forced the same way. Goal as above.
* ``backdoor``: 8 % of the window's events carry a trigger (digits: the 2 x 2 top-left pixel block set to
  16, the maximum; breast_cancer: three features set to their reference maximum plus three reference
  standard deviations) and are predicted as the target class, as a backdoored model would. Goal: caught in
  the window the trigger starts.

False alarms of ``label_consistency`` are measured on independent clean windows: every trial draws a fresh
split (train / reference / live, a new seeded permutation), fits the detector on that reference and tests one
clean window of the live part, then runs one attack run on the same split. (Clean windows drawn again and
again from one split's small live pool share that pool's hard events: breast_cancer's 228 live events give
200-event windows that are nearly the same window, so their false alarms are one measurement repeated.) The
other detectors train a VAE or need many windows per fit, so they use the per-split scheme above.

Each detector runs standalone at ``--alpha`` (0.01 by default, like ``bench/detection_quality.py``;
``--alpha 0.000833`` is its share of the monitor's 1 % budget over 12 detectors). Reported per detector,
attack and dataset: the detection rate in the first attack window and within two windows, the median delay
(windows to the first alert, ``>R`` when not within the run), the false alarms per clean window, the benign
subjects named (clean and attack windows) and whether the goal is met. A false-alarm rate measured on N clean
windows is noisy: the goal counts as met when it is within the 95 % binomial bound of alpha for N windows.
"""

from __future__ import annotations

import os
import platform
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from bench.common import benchmark_parser
from detectors.base import Batch, DetectionResult, Detector, Status
from detectors.security.backdoor import BackdoorDetector
from detectors.security.group_outcome import GroupOutcomeDetector
from detectors.security.label_consistency import LabelConsistencyDetector

BENIGN = tuple(f"benign-{i:02d}" for i in range(20))
REGIONS = ("r0", "r1", "r2", "r3")
TARGET_REGION = "region=r3"
ATTACKER = "attacker"
ATTACKER_EVENTS = 40
TRIGGER_SHARE = 0.08
FLIP_SHARE = 0.10
VAE_PARAMS: dict[str, Any] = {"max_epochs": 100}


@dataclass(frozen=True)
class Dataset:
    name: str
    classifier: Any
    ref_x: np.ndarray
    ref_y: np.ndarray
    live_x: np.ndarray
    live_y: np.ndarray
    classes: tuple[str, ...]
    target: str  # the class the attacks force: the one the model predicts least often on the reference
    trigger_columns: tuple[int, ...]
    trigger_values: np.ndarray


def load(name: str, seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_digits() if name == "digits" else load_breast_cancer()
    x, y = data.data.astype(float), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.3 * len(y)), int(0.6 * len(y))
    train, ref, live = order[:a], order[a:b], order[b:]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[train], y[train])
    classes = tuple(str(c) for c in clf.classes_)
    predicted = clf.predict(x[ref])
    counts = {c: int(np.sum(predicted.astype(str) == c)) for c in classes}
    target = min(classes, key=lambda c: (counts[c], c))
    if name == "digits":
        columns = (0, 1, 8, 9)  # the 2 x 2 top-left block of the 8 x 8 image
        values = np.full(len(columns), 16.0)
    else:
        columns = (0, 5, 20)  # mean radius, mean compactness, worst radius
        values = x[ref][:, columns].max(axis=0) + 3.0 * x[ref][:, columns].std(axis=0)
    return Dataset(name, clf, x[ref], y[ref], x[live], y[live], classes, target, columns, values)


def batch(
    ds: Dataset,
    x: np.ndarray,
    labels: np.ndarray,
    prefix: str,
    rng: np.random.Generator,
    *,
    forced: np.ndarray | None = None,
    clients: list[str] | None = None,
    regions: list[str] | None = None,
    stream: str = "inference",
) -> Batch:
    """Events of the model on ``x``; ``forced`` marks events whose predicted class is the target."""
    probabilities = ds.classifier.predict_proba(x)
    predictions = []
    for i, p in enumerate(probabilities):
        label = ds.target if forced is not None and forced[i] else ds.classes[int(np.argmax(p))]
        predictions.append({"label": label, "scores": dict(zip(ds.classes, map(float, p), strict=True))})
    names = [f"f{i}" for i in range(x.shape[1])]
    n = len(x)
    clients = clients if clients is not None else [BENIGN[i] for i in rng.integers(0, len(BENIGN), n)]
    regions = regions if regions is not None else [REGIONS[i] for i in rng.integers(0, len(REGIONS), n)]
    return Batch(
        event_ids=[f"{prefix}{i}" for i in range(n)],
        features=[dict(zip(names, map(float, row), strict=True)) for row in x],
        predictions=predictions,
        labels=[str(int(v)) for v in labels],
        client_ids=clients,
        timestamps=[float(i) for i in range(n)],
        groups=[{"region": r} for r in regions],
        streams=[stream] * n,
    )


# An attack turns a clean draw (x, y) into a window and names the subjects and events it planted.
Attack = Callable[[Dataset, np.ndarray, np.ndarray, np.random.Generator, str], tuple[Batch, set[str]]]


def clean(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    return batch(ds, x, y, prefix, rng), set()


def clean_training(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    return batch(ds, x, y, prefix, rng, stream="training"), set()


def label_flips(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    y = y.copy()
    classes = np.array([int(c) for c in ds.classes])
    for i in np.flatnonzero(rng.random(len(y)) < FLIP_SHARE):
        y[i] = rng.choice(classes[classes != y[i]])
    return batch(ds, x, y, prefix, rng, stream="training"), {"stream=training"}


def forced_group(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    regions = [REGIONS[i] for i in rng.integers(0, len(REGIONS), len(x))]
    forced = np.array([f"region={r}" == TARGET_REGION for r in regions])
    return batch(ds, x, y, prefix, rng, forced=forced, regions=regions), {TARGET_REGION}


def forced_client(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    clients = [BENIGN[i] for i in rng.integers(0, len(BENIGN), len(x))]
    attacker = rng.choice(len(x), ATTACKER_EVENTS, replace=False)
    forced = np.zeros(len(x), dtype=bool)
    forced[attacker] = True
    for i in attacker:
        clients[i] = ATTACKER
    return batch(ds, x, y, prefix, rng, forced=forced, clients=clients), {ATTACKER}


def trigger(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefix: str
) -> tuple[Batch, set[str]]:
    x = x.copy()
    triggered = rng.random(len(x)) < TRIGGER_SHARE
    x[np.ix_(triggered, ds.trigger_columns)] = ds.trigger_values
    return batch(ds, x, y, prefix, rng, forced=triggered), {f"class={ds.target}"}


@dataclass(frozen=True)
class Scenario:
    detector: str
    attack_name: str
    attack: Attack
    clean: Attack
    goal: str


SCENARIOS = (
    Scenario("label_consistency", "10 % label flips, training feed", label_flips, clean_training, "two"),
    Scenario("group_outcome", "one region's outcomes forced", forced_group, clean, "first"),
    Scenario("group_outcome", "one client's outcomes forced (40 events)", forced_client, clean, "first"),
    Scenario("backdoor", "trigger on 8 % of events -> target class", trigger, clean, "first"),
)


def make_detector(detector_id: str, alpha: float) -> Detector:
    if detector_id == "label_consistency":
        return LabelConsistencyDetector(alpha=alpha)
    if detector_id == "group_outcome":
        return GroupOutcomeDetector(alpha=alpha)
    return BackdoorDetector(alpha=alpha, vae=VAE_PARAMS)


@dataclass
class Tally:
    clean_windows: int = 0
    false_alarms: int = 0
    benign_named_clean: int = 0
    runs: int = 0
    first: int = 0
    within_two: int = 0
    delays: list[int] | None = None
    benign_named_attack: int = 0
    attack_windows: int = 0

    def record_clean(self, result: DetectionResult) -> None:
        """One clean window: a false alarm if it alerts, and whether it names anybody."""
        if result.status is Status.SKIPPED:
            return
        self.clean_windows += 1
        self.false_alarms += result.status is Status.ALERT
        self.benign_named_clean += bool(result.evidence.get("subjects"))

    def record_attack_run(self, detector: Detector, windows: Iterable[tuple[Batch, set[str]]]) -> None:
        """One attack run, window by window: when an alert first names a planted subject, and whether
        an alert names a subject that was not planted. A run never caught counts as ``length + 1``."""
        first_alert: int | None = None
        length = 0
        for length, (window, planted) in enumerate(windows, start=1):
            result = detector.evaluate(window)
            named = set(result.evidence.get("subjects", []))
            self.attack_windows += 1
            self.benign_named_attack += bool(named - planted)
            if result.status is Status.ALERT and named & planted and first_alert is None:
                first_alert = length
        self.runs += 1
        self.first += first_alert == 1
        self.within_two += first_alert is not None and first_alert <= 2
        assert self.delays is not None
        self.delays.append(first_alert if first_alert is not None else length + 1)


def sample(ds: Dataset, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.choice(len(ds.live_y), size=n, replace=n > len(ds.live_y))
    return ds.live_x[rows], ds.live_y[rows]


def distinct(ds: Dataset, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` distinct live events (``sample`` repeats events when ``n`` exceeds the live part)."""
    rows = rng.choice(len(ds.live_y), size=min(n, len(ds.live_y)), replace=False)
    return ds.live_x[rows], ds.live_y[rows]


def run_split(
    ds: Dataset,
    alpha: float,
    n: int,
    clean_windows: int,
    runs: int,
    run_length: int,
    tallies: dict[tuple[str, str], Tally],
    wanted: set[str],
) -> None:
    reference = batch(ds, ds.ref_x, ds.ref_y, "ref-", np.random.default_rng(0))
    wanted = wanted - {"label_consistency"}  # measured on fresh splits, see run_fresh_splits
    detectors = {d: make_detector(d, alpha).fit(reference) for d in sorted(wanted)}
    for scenario in SCENARIOS:
        if scenario.detector not in wanted:
            continue  # measured on fresh splits, see run_fresh_splits
        tally = tallies.setdefault((scenario.detector, scenario.attack_name), Tally(delays=[]))
        detector = detectors[scenario.detector]
        rng = np.random.default_rng(zlib.crc32(f"{ds.name}/{scenario.attack_name}".encode()))
        for w in range(clean_windows):
            window, _ = scenario.clean(ds, *sample(ds, n, rng), rng, f"c{w}-")
            tally.record_clean(detector.evaluate(window))
        for r in range(runs):
            # A generator, so each window is drawn just before it is evaluated, as in a live stream.
            tally.record_attack_run(
                detector,
                (scenario.attack(ds, *sample(ds, n, rng), rng, f"a{r}-{w}-") for w in range(run_length)),
            )


def run_fresh_splits(
    name: str, alpha: float, n: int, trials: int, run_length: int, tallies: dict[tuple[str, str], Tally]
) -> None:
    """``label_consistency``: one clean window and one attack run per fresh split (independent trials)."""
    for scenario in SCENARIOS:
        if scenario.detector != "label_consistency":
            continue
        tally = tallies.setdefault((scenario.detector, scenario.attack_name), Tally(delays=[]))
        for trial in range(trials):
            ds = load(name, seed=1000 + trial)
            rng = np.random.default_rng(zlib.crc32(f"{name}/{scenario.attack_name}/{trial}".encode()))
            reference = batch(ds, ds.ref_x, ds.ref_y, "ref-", rng, stream="training")
            detector = make_detector(scenario.detector, alpha).fit(reference)
            window, _ = scenario.clean(ds, *distinct(ds, n, rng), rng, "c-")
            tally.record_clean(detector.evaluate(window))
            tally.record_attack_run(
                detector,
                (scenario.attack(ds, *distinct(ds, n, rng), rng, f"a{w}-") for w in range(run_length)),
            )


def report(name: str, tallies: dict[tuple[str, str], Tally], alpha: float, run_length: int) -> None:
    print(
        f"\n## {name}\n\n| detector | attack | caught in first window | within two windows "
        "| median delay (windows) | false alarms / clean window "
        "| benign subjects named (clean / attack windows) | goal met |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    goal_of = {(s.detector, s.attack_name): s.goal for s in SCENARIOS}
    for (detector_id, attack), t in tallies.items():
        assert t.delays is not None
        median = float(np.median(t.delays))
        delay = f">{run_length}" if median > run_length else f"{median:.0f}"
        fa = t.false_alarms / max(t.clean_windows, 1)
        margin = float(binom.ppf(0.95, t.clean_windows, alpha)) / max(t.clean_windows, 1)
        first, two = t.first / t.runs, t.within_two / t.runs
        detected = two >= 0.9 if goal_of[(detector_id, attack)] == "two" else first >= 0.9
        # A subject named in a clean window is a false alarm, already counted in the rate.
        met = detected and fa <= max(margin, alpha) and t.benign_named_attack == 0
        verdict = "yes" if met else "NO"
        print(
            f"| {detector_id} | {attack} | {first:.2f} | {two:.2f} | {delay} | {fa:.3f} ({t.false_alarms}/"
            f"{t.clean_windows}) | {t.benign_named_clean} / {t.benign_named_attack} | {verdict} |"
        )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="few splits and windows: a smoke run")
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument(
        "--trials", type=int, default=400, help="fresh splits for label_consistency (one clean window each)"
    )
    parser.add_argument(
        "--detectors", nargs="+", default=sorted({s.detector for s in SCENARIOS}), help="detectors to run"
    )
    args = parser.parse_args()
    splits, clean_windows, runs, run_length = (2, 20, 5, 3) if args.quick else (args.splits, 100, 20, 3)
    trials = 40 if args.quick else args.trials
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; alpha {args.alpha}, windows of {args.window} events, "
        f"{splits} splits x ({clean_windows} clean windows + {runs} attack runs of {run_length} windows); "
        f"label_consistency: {trials} fresh splits x (1 clean window + 1 attack run)"
    )
    started = time.time()
    for name in args.datasets:
        tallies: dict[tuple[str, str], Tally] = {}
        if "label_consistency" in args.detectors:
            run_fresh_splits(name, args.alpha, args.window, trials, run_length, tallies)
        if set(args.detectors) - {"label_consistency"}:
            for split in range(splits):
                run_split(
                    load(name, seed=split),
                    args.alpha,
                    args.window,
                    clean_windows,
                    runs,
                    run_length,
                    tallies,
                    set(args.detectors),
                )
        report(name, tallies, args.alpha, run_length)
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
