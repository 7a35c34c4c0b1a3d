"""One window evaluation of the 12 default detectors, per detector and in total, and the VAE's scoring rate.

    .venv/bin/python -m bench.perf_detectors           # windows of 1,000 and 10,000 events (about 4 minutes)
    .venv/bin/python -m bench.perf_detectors --quick   # 1,000 events only, one repeat, VAEs of 20 epochs

Data: scikit-learn's digits through ``monitor.demo.data`` (a logistic regression's predictions with class
scores, true labels, 64 pixel features). The reference is the 800-event reference part; a window of ``size``
events is drawn with replacement from the 497 live events, spread over 20 client ids, with a ``region``
group (4 values) on every event. Events go through the intake's own parser, and the window through the
pipeline's ``to_batch``, so that detectors see exactly what the daemon hands them.

Detectors: :data:`monitor.config.DEFAULT_DETECTORS` with the monitor's default parameters
(``ModelSettings.detector_params``: alpha = 0.01 split over the 12 detectors), fitted once on the reference
(the fit time is reported). The time per detector is the median of ``--repeats`` ``evaluate`` calls on the
same window after one warm-up call; "total" is their sum plus the window's ``to_batch``.

Baselines (alibi-detect called directly, on the raw 64-feature numpy arrays, same alpha):

* ``KSDrift`` for ``feature_drift`` (both run a per-feature Kolmogorov-Smirnov test with a Bonferroni
  correction; ``feature_drift`` also tests every feature's missing share);
* ``MMDDrift`` (pytorch backend) for ``latent_drift``, with the same number of permutations. alibi's
  permutation loop makes it slow: at the monitor's default alpha (0.01/12, 1,199 permutations) one
  1,000-event call takes minutes, so this pair runs at ``alpha = 0.01`` (100 permutations, as
  ``bench.perf_drift`` does), and only at 1,000 events (at 10,000, alibi's 10,800^2 kernel matrix needs
  0.9 GB per permuted copy).

``--features 16 32 64`` adds the scaling with the number of features: the first k pixels of digits, every
detector refitted, one window of the largest size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from bench.common import benchmark_parser, load_average, machine, median_seconds
from detectors.anomaly import VAEAnomalyDetector
from detectors.base import Batch, Detector
from detectors.drift.latent import LatentDriftDetector
from detectors.registry import create_detector
from monitor.config import AppConfig
from monitor.demo.data import live_events, reference_events
from monitor.intake.parsing import PredictionEvent, parse_document
from monitor.intake.reference import to_batch

MODEL = "digits"
CLIENTS = tuple(f"client-{i:02d}" for i in range(20))
REGIONS = ("north", "south", "east", "west")
SEED = 8


def _with_groups(events: list[dict[str, Any]], n_features: int) -> list[PredictionEvent]:
    parsed = []
    for i, event in enumerate(events):
        event["groups"] = {"region": REGIONS[i % len(REGIONS)]}
        if n_features < 64:
            event["features"] = dict(list(event["features"].items())[:n_features])
        parsed.append(parse_document(event))
    return parsed  # type: ignore[return-value]


def reference(n_features: int = 64) -> list[PredictionEvent]:
    return _with_groups(reference_events(MODEL), n_features)


def window(size: int, n_features: int = 64) -> list[PredictionEvent]:
    raw = live_events(
        MODEL, size, start=1_700_100_000.0, spacing=0.01, id_prefix="w", seed=SEED, clients=CLIENTS
    )
    return _with_groups(raw, n_features)


def fitted_detectors(
    reference_batch: Batch, vae_epochs: int | None
) -> tuple[dict[str, Detector], dict[str, float]]:
    """The default detectors with the monitor's default parameters, fitted; and their fit seconds."""
    settings = AppConfig().defaults
    if vae_epochs is not None:
        settings = settings.model_copy(
            update={"detectors": {**settings.detectors, "vae_anomaly": {"max_epochs": vae_epochs}}}
        )
    detectors: dict[str, Detector] = {}
    fit_seconds: dict[str, float] = {}
    for detector_id in settings.enabled_detectors:
        detector = create_detector(detector_id, settings.detector_params(detector_id))
        started = time.perf_counter()
        detector.fit(reference_batch)
        fit_seconds[detector_id] = time.perf_counter() - started
        detectors[detector_id] = detector
    return detectors, fit_seconds


@dataclass
class Timing:
    """Seconds per detector for one window size, the window's conversion to a Batch, and one whole pass."""

    size: int
    to_batch: float
    seconds: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    pass_seconds: float = 0.0  # all detectors in turn on one fresh Batch, as the pipeline runs them

    @property
    def total(self) -> float:
        """The sum of the detectors timed one by one, each encoding the window for itself."""
        return self.to_batch + sum(self.seconds.values())

    @property
    def pipeline_total(self) -> float:
        return self.to_batch + self.pass_seconds


def _fresh_batches(events: list[PredictionEvent], count: int) -> Iterator[Batch]:
    # A Batch keeps its encoded feature matrix (Batch.encoded) once a detector has asked for it, so every
    # timed call gets a new one: otherwise the second call of a detector would skip its encoding.
    batches = [to_batch(events) for _ in range(count)]
    return iter(batches)


def _evaluate_next(detector: Detector, batches: Iterator[Batch]) -> None:
    detector.evaluate(next(batches))


def time_window(detectors: dict[str, Detector], events: list[PredictionEvent], repeats: int) -> Timing:
    batch_seconds = median_seconds(lambda: to_batch(events), repeats)
    timing = Timing(len(events), batch_seconds)
    for detector_id, detector in detectors.items():
        # Stateful detectors (extraction, probing) keep per-client history: every call after the first sees
        # the same clients again, which is the steady state of a running daemon.
        batches = _fresh_batches(events, repeats + 1)
        result = detector.evaluate(next(batches))
        timing.statuses[detector_id] = result.status.value
        evaluate_fresh = partial(_evaluate_next, detector, batches)
        timing.seconds[detector_id] = median_seconds(evaluate_fresh, repeats)
        print(f"  {detector_id}, {len(events):,} events: {timing.seconds[detector_id]:.4f} s", flush=True)
    # The pipeline hands one Batch to every detector in turn, so detectors with equal feature schemas share
    # one encoding of the window.
    passes = _fresh_batches(events, repeats)

    def one_pass() -> None:
        batch = next(passes)
        for detector in detectors.values():
            detector.evaluate(batch)

    timing.pass_seconds = median_seconds(one_pass, repeats)
    print(f"  all detectors on one Batch, {len(events):,} events: {timing.pass_seconds:.4f} s", flush=True)
    return timing


@dataclass
class Baseline:
    name: str
    ours: str  # the detector it is compared with
    seconds: dict[int, float]
    our_seconds: dict[int, float]


def baselines(
    reference_events_: list[PredictionEvent], sizes: Sequence[int], repeats: int, alibi_repeats: int
) -> list[Baseline]:
    from alibi_detect.cd import KSDrift, MMDDrift

    logging.getLogger("alibi_detect").setLevel(logging.ERROR)
    reference_batch = to_batch(reference_events_)
    x_ref = np.array([list(e.features.values()) for e in reference_events_], dtype=np.float32)
    settings = AppConfig().defaults
    alpha = settings.detector_params("feature_drift")["alpha"]
    feature = create_detector("feature_drift", {"alpha": alpha}).fit(reference_batch)
    ks = KSDrift(x_ref, p_val=alpha)
    ks_row = Baseline("alibi KSDrift.predict (numpy input)", "feature_drift", {}, {})
    latent = LatentDriftDetector(alpha=0.01).fit(reference_batch)
    permutations = latent.permutations
    mmd = MMDDrift(x_ref, backend="pytorch", p_val=0.01, n_permutations=permutations)
    mmd_row = Baseline(
        f"alibi MMDDrift.predict, {permutations} permutations (numpy input)",
        f"latent_drift at alpha 0.01 ({permutations} permutations)",
        {},
        {},
    )
    for size in sizes:
        events = window(size)
        batch = to_batch(events)
        x = np.array([list(e.features.values()) for e in events], dtype=np.float32)
        ks_row.seconds[size] = median_seconds(partial(ks.predict, x), repeats)
        ks_row.our_seconds[size] = median_seconds(partial(feature.evaluate, batch), repeats)
        print(f"  KSDrift {size:,}: {ks_row.seconds[size]:.4f} s, ours {ks_row.our_seconds[size]:.4f} s")
        if size <= 1000:
            mmd_row.seconds[size] = median_seconds(partial(mmd.predict, x), alibi_repeats)
            mmd_row.our_seconds[size] = median_seconds(partial(latent.evaluate, batch), repeats)
            print(
                f"  MMDDrift {size:,}: {mmd_row.seconds[size]:.3f} s, ours {mmd_row.our_seconds[size]:.4f} s"
            )
    return [ks_row, mmd_row]


def vae_rate(
    detectors: dict[str, Detector], events: list[PredictionEvent], repeats: int
) -> tuple[float, float]:
    """Events/s of ``VAEAnomalyDetector.score`` (dict encoding included) and of the encoding alone."""
    vae = detectors["vae_anomaly"]
    assert isinstance(vae, VAEAnomalyDetector)
    batches = _fresh_batches(events, repeats)  # a fresh Batch per call: score must encode every time
    seconds = median_seconds(lambda: vae.score(next(batches)), repeats)
    features = to_batch(events).features
    encode = median_seconds(partial(vae.schema.encode, features), repeats)
    return len(events) / seconds, len(events) / encode


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="window sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per detector and size")
    parser.add_argument("--alibi-repeats", type=int, default=1, help="timed MMDDrift calls")
    parser.add_argument(
        "--vae-epochs", type=int, default=None, help="cap the VAE's training (default: its own)"
    )
    parser.add_argument("--features", type=int, nargs="*", default=[], help="feature counts for the scaling")
    parser.add_argument("--quick", action="store_true", help="1,000 events, one repeat, 20 VAE epochs")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.vae_epochs = [1000], 1, 20
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    print(machine(), flush=True)
    ref = reference()
    detectors, fit_seconds = fitted_detectors(to_batch(ref), args.vae_epochs)
    print(
        f"fitted {len(detectors)} detectors in {sum(fit_seconds.values()):.1f} s; {load_average()}",
        flush=True,
    )
    timings = [time_window(detectors, window(size), args.repeats) for size in args.sizes]
    largest = window(max(args.sizes))
    scored, encoded = vae_rate(detectors, largest, args.repeats)
    rows = baselines(ref, args.sizes, args.repeats, args.alibi_repeats)

    print()
    head = " | ".join(f"{t.size:,} events: s" for t in timings)
    print(f"| detector | fit s | {head} | share of the {timings[-1].size:,}-event total |")
    print("|---|---:|" + "---:|" * len(timings) + "---:|")
    last = timings[-1]
    for detector_id in detectors:
        cells = " | ".join(f"{t.seconds[detector_id]:.4f}" for t in timings)
        share = last.seconds[detector_id] / last.total
        print(f"| {detector_id} | {fit_seconds[detector_id]:.2f} | {cells} | {share:.0%} |")
    cells = " | ".join(f"{t.to_batch:.4f}" for t in timings)
    print(f"| (window to Batch) | | {cells} | {last.to_batch / last.total:.0%} |")
    cells = " | ".join(f"{t.total:.2f}" for t in timings)
    fit_total = sum(fit_seconds.values())
    print(f"| sum of the above (each detector encodes the window) | {fit_total:.1f} | {cells} | 100% |")
    cells = " | ".join(f"**{t.pipeline_total:.2f}**" for t in timings)
    print(f"| **one pass of all detectors on one Batch (as the pipeline runs them)** | | {cells} | |")
    print()
    print(
        f"VAEAnomalyDetector.score: {scored:,.0f} events/s on {len(largest):,} events x 64 features "
        f"(feature-dict encoding alone: {encoded:,.0f} events/s)"
    )
    print()
    print("| baseline | compared with | window | alibi s | ours s | alibi / ours |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        for size, seconds in row.seconds.items():
            ours = row.our_seconds[size]
            print(
                f"| {row.name} | {row.ours} | {size:,} | {seconds:.4f} | {ours:.4f} | {seconds / ours:.1f} |"
            )

    if args.features:
        size = max(args.sizes)
        print(f"\nScaling with the number of features ({size:,}-event window, every detector refitted):")
        print(
            "| features | fit s (all) | evaluate s (all) | vae_anomaly s | latent_drift s | feature_drift s |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for n_features in args.features:
            subset, fits = fitted_detectors(to_batch(reference(n_features)), args.vae_epochs)
            timing = time_window(subset, window(size, n_features), 1)
            s = timing.seconds
            print(
                f"| {n_features} | {sum(fits.values()):.1f} | {timing.pipeline_total:.2f} | "
                f"{s['vae_anomaly']:.4f} | "
                f"{s['latent_drift']:.4f} | {s['feature_drift']:.4f} |",
                flush=True,
            )
    statuses = {d: s for d, s in timings[0].statuses.items() if s != "ok"}
    print(f"\nstatuses on the first window other than ok: {statuses or 'none'}")
    print(f"total {time.time() - started:.0f} s; {load_average()}")


if __name__ == "__main__":
    main()
