"""Time per window of the drift detectors, next to alibi-detect's MMDDrift called directly on raw features.

    .venv/bin/python -m bench.perf_drift                       # the run recorded in bench/README.md
    .venv/bin/python -m bench.perf_drift --quick                # --sizes 1000 --repeats 3 --alibi-repeats 1
    .venv/bin/python -m bench.perf_drift --ablation            # adds alibi's MMDDrift on the latent codes

Data: load_digits (64 pixel features), split with a seed into a 1,000-event reference and 797 held-out
events; a window of ``size`` events is drawn from the held-out events with replacement (5,000 exceeds them;
the duplicates do not matter for timing). The reference and windows carry predictions of a logistic
regression and the true labels, so that detectors reading them (``output_drift``, ``label_drift``,
``performance``) can be timed too.

Each registered detector of :data:`ENTRIES` is fitted once on the reference; the time reported is the median
wall time of ``--repeats`` calls of ``evaluate`` on the same window (encoding the feature dicts included).
The baseline is ``alibi_detect.cd.MMDDrift(backend="pytorch")`` built on the raw 64-feature reference (its
reference kernel block is computed at construction, not timed) and called with ``predict`` on the raw window
as a numpy array, with as many permutations as ``latent_drift`` draws; median of ``--alibi-repeats`` calls.
"alibi / ours" is reported for the rows that run the same kind of test (MMD); the other detectors run other
tests and are listed for their absolute cost. ``--ablation`` times the per-window MMD step alone on the same
latent codes, with alibi's ``predict`` and with ``LatentDriftDetector.permutation_test``.

Adding a detector to the table is one :class:`Entry` in :data:`ENTRIES`; ids that are not registered are
skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from bench.common import benchmark_parser, machine, median_seconds
from detectors.base import Batch, Detector
from detectors.drift.latent import LatentDriftDetector

ALPHA = 0.01
SEED = 20_240_620


@dataclass(frozen=True)
class Entry:
    """One row of the table: a registered detector with its parameters."""

    detector_id: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # defaults to the id
    mmd: bool = False  # the same kind of test as alibi's MMDDrift: the speed-up over it is reported

    @property
    def name(self) -> str:
        return self.label or self.detector_id


ENTRIES: tuple[Entry, ...] = (
    Entry("latent_drift", mmd=True),
    Entry("latent_drift", {"max_window": 5_000}, "latent_drift, max_window=5000 (no subsample)", mmd=True),
    Entry("feature_drift"),
    Entry("output_drift"),
    Entry("label_drift"),
    Entry("performance"),
)
"""The detectors timed, in table order (every one at ``alpha = ALPHA`` unless its params say otherwise)."""


@dataclass(frozen=True)
class Data:
    """The reference and the held-out pool, as arrays and as the function that builds Batches."""

    reference_x: np.ndarray
    reference: Batch
    pool_x: np.ndarray
    pool_y: np.ndarray
    to_batch: Callable[[np.ndarray, np.ndarray, str], Batch]


def load_data() -> Data:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target
    order = np.random.default_rng(SEED).permutation(len(y))
    reference_ids, pool_ids = order[:1000], order[1000:]
    # Only there to give the events predictions; its accuracy is irrelevant to timing.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[reference_ids], y[reference_ids])
    classes = [str(c) for c in model.classes_]
    names = [f"px{j}" for j in range(x.shape[1])]

    def to_batch(rows: np.ndarray, labels: np.ndarray, prefix: str) -> Batch:
        probabilities = model.predict_proba(rows)
        return Batch(
            event_ids=[f"{prefix}{i}" for i in range(len(rows))],
            features=[dict(zip(names, row, strict=True)) for row in rows.tolist()],
            predictions=[
                {"label": classes[int(np.argmax(p))], "scores": dict(zip(classes, p.tolist(), strict=True))}
                for p in probabilities
            ],
            labels=[str(int(v)) for v in labels],
        )

    return Data(
        reference_x=x[reference_ids],
        reference=to_batch(x[reference_ids], y[reference_ids], "r"),
        pool_x=x[pool_ids],
        pool_y=y[pool_ids],
        to_batch=to_batch,
    )


def time_detector(detector: Detector, window: Batch, repeats: int) -> float:
    """Median seconds of one ``evaluate`` of an already fitted detector on ``window``."""
    detector.evaluate(window)  # warm-up: first-call allocations, lazy imports
    return median_seconds(lambda: detector.evaluate(window), repeats)


def _own_step(detector: LatentDriftDetector, codes: np.ndarray) -> object:
    return detector.permutation_test(codes, torch.Generator().manual_seed(0))


@dataclass
class Row:
    name: str
    fit: float | None  # seconds, None where not timed
    seconds: dict[int, float] = field(default_factory=dict)  # window size -> median seconds per window
    mmd: bool = False


@dataclass
class Results:
    rows: list[Row]
    baseline: Row
    ablation: tuple[Row, Row] | None  # (alibi's step, latent_drift's step) on the same latent codes
    max_window: int | None


def run(sizes: Sequence[int], repeats: int, alibi_repeats: int, ablation: bool) -> Results:
    from alibi_detect.cd import MMDDrift

    from detectors.registry import DETECTORS, create_detector

    logging.getLogger("alibi_detect").setLevel(logging.ERROR)  # "No GPU detected", once per detector
    data = load_data()
    rng = np.random.default_rng(SEED + 1)
    draws = {size: rng.choice(len(data.pool_y), size, replace=True) for size in sizes}
    windows = {
        size: data.to_batch(data.pool_x[ids], data.pool_y[ids], f"w{size}-") for size, ids in draws.items()
    }

    rows: list[Row] = []
    latent: LatentDriftDetector | None = None
    for entry in ENTRIES:
        if entry.detector_id not in DETECTORS:
            print(f"{entry.name}: not registered, skipped")
            continue
        detector = create_detector(entry.detector_id, {"alpha": ALPHA, **entry.params})
        started = time.perf_counter()
        detector.fit(data.reference)
        row = Row(entry.name, time.perf_counter() - started, mmd=entry.mmd)
        for size in sizes:
            row.seconds[size] = time_detector(detector, windows[size], repeats)
            print(f"{entry.name}, {size} events: {row.seconds[size]:.4f} s", flush=True)
        rows.append(row)
        if latent is None and isinstance(detector, LatentDriftDetector) and not entry.params:
            latent = detector

    # As many permutations as latent_drift draws at this alpha (100 at 0.01).
    permutations = LatentDriftDetector(alpha=ALPHA).permutations
    started = time.perf_counter()
    direct = MMDDrift(data.reference_x, backend="pytorch", p_val=ALPHA, n_permutations=permutations)
    baseline = Row("alibi MMDDrift on the raw 64 features", time.perf_counter() - started)
    for size in sizes:
        x = data.pool_x[draws[size]]
        baseline.seconds[size] = median_seconds(partial(direct.predict, x), alibi_repeats)
        print(f"{baseline.name}, {size} events: {baseline.seconds[size]:.3f} s", flush=True)

    steps: tuple[Row, Row] | None = None
    if ablation and latent is not None:
        # The same test on the same codes as latent_drift (the first max_window of the window's), once with
        # alibi's per-window step and once with latent_drift's: what the per-window step itself costs, apart
        # from the dimension reduction and the encoding of the events.
        on_codes = MMDDrift(
            latent.reference_latent, backend="pytorch", p_val=ALPHA, n_permutations=permutations
        )
        alibi_step = Row("alibi MMDDrift.predict on latent_drift's codes", None)
        own_step = Row("latent_drift.permutation_test on the same codes", None)
        for size in sizes:
            codes = latent.encoder.encode_latent(windows[size])[: latent.max_window]
            alibi_step.seconds[size] = median_seconds(partial(on_codes.predict, codes), alibi_repeats)
            own_step.seconds[size] = median_seconds(partial(_own_step, latent, codes), repeats)
            print(
                f"ablation, {size} events: alibi {alibi_step.seconds[size]:.3f} s, "
                f"own {own_step.seconds[size]:.4f} s",
                flush=True,
            )
        steps = (alibi_step, own_step)
    return Results(rows, baseline, steps, None if latent is None else latent.max_window)


def _seconds(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.2f}"


def table(results: Results, sizes: Sequence[int]) -> str:
    """The results as Markdown tables: detectors (with the speed-up over alibi where it is the same test),
    then the ablation if it was run."""
    baseline = results.baseline
    columns = " | ".join(f"{size:,} events: s / window | alibi / ours" for size in sizes)
    lines = [f"| detector | fit s | {columns} |", "|" + "---|" * (2 + 2 * len(sizes))]
    for row in [*results.rows, baseline]:
        cells = [row.name, "" if row.fit is None else f"{row.fit:.2f}"]
        for size in sizes:
            cells.append(_seconds(row.seconds[size]))
            if row is baseline:
                cells.append("1")
            elif row.mmd:
                cells.append(f"{baseline.seconds[size] / row.seconds[size]:,.0f}")
            else:
                cells.append("(other test)")
        lines.append("| " + " | ".join(cells) + " |")
    if results.ablation is not None:
        alibi_step, own_step = results.ablation
        lines += [
            "",
            f"Ablation: the per-window MMD step alone, on the same latent codes (reference "
            f"{results.max_window} codes; a window's codes capped at max_window={results.max_window}).",
            "",
            f"| step | {' | '.join(f'{size:,} events: s' for size in sizes)} |",
            "|" + "---|" * (1 + len(sizes)),
        ]
        for row in (alibi_step, own_step):
            lines.append(f"| {row.name} | " + " | ".join(_seconds(row.seconds[s]) for s in sizes) + " |")
        ratios = ", ".join(f"{alibi_step.seconds[s] / own_step.seconds[s]:,.0f}x at {s:,}" for s in sizes)
        lines.append(f"\nalibi / latent_drift on the same codes: {ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="window sizes (events)")
    parser.add_argument("--repeats", type=int, default=7, help="timed evaluations per detector and size")
    parser.add_argument("--alibi-repeats", type=int, default=3, help="timed predict calls of alibi per size")
    parser.add_argument("--ablation", action="store_true", help="also time alibi on latent_drift's codes")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 events, 3 repeats, 1 alibi call: a smoke run"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.alibi_repeats = [1000], 3, 1
    started = time.time()
    print(machine(), flush=True)
    results = run(args.sizes, args.repeats, args.alibi_repeats, args.ablation)
    print()
    print(table(results, args.sizes))
    print(f"\nalpha = {ALPHA}; total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
