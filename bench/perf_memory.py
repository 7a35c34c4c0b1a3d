"""Resident memory of one daemon process with 50 models, traffic from 10,000 clients and windows closed.

    .venv/bin/python -m bench.perf_memory            # 50 models, 3 closed windows each (about 5 minutes)
    .venv/bin/python -m bench.perf_memory --quick    # 5 models, 2 windows of 200 events
    .venv/bin/python -m bench.perf_memory --fit-all  # fit every model instead of restoring 47 of them

One process, no Kafka: a :class:`monitor.pipeline.Pipeline` on a SQLite file, fed message by message through
``Pipeline.ingest`` (the consumer thread's call) and closed with ``close_due`` (the scheduler's call). The
``--models`` models share the digits reference (``monitor.demo.data``, 800 events, 64 features; one
reference file each) and run the 12 default detectors with the monitor's defaults, except the VAE-based
ones train for at most ``--vae-epochs`` epochs (20 here; the default stops early, usually before 100) to
keep the fit short; the size of what is kept (networks, calibration scores) does not depend on the epochs.

Fitting: the first ``--fitted`` models are fitted for real (fit time per model reported). The others get
those fitted states copied into the store under their own reference, and the pipeline restores them, as a
daemon restart does; a restored detector holds the same arrays and networks as a fitted one, so memory is
the same, and the run takes minutes instead of 50 full fits. ``--fit-all`` fits them all.

Traffic: ``--windows`` windows of ``--events`` digits events per model (event time only, ``live=False``),
client ids drawn uniformly from ``--clients`` (10,000) ids, so the per-client state of ``extraction`` and
``probing`` grows with them; every window but the last is closed (evaluated and stored).

Memory is the process's resident set from ``/proc/self/status`` (VmRSS, and VmHWM for the peak), read
after imports, after each group of models is ready, after the traffic and at the end.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import benchmark_parser, load_average, machine, reference_files
from monitor.config import AppConfig
from monitor.demo.data import live_events
from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import Store, make_engine, migrate

WINDOW_SECONDS = 60.0
T0 = 1_700_200_020.0  # a window boundary (a multiple of 60)


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) in MiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _unit = line.split()
                values[name] = int(amount) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def config(workdir: Path, models: list[str], vae_epochs: int) -> AppConfig:
    references = reference_files(workdir, models)
    network = {"max_epochs": vae_epochs}
    settings = {}
    for model in models:
        settings[model] = {
            "window": WINDOW_SECONDS,
            "reference": {"source": "file", "path": str(references[model])},
            # backdoor and evasion take vae_anomaly's network settings; latent_drift has its own.
            "detectors": {"vae_anomaly": network, "latent_drift": {"vae": network}},
        }
    return AppConfig.model_validate(
        {"database_url": f"sqlite:///{workdir / 'memory.db'}", "models": settings, "api": {"enabled": False}}
    )


def copy_fitted_state(pipeline: Pipeline, source: str, targets: list[str]) -> None:
    """Store ``source``'s fitted detector states under each target model's own reference."""
    store = pipeline.store
    fitted = pipeline._models[source]
    assert fitted.reference.stored_id is not None
    for target in targets:
        runtime = pipeline._models[target]
        assert runtime.reference.stored_id is not None
        for detector_id in runtime.settings.enabled_detectors:
            params_hash = runtime.settings.params_hash(detector_id)
            state = store.load_detector_state(source, detector_id, fitted.reference.stored_id, params_hash)
            if state is not None:
                store.save_detector_state(
                    target, detector_id, runtime.reference.stored_id, params_hash, state
                )


def traffic(
    models: list[str], windows: int, events: int, clients: int, seed: int = 3
) -> Iterator[RawMessage]:
    """The messages, window by window, models interleaved; one partition per model. Generated as they are
    fed, so that the measured memory is the pipeline's, not a list of pending messages'."""
    rng = random.Random(seed)
    base = live_events("template", 2_000, start=0.0, spacing=1.0, id_prefix="", seed=seed)
    offsets = dict.fromkeys(models, 0)
    for w in range(windows):
        spacing = WINDOW_SECONDS / events
        for i in range(events):
            for partition, model in enumerate(models):
                event = dict(base[rng.randrange(len(base))])
                event.update(
                    model=model,
                    event_id=f"{model}-w{w}-{i}",
                    timestamp=T0 + w * WINDOW_SECONDS + i * spacing,
                    client_id=f"client-{rng.randrange(clients):05d}",
                )
                value = json.dumps(event, separators=(",", ":")).encode()
                yield RawMessage(value, Position("predictions", partition, offsets[model]))
                offsets[model] += 1


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--fitted", type=int, default=3, help="models fitted for real; the rest restored")
    parser.add_argument("--fit-all", action="store_true", help="fit every model for real")
    parser.add_argument("--vae-epochs", type=int, default=20)
    parser.add_argument("--windows", type=int, default=4, help="windows per model; all but the last closed")
    parser.add_argument("--events", type=int, default=500, help="events per model and window")
    parser.add_argument("--clients", type=int, default=10_000, help="distinct client ids")
    parser.add_argument("--quick", action="store_true", help="5 models, 1 fitted, 2 windows of 200 events")
    parser.add_argument("--json", type=Path, default=None, help="also write the checkpoints to this file")
    args = parser.parse_args()
    if args.quick:
        args.models, args.fitted, args.windows, args.events = 5, 1, 2, 200
    if args.fit_all:
        args.fitted = args.models
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    print(machine(), flush=True)
    models = [f"model-{i:02d}" for i in range(args.models)]
    checkpoints: list[tuple[str, float, float]] = [("after imports", *memory_mb())]
    with tempfile.TemporaryDirectory(prefix="perf-memory-") as tmp:
        cfg = config(Path(tmp), models, args.vae_epochs)
        store = Store(make_engine(cfg.database_url))
        migrate(store.engine)
        pipeline = Pipeline(cfg, store, live=False)

        fitted = models[: args.fitted]
        pipeline.prepare(fitted)
        fit_started = time.perf_counter()
        pipeline.fit_pending()
        fit_seconds = (time.perf_counter() - fit_started) / len(fitted)
        print(f"fitted {len(fitted)} models: {fit_seconds:.1f} s per model (12 detectors)", flush=True)
        checkpoints.append((f"{len(fitted)} models ready (fitted)", *memory_mb()))
        restore_seconds = 0.0
        groups = [g for g in (10, 25, args.models) if len(fitted) < g <= args.models]
        done = len(fitted)
        for group in dict.fromkeys(groups):
            batch = models[done:group]
            pipeline.prepare(batch)
            copy_fitted_state(pipeline, fitted[0], batch)
            restore_started = time.perf_counter()
            pipeline.fit_pending()
            restore_seconds += time.perf_counter() - restore_started
            done = group
            gc.collect()
            checkpoints.append((f"{group} models ready", *memory_mb()))
            print(f"{group} models ready; {load_average()}", flush=True)
        assert pipeline.ready, pipeline.status()

        messages = traffic(models, args.windows, args.events, args.clients)
        ingest_started = time.perf_counter()
        closed = 0
        per_window = args.events * len(models)
        close_seconds = 0.0
        for index, message in enumerate(messages):
            pipeline.ingest(message)
            if (index + 1) % per_window == 0:
                close_started = time.perf_counter()
                closed += len(pipeline.close_due())
                close_seconds += time.perf_counter() - close_started
                print(f"window {(index + 1) // per_window}: {closed} windows closed so far", flush=True)
        elapsed = time.perf_counter() - ingest_started
        counters = pipeline.counters
        gc.collect()
        checkpoints.append((f"after the traffic: {closed} windows closed, {args.models} open", *memory_mb()))
        store.engine.dispose()

    print()
    print("| point | RSS MiB | peak RSS MiB |")
    print("|---|---:|---:|")
    for name, rss, peak in checkpoints:
        print(f"| {name} | {rss:,.0f} | {peak:,.0f} |")
    rss, peak = checkpoints[-1][1], max(p for _, _, p in checkpoints)
    if args.json is not None:
        points = [{"point": name, "rss_mib": rss_, "peak_mib": peak_} for name, rss_, peak_ in checkpoints]
        args.json.write_text(json.dumps({"models": args.models, "checkpoints": points}, indent=1))
    print()
    print(
        f"{args.models} models x 12 detectors, {args.clients:,} client ids, {counters['accepted']:,} events "
        f"({counters['rejected']} rejected), {closed} windows closed of {args.events} events each"
    )
    restored = args.models - len(fitted)
    print(
        f"fit: {fit_seconds:.1f} s per model for real (VAEs capped at {args.vae_epochs} epochs); restore "
        f"from stored state: {restore_seconds / max(1, restored):.2f} s per model ({restored} models)"
    )
    print(
        f"ingest + close: {elapsed:.0f} s ({close_seconds:.0f} s of it closing: "
        f"{close_seconds / max(1, closed):.2f} s per window)"
    )
    print(f"final RSS {rss:,.0f} MiB, peak {peak:,.0f} MiB (goal: under 1,536 MiB); {load_average()}")
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
