"""How the costs grow: window size, number of features, number of models; a table each and one plot.

    .venv/bin/python -m bench.perf_scaling            # about 8 minutes on an idle 2-core machine
    .venv/bin/python -m bench.perf_scaling --quick    # small sizes, VAEs of 20 epochs, 5 models

* Window size: one pass of the 12 default detectors over one fresh ``Batch`` (as the pipeline runs them),
  digits with all 64 features, windows of 500 to 20,000 events (``bench.perf_detectors``'s data and timing:
  median of ``--repeats`` passes after a warm-up), with each detector's own time alongside.
* Features: the same pass on a 10,000-event window keeping the first 8, 16, 32 and 64 pixels, every detector
  refitted on the reference cut the same way.
* Models: resident memory of one process as models are added (``bench.perf_memory`` in a fresh
  subprocess, its checkpoints read back from ``--json``), and after its traffic from 10,000 clients.

Writes the tables to standard output and the plot to ``docs/img/scaling.png`` (``--plot`` to change it).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the plot goes to a file
import matplotlib.pyplot as plt

from bench.common import benchmark_parser, load_average, machine
from bench.perf_detectors import Timing, fitted_detectors, reference, time_window, window
from monitor.intake.reference import to_batch

SIZES = (500, 1000, 2000, 5000, 10_000, 20_000)
FEATURES = (8, 16, 32, 64)
# Drawn apart in the plot: the detectors that take the largest share of a 10,000-event window.
HIGHLIGHTED = ("label_consistency", "latent_drift", "probing", "extraction", "evasion")


def by_window_size(sizes: tuple[int, ...], repeats: int, vae_epochs: int | None) -> list[Timing]:
    detectors, _ = fitted_detectors(to_batch(reference()), vae_epochs)
    return [time_window(detectors, window(size), repeats) for size in sizes]


def by_features(counts: tuple[int, ...], size: int, repeats: int, vae_epochs: int | None) -> list[Timing]:
    timings = []
    for n_features in counts:
        detectors, _ = fitted_detectors(to_batch(reference(n_features)), vae_epochs)
        timings.append(time_window(detectors, window(size, n_features), repeats))
    return timings


def by_models(quick: bool) -> tuple[list[tuple[int, float]], float]:
    """(models, RSS MiB) when that many models are ready, and the RSS after the traffic."""
    with tempfile.TemporaryDirectory(prefix="perf-scaling-") as tmp:
        out = Path(tmp) / "memory.json"
        command = [sys.executable, "-m", "bench.perf_memory", "--json", str(out)]
        subprocess.run([*command, *(["--quick"] if quick else [])], check=True, stdout=subprocess.DEVNULL)
        checkpoints = json.loads(out.read_text())["checkpoints"]
    ready = []
    for point in checkpoints:
        found = re.match(r"(\d+) models ready", point["point"])
        if found:
            ready.append((int(found.group(1)), point["rss_mib"]))
    return ready, checkpoints[-1]["rss_mib"]


def plot(
    sizes: list[Timing], features: list[Timing], models: list[tuple[int, float]], traffic: float, path: Path
) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    x = [t.size for t in sizes]
    total = [t.pipeline_total for t in sizes]
    left.plot(x, total, "o-", color="black", linewidth=2, label="all 12 (one pass)")
    for detector_id in HIGHLIGHTED:
        left.plot(x, [t.seconds[detector_id] for t in sizes], ".--", label=detector_id)
    left.plot(x, [x_ / x[-1] * sizes[-1].pipeline_total for x_ in x], ":", color="grey", label="linear")
    left.axhline(2.0, color="red", linewidth=0.8)
    left.annotate("goal at 10,000 events: 2 s", (x[0], 2.05), color="red", fontsize=8)
    left.set(xscale="log", yscale="log", xlabel="events per window", ylabel="seconds per window")
    left.set_title("window size (64 features)")
    left.legend(fontsize=7)

    n = list(FEATURES[: len(features)])
    middle.plot(n, [t.pipeline_total for t in features], "o-", color="black", linewidth=2, label="all 12")
    for detector_id in ("vae_anomaly", "feature_drift", "latent_drift", "label_consistency"):
        middle.plot(n, [t.seconds[detector_id] for t in features], ".--", label=detector_id)
    middle.set(xlabel="features", ylabel="seconds per window", xticks=n)
    middle.set_title(f"features ({features[0].size:,}-event window)")
    middle.legend(fontsize=7)

    right.plot([m for m, _ in models], [r for _, r in models], "o-", color="black", label="models ready")
    right.plot([models[-1][0]], [traffic], "s", color="tab:orange", label="after traffic, 10,000 clients")
    right.axhline(1536, color="red", linewidth=0.8)
    right.annotate("goal: 1.5 GB", (models[0][0], 1550), color="red", fontsize=8)
    right.set(xlabel="models in one process", ylabel="resident MiB", ylim=(0, 1700))
    right.set_title("models (12 detectors each)")
    right.legend(fontsize=7, loc="lower right")

    figure.suptitle(f"Sentinel: how the costs grow ({machine()})", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=Path("docs/img/scaling.png"))
    parser.add_argument("--quick", action="store_true", help="small sizes, VAEs of 20 epochs, 5 models")
    args = parser.parse_args()
    sizes: tuple[int, ...] = SIZES
    features, feature_window, vae_epochs = FEATURES, 10_000, None
    if args.quick:
        sizes, feature_window, vae_epochs, args.repeats = (500, 1000, 2000), 1000, 20, 1
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    print(machine(), flush=True)
    size_timings = by_window_size(sizes, args.repeats, vae_epochs)
    feature_timings = by_features(features, feature_window, args.repeats, vae_epochs)
    models, traffic = by_models(args.quick)

    print("\n| events per window | one pass of all 12, s | " + " | ".join(HIGHLIGHTED) + " |")
    print("|---:|---:|" + "---:|" * len(HIGHLIGHTED))
    for t in size_timings:
        cells = " | ".join(f"{t.seconds[d]:.3f}" for d in HIGHLIGHTED)
        print(f"| {t.size:,} | {t.pipeline_total:.3f} | {cells} |")
    print(f"\n| features ({feature_window:,} events) | one pass of all 12, s | vae_anomaly | feature_drift |")
    print("|---:|---:|---:|---:|")
    for n_features, t in zip(features, feature_timings, strict=True):
        print(
            f"| {n_features} | {t.pipeline_total:.3f} | {t.seconds['vae_anomaly']:.3f} | "
            f"{t.seconds['feature_drift']:.3f} |"
        )
    print("\n| models ready | resident MiB |")
    print("|---:|---:|")
    for count, rss in models:
        print(f"| {count} | {rss:,.0f} |")
    print(f"| {models[-1][0]}, after the traffic | {traffic:,.0f} |")
    plot(size_timings, feature_timings, models, traffic, args.plot)
    print(f"\nplot: {args.plot}; total {time.time() - started:.0f} s; {load_average()}")


if __name__ == "__main__":
    main()
