"""Detection quality of every registered detector on real data that ships with scikit-learn.

    .venv/bin/python -m bench.detection_quality            # the full run recorded in docs/benchmarks.md
    .venv/bin/python -m bench.detection_quality --quick    # a smoke run

For digits and breast_cancer: a classifier is trained on one part; the reference is its traffic (inputs,
predictions with scores, true labels) on a second part; live windows are drawn (with replacement) from a
third, disjoint part. Each detector runs standalone at alpha = 0.01. Reported per detector, shift and window
size: the detection rate on shifted windows, the observed false-alarm rate on clean windows, and the
detection delay (windows from the start of a shift to the first alert). Then the alarm budget: the monitor's
default settings (every detector on, the significance split across them, 2-of-3 persistence) on 1,000 clean
windows, as alerts per 1,000 windows and per day of one-minute windows.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import benchmark_parser
from detectors.base import Batch, DetectionResult, Detector, Status
from detectors.registry import DETECTORS, create_detector

ALPHA = 0.01


@dataclass(frozen=True)
class Dataset:
    name: str
    classifier: Any
    ref_x: np.ndarray
    ref_y: np.ndarray
    live_x: np.ndarray
    live_y: np.ndarray
    std: np.ndarray
    classes: tuple[str, ...]
    noisy_features: np.ndarray  # the half of the features that the noise shifts
    unit_feature: int  # the feature that the unit change moves


def load(name: str, seed: int = 0) -> Dataset:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_digits() if name == "digits" else load_breast_cancer()
    x, y = data.data.astype(float), data.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    a, b = int(0.3 * len(y)), int(0.6 * len(y))
    train, ref, live = order[:a], order[a:b], order[b:]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[train], y[train])
    std = x[ref].std(axis=0)
    varying = np.flatnonzero(std > 0)
    noisy = rng.choice(varying, size=len(varying) // 2, replace=False)
    unit = int(varying[np.argmax(std[varying])])
    return Dataset(
        name, clf, x[ref], y[ref], x[live], y[live], std, tuple(str(c) for c in clf.classes_), noisy, unit
    )


def batch(ds: Dataset, x: np.ndarray, labels: np.ndarray, prefix: str) -> Batch:
    probabilities = ds.classifier.predict_proba(x)
    predictions = [
        {"label": ds.classes[int(np.argmax(p))], "scores": dict(zip(ds.classes, map(float, p), strict=True))}
        for p in probabilities
    ]
    names = [f"f{i}" for i in range(x.shape[1])]
    return Batch(
        event_ids=[f"{prefix}{i}" for i in range(len(x))],
        features=[dict(zip(names, map(float, row), strict=True)) for row in x],
        predictions=predictions,
        labels=[str(int(v)) for v in labels],
        client_ids=["client"] * len(x),
        timestamps=[float(i) for i in range(len(x))],
    )


Shift = Callable[[Dataset, np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def noise(scale: float) -> Shift:
    def shift(
        ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        x = x.copy()
        cols = ds.noisy_features
        x[:, cols] += rng.normal(0.0, 1.0, size=(len(x), len(cols))) * ds.std[cols] * scale
        return x, y

    return shift


def unit_change(
    ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    x = x.copy()
    x[:, ds.unit_feature] += ds.std[ds.unit_feature]
    return x, y


def label_flip(share: float) -> Shift:
    def shift(
        ds: Dataset, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        y = y.copy()
        flip = rng.random(len(y)) < share
        classes = np.array([int(c) for c in ds.classes])
        for i in np.flatnonzero(flip):
            y[i] = rng.choice(classes[classes != y[i]])
        return x, y

    return shift


SHIFTS: dict[str, Shift | None] = {
    "noise 0.1 sd, half the features": noise(0.1),
    "noise 0.5 sd, half the features": noise(0.5),
    "noise 1 sd, half the features": noise(1.0),
    "+1 sd on one feature": unit_change,
    "a class disappears": None,  # handled in sample(): the class is left out of the draw
    "label flips 5 %": label_flip(0.05),
    "label flips 10 %": label_flip(0.10),
    "label flips 20 %": label_flip(0.20),
}


def sample(ds: Dataset, n: int, shift: str | None, rng: np.random.Generator, prefix: str) -> Batch:
    pool = np.arange(len(ds.live_y))
    if shift == "a class disappears":
        pool = pool[ds.live_y != int(ds.classes[0])]
    # Without replacement where the pool allows: a window is then a fresh sample of the population, as live
    # traffic is; with replacement every window would share the pool's own deviation from the reference.
    rows = rng.choice(pool, size=n, replace=n > len(pool))
    x, y = ds.live_x[rows], ds.live_y[rows]
    fn = SHIFTS.get(shift) if shift else None
    if fn is not None:
        x, y = fn(ds, x, y, rng)
    return batch(ds, x, y, prefix)


def alerted(result: DetectionResult) -> bool:
    return result.status is Status.ALERT


def fit_all(ds: Dataset, alpha: float, only: list[str] | None = None) -> dict[str, Detector]:
    reference = batch(ds, ds.ref_x, ds.ref_y, "ref-")
    fitted = {}
    for detector_id in only or list(DETECTORS):
        detector = create_detector(detector_id, {"alpha": alpha})
        started = time.perf_counter()
        fitted[detector_id] = detector.fit(reference)
        print(f"  fitted {detector_id} on {len(reference)} events in {time.perf_counter() - started:.1f} s")
    return fitted


Row = tuple[str, str, int, float, float, str]


def run(
    datasets: list[str],
    sizes: list[int],
    clean: int,
    shifted: int,
    run_length: int,
    splits: int = 5,
    only: list[str] | None = None,
) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    for name in datasets:
        # Several reference/live splits, each with its own fitted detectors: one split's particular sample
        # would otherwise bias every figure the same way.
        per_split: list[list[Row]] = []
        for split in range(splits):
            ds = load(name, seed=split)
            if split == 0:
                print(
                    f"\n## {name}: reference {len(ds.ref_y)} events, live pool {len(ds.live_y)} events, "
                    f"{splits} splits\n"
                )
            detectors = fit_all(ds, ALPHA, only)
            per_split.append(
                evaluate_split(ds, detectors, sizes, clean // splits, shifted // splits, run_length)
            )
        rows = average(per_split)
        print(
            "| detector | shift | window | detection rate | false alarms (clean) | median delay (windows) |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for detector_id, shift, n, rate, fa, delay in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
            shown = "n/a" if np.isnan(fa) else f"{fa:.3f}"
            print(f"| {detector_id} | {shift} | {n} | {rate:.2f} | {shown} | {delay} |")
        goals(rows, clean_windows=(clean // splits) * splits)
        if only is None:
            budget(load(name, seed=0), windows=1000)


def average(per_split: list[list[Row]]) -> list[Row]:
    """Mean rates over the splits; the delay is the median of the splits' median delays."""
    merged: dict[tuple[str, str, int], list[Row]] = {}
    for rows in per_split:
        for row in rows:
            merged.setdefault((row[0], row[1], row[2]), []).append(row)
    result: list[Row] = []
    for (detector_id, shift, n), group in merged.items():
        rate = float(np.mean([r[3] for r in group]))
        measured = [r[4] for r in group if not np.isnan(r[4])]
        fa = float(np.mean(measured)) if measured else float("nan")
        # ">5" (not detected within a run) sorts above every number.
        delays = [float(r[5].lstrip(">")) + (0.5 if r[5].startswith(">") else 0.0) for r in group]
        median = float(np.median(delays))
        delay = f"{median:.0f}" if median == int(median) else f">{int(median)}"
        result.append((detector_id, shift, n, rate, fa, delay))
    return result


def evaluate_split(
    ds: Dataset, detectors: dict[str, Detector], sizes: list[int], clean: int, shifted: int, run_length: int
) -> list[Row]:
    """Clean and shifted windows of each size on one split; delays count from the start of each run."""
    rows: list[Row] = []
    for n in sizes:
        rng = np.random.default_rng(1000 + n)
        false_alarms = dict.fromkeys(detectors, 0)
        tested = dict.fromkeys(detectors, 0)
        for w in range(clean):
            window = sample(ds, n, None, rng, f"c{w}-")
            for detector_id, detector in detectors.items():
                result = detector.evaluate(window)
                if result.status is not Status.SKIPPED:
                    tested[detector_id] += 1
                    false_alarms[detector_id] += alerted(result)
        for shift in SHIFTS:
            hits = dict.fromkeys(detectors, 0)
            delays: dict[str, list[int]] = {d: [] for d in detectors}
            for run_start in range(0, shifted, run_length):
                first: dict[str, int | None] = dict.fromkeys(detectors, None)
                for w in range(run_start, min(run_start + run_length, shifted)):
                    window = sample(ds, n, shift, rng, f"s{w}-")
                    for detector_id, detector in detectors.items():
                        if alerted(detector.evaluate(window)):
                            hits[detector_id] += 1
                            if first[detector_id] is None:
                                first[detector_id] = w - run_start + 1
                for detector_id in detectors:
                    found = first[detector_id]
                    delays[detector_id].append(found if found is not None else run_length + 1)
            for detector_id in detectors:
                # A window larger than the live pool repeats pool events: its false-alarm rate would measure
                # the pool's own sampling deviation from the reference, not the detector. Not reported.
                measurable = tested[detector_id] and n < len(ds.live_y)
                fa = false_alarms[detector_id] / tested[detector_id] if measurable else float("nan")
                median = float(np.median(delays[detector_id]))
                delay = f"{median:.0f}" if median <= run_length else f">{run_length}"
                rows.append((detector_id, shift, n, hits[detector_id] / shifted, fa, delay))
    return rows


def goals(rows: list[Row], clean_windows: int) -> None:
    """The issue's goals, each as met / not met, on the best detector for the shift."""

    def best(shift: str, n: int) -> float:
        return max((r[3] for r in rows if r[1] == shift and r[2] == n), default=float("nan"))

    from scipy.stats import binom

    worst_fa = max((r[4] for r in rows if not np.isnan(r[4])), default=float("nan"))
    # A rate measured on N clean windows is noisy: the goal is met when it is within the 95 % binomial bound
    # of alpha for N windows (for N = 200 and alpha 0.01: 2.5 %), i.e. not significantly above alpha.
    margin = float(binom.ppf(0.95, clean_windows, ALPHA)) / clean_windows
    checks = [
        (
            f"false alarms within alpha 0.01 (worst detector and size; <= {margin:.3f} on {clean_windows})",
            worst_fa,
            worst_fa <= margin,
        ),
        (
            "0.5 sd noise on half the features, 200 events: >= 95 %",
            best("noise 0.5 sd, half the features", 200),
            best("noise 0.5 sd, half the features", 200) >= 0.95,
        ),
        (
            "+1 sd on one feature, 200 events: 100 %",
            best("+1 sd on one feature", 200),
            best("+1 sd on one feature", 200) >= 1.0,
        ),
    ]
    flips = [r for r in rows if r[1] == "label flips 10 %" and r[2] == 200]
    within_two = max((r[3] for r in flips), default=float("nan"))
    # Within two windows: P(alert in window 1 or 2) = 1 - (1 - rate)^2 for independent windows.
    two = 1 - (1 - within_two) ** 2
    checks.append(("10 % label flips within two windows, 200 events: >= 90 %", two, two >= 0.9))
    print("\n| goal | measured | met |\n|---|---:|---|")
    for text, value, ok in checks:
        print(f"| {text} | {value:.3f} | {'yes' if ok else 'NO'} |")


def budget(ds: Dataset, windows: int, n: int = 200) -> None:
    """Alerts on a clean stream with the monitor's default alarm budget, through the monitor's own rule."""
    from monitor.config import DEFAULT_DETECTORS, AppConfig
    from monitor.evaluation import PersistenceHistory

    config = AppConfig()
    settings = config.defaults
    enabled = [d for d in DEFAULT_DETECTORS if d in DETECTORS]
    reference = batch(ds, ds.ref_x, ds.ref_y, "ref-")
    detectors = {d: create_detector(d, settings.detector_params(d)).fit(reference) for d in enabled}
    persistence = PersistenceHistory.for_model(settings)
    rng = np.random.default_rng(7)
    raw = alerts = 0
    for w in range(windows):
        window = sample(ds, n, None, rng, f"b{w}-")
        for detector in detectors.values():
            result = detector.evaluate(window)
            raw += alerted(result)
            alerts += alerted(persistence.judge(result))
    print(
        f"\nalarm budget, {ds.name}: {len(enabled)} detectors, alpha {settings.significance}/{len(enabled)}, "
        f"persistence {settings.persistence.k} of {settings.persistence.n}, {windows} clean windows of {n}: "
        f"{raw} failing tests, {alerts} alerts = {alerts * 1000 / windows:.1f} per 1,000 windows = "
        f"{alerts * 1440 / windows:.2f} per day of one-minute windows"
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="few windows, one size: a smoke run")
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--detectors", nargs="+", help="only these detector ids (default: all registered)")
    parser.add_argument("--splits", type=int, default=20, help="reference/live splits (full run)")
    args = parser.parse_args()
    started = time.time()
    if args.quick:
        run(args.datasets, sizes=[200], clean=20, shifted=10, run_length=5, splits=2, only=args.detectors)
    else:
        run(
            args.datasets,
            sizes=[50, 200, 1000],
            clean=200,
            shifted=100,
            run_length=5,
            splits=args.splits,
            only=args.detectors,
        )
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
