"""Intake throughput: the daemon's Kafka intake against a bare kafka-python consumer loop on the same topic.

    .venv/bin/python -m bench.perf_ingest            # 200,000 events, 2 runs of each side (about 3 minutes)
    .venv/bin/python -m bench.perf_ingest --quick    # 20,000 events, 1 run of each side
    .venv/bin/python -m bench.perf_ingest --profile  # adds a cProfile of Pipeline.ingest, without Kafka

Set-up: the embedded broker (Tansu) with one topic of 4 partitions, pre-filled with ``--events`` digits
prediction events (``monitor.demo.data.live_events``: 64 features, 10 class scores, a label, a client id;
about 1.2 kB of JSON each) of 4 models, each model keyed to its own partition as a producer keyed by model
id would place them. One message in 1,000 is malformed (it goes to the dead-letter table, the only
database write during the measurement). Event times span 4 one-minute windows per model.

Measured, alternately and ``--repeats`` times each, on fresh consumer groups reading from the beginning:

* baseline: a bare ``KafkaConsumer`` with exactly the daemon's options (``consumer_options``: group,
  session, heartbeat and max-poll settings, fetch sizes), ``poll(timeout_ms=500)`` in a loop and
  ``json.loads`` of every value;
* ours: ``KafkaIntake`` (the daemon's consumer thread) feeding a ``Pipeline`` on a SQLite file: parse,
  validate against the reference schema, window, dead-letter, commit offsets after each poll. No window
  closes during the measurement (the scheduler that closes them is not running).

Throughput is messages over the time from the first message read to the last one (the group join before the
first message is the same for both sides and is reported apart). ``--profile`` runs ``Pipeline.ingest`` on
the same messages in memory under cProfile and prints the top functions: the daemon's own cost per message,
without the network.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import logging
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import benchmark_parser, load_average, machine
from monitor.broker import EmbeddedBroker, create_topic
from monitor.config import AppConfig, load_config
from monitor.demo.data import live_events, reference_events
from monitor.intake.kafka_consumer import KafkaIntake, consumer_options
from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import Store, make_engine, migrate

TOPIC = "perf-ingest"
PARTITIONS = 4
MODELS = tuple(f"digits-{i}" for i in range(PARTITIONS))  # model i is keyed to partition i
BASE_EVENTS = 2_000  # distinct digits rows reused with fresh ids and times
MALFORMED_EVERY = 1_000
WINDOW_SECONDS = 60.0
SPAN_WINDOWS = 4


def messages(n: int, start: float) -> Iterator[tuple[int, bytes]]:
    """(partition, value) of the ``n`` messages of the topic, in production order."""
    base = live_events("template", BASE_EVENTS, start=0.0, spacing=1.0, id_prefix="", seed=7)
    spacing = SPAN_WINDOWS * WINDOW_SECONDS / max(1, n // PARTITIONS)
    for i in range(n):
        partition = i % PARTITIONS
        if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            yield partition, b'{"model": "' + MODELS[partition].encode() + b'", "features": {"px0": "}'
            continue
        event = dict(base[i % BASE_EVENTS])
        event["model"] = MODELS[partition]
        event["event_id"] = f"e{i}"
        event["timestamp"] = start + (i // PARTITIONS) * spacing
        yield partition, json.dumps(event, separators=(",", ":")).encode()


def fill_topic(bootstrap_servers: str, n: int, start: float) -> float:
    """Produce the messages; return the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","), linger_ms=20, batch_size=512 * 1024, acks=1
    )
    started = time.perf_counter()
    for partition, value in messages(n, start):
        producer.send(TOPIC, value=value, key=MODELS[partition].encode(), partition=partition)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def make_config(bootstrap_servers: str, workdir: Path, group_id: str) -> AppConfig:
    reference = workdir / "reference.jsonl"
    if not reference.exists():
        # Every model shares the digits reference; reference_events stamps the model id, rewritten per model.
        lines = [json.dumps(e) for e in reference_events("template")]
        reference.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for model in MODELS:
            text = reference.read_text(encoding="utf-8").replace('"template', f'"{model}')
            (workdir / f"reference-{model}.jsonl").write_text(text, encoding="utf-8")
    environ = {
        "SENTINEL_DATABASE_URL": f"sqlite:///{workdir / f'{group_id}.db'}",
        "SENTINEL_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
        "SENTINEL_KAFKA__TOPIC": TOPIC,
        "SENTINEL_KAFKA__GROUP_ID": group_id,
        "SENTINEL_DEFAULTS__WINDOW": str(WINDOW_SECONDS),
    }
    for model in MODELS:
        environ[f"SENTINEL_MODELS__{model}__REFERENCE__SOURCE"] = "file"
        environ[f"SENTINEL_MODELS__{model}__REFERENCE__PATH"] = str(workdir / f"reference-{model}.jsonl")
    return load_config(environ=environ)


@dataclass(frozen=True)
class Run:
    """One pass over the topic."""

    messages: int
    join_seconds: float  # from start to the first message
    read_seconds: float  # from the first message to the last

    @property
    def per_second(self) -> float:
        return self.messages / self.read_seconds


def run_bare(config: AppConfig, n: int) -> Run:
    """A bare kafka-python loop with the daemon's consumer options: poll and json.loads every value."""
    from kafka import KafkaConsumer

    started = time.perf_counter()
    consumer = KafkaConsumer(**consumer_options(config.kafka))
    consumer.subscribe([config.kafka.topic])
    seen = 0
    first = 0.0
    try:
        while seen < n:
            for records in consumer.poll(timeout_ms=500).values():
                if not seen:
                    first = time.perf_counter()
                for record in records:
                    with contextlib.suppress(ValueError):  # the malformed ones
                        json.loads(record.value)
                seen += len(records)
        last = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    return Run(seen, first - started, last - first)


def run_intake(config: AppConfig, n: int) -> Run:
    """The daemon's consumer thread and pipeline; the main thread only watches the message counter."""
    store = Store(make_engine(config.database_url))
    migrate(store.engine)
    pipeline = Pipeline(config, store)
    pipeline.prepare()  # reads the reference files: model set-up is not part of the throughput
    intake = KafkaIntake(config.kafka, pipeline)
    started = time.perf_counter()
    intake.start()
    first = 0.0
    try:
        while pipeline.counters["consumed"] < n:
            if not intake.is_alive():
                raise RuntimeError("the intake thread ended early") from intake.error
            if not first and pipeline.counters["consumed"]:
                first = time.perf_counter()
            time.sleep(0.005)
        last = time.perf_counter()
    finally:
        intake.stop()
        intake.join()
        store.engine.dispose()
    accepted, rejected = pipeline.counters["accepted"], pipeline.counters["rejected"]
    if accepted + rejected != n or rejected != n // MALFORMED_EVERY:
        raise RuntimeError(f"intake took {accepted} and rejected {rejected} of {n} messages")
    return Run(n, first - started, last - first)


def profile_ingest(config: AppConfig, workdir: Path, n: int, top: int) -> str:
    """cProfile of Pipeline.ingest on the same messages, in memory (no Kafka)."""
    store = Store(make_engine(f"sqlite:///{workdir / 'profile.db'}"))
    migrate(store.engine)
    pipeline = Pipeline(config, store)
    pipeline.prepare()
    offsets = [0] * PARTITIONS
    raw = []
    for partition, value in messages(n, time.time() - 600):
        raw.append(
            RawMessage(value, Position(TOPIC, partition, offsets[partition]), MODELS[partition].encode())
        )
        offsets[partition] += 1
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for message in raw:
        pipeline.ingest(message)
    profiler.disable()
    elapsed = time.perf_counter() - started
    plain = time.perf_counter()
    again = Pipeline(config, store)
    again.prepare()
    for message in raw:
        again.ingest(message)
    plain = time.perf_counter() - plain
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    store.engine.dispose()
    return (
        f"Pipeline.ingest in memory: {n / plain:,.0f} messages/s without the profiler "
        f"({n / elapsed:,.0f}/s under it)\n" + out.getvalue()
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="messages on the topic")
    parser.add_argument("--repeats", type=int, default=2, help="passes of each side, alternating")
    parser.add_argument("--quick", action="store_true", help="20,000 events, one pass each: a smoke run")
    parser.add_argument("--profile", action="store_true", help="also profile Pipeline.ingest without Kafka")
    parser.add_argument("--bootstrap-servers", help="an existing broker instead of the embedded one")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeats = 20_000, 1
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    print(machine(), flush=True)
    n = args.events
    broker = None
    with tempfile.TemporaryDirectory(prefix="perf-ingest-") as tmp:
        workdir = Path(tmp)
        try:
            if args.bootstrap_servers:
                servers = args.bootstrap_servers
            else:
                broker = EmbeddedBroker().start()
                servers = broker.bootstrap_servers
            create_topic(servers, TOPIC, PARTITIONS)
            produced = fill_topic(servers, n, time.time() - SPAN_WINDOWS * WINDOW_SECONDS - 60)
            print(f"topic filled: {n:,} messages in {produced:.1f} s ({n / produced:,.0f}/s)", flush=True)
            bare: list[Run] = []
            ours: list[Run] = []
            for repeat in range(args.repeats):
                for side, runs, runner in (("bare", bare, run_bare), ("intake", ours, run_intake)):
                    config = make_config(servers, workdir, f"perf-{side}-{uuid.uuid4().hex[:8]}")
                    result = runner(config, n)
                    runs.append(result)
                    print(
                        f"pass {repeat + 1}, {side}: {result.per_second:,.0f} messages/s "
                        f"({result.read_seconds:.2f} s reading, {result.join_seconds:.2f} s to the first "
                        f"message); {load_average()}",
                        flush=True,
                    )
            bare_rate = statistics.median(r.per_second for r in bare)
            our_rate = statistics.median(r.per_second for r in ours)
            print()
            print("| consumer | messages/s (median) | ratio to bare | passes |")
            print("|---|---:|---:|---:|")
            print(f"| bare kafka-python loop + json.loads | {bare_rate:,.0f} | 1.00 | {len(bare)} |")
            print(f"| KafkaIntake + Pipeline | {our_rate:,.0f} | {our_rate / bare_rate:.2f} | {len(ours)} |")
            print(f"\n{n:,} messages, {PARTITIONS} partitions; {load_average()}")
            if args.profile:
                config = make_config(servers, workdir, "perf-profile")
                print()
                print(profile_ingest(config, workdir, min(n, 50_000), 25))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    threading.current_thread().name = "perf-ingest"
    main()
