"""Hostile input at the intake: 100,000 generated messages through :meth:`Pipeline.ingest` on real SQLite.

A seeded generator (not hypothesis: at this volume a plain generator is ten times faster, and the seed makes a
failure reproducible by its message index) mixes random bytes, deep JSON nesting, huge strings and arrays,
hostile unicode (lone surrogates, NUL, right-to-left marks), numbers outside the float range, type confusion
in every field, and valid events with one field mutated. Whatever comes in: nothing escapes ``ingest``, every
message is accepted, dead-lettered with a reason, or counted as a duplicate, and memory stays bounded.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from monitor.config import AppConfig
from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import Store, make_engine, migrate

SEED = 20261128
N_MESSAGES = 100_000
FLUSH_EVERY = 5_000
WARMUP_MESSAGES = 3_600
NOW = 1_795_000_000.0  # the pipeline's clock: 2026-11-18
# Resident memory may grow by this much over the run: the accepted events' ids and window samples (tens of
# thousands, held because no scheduler closes windows here; +146 MB measured) plus SQLite page cache. A
# leak of 3 kB per message would exceed it.
MAX_RSS_GROWTH_MB = 300
MODELS = ("fraud", "churn", "m.v2_x-1")
FIELDS = ("type", "event_id", "model", "model_version", "timestamp", "client_id", "features", "prediction")
FIELDS_OPTIONAL = ("label", "embedding", "groups", "stream")

HOSTILE_TEXT = [
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u200e",
    "\ufeff",
    "\ud800",  # lone surrogate (json.dumps escapes it; the escape decodes back to a lone surrogate)
    "\udfff\ud800",
    "😀" * 50,
    "' OR 1=1 --",
    "%s%n%x",
    "\r\n\t",
    "",
]
HOSTILE_NUMBERS_JSON = ["1e400", "-1e400", "1e-400", "9" * 400, "-" + "9" * 5000, "NaN", "Infinity", "-0"]


def valid_event(rng: random.Random, serial: int) -> dict[str, Any]:
    return {
        "type": "prediction",
        "event_id": f"ev-{serial}",
        "model": rng.choice(MODELS),
        "model_version": "2026-11-01",
        "timestamp": NOW - rng.uniform(0, 3600),
        "client_id": f"client-{rng.randrange(20)}",
        "features": {
            "amount": rng.uniform(0, 100),
            "country": rng.choice(["DE", "FR"]),
            "age": rng.randrange(90),
        },
        "prediction": {"label": rng.choice(["fraud", "ok"]), "scores": {"fraud": 0.3, "ok": 0.7}},
        "label": None,
        "embedding": [rng.uniform(-1, 1) for _ in range(4)],
        "groups": {"region": "EU"},
        "stream": "inference",
    }


def confusing_value(rng: random.Random, depth: int = 0) -> Any:
    """A value of a random JSON type, including the awkward ones."""
    kind = rng.randrange(10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**64), 10**30, 1.5e308, -1e-320])
    if kind == 3:
        return rng.choice(HOSTILE_TEXT)
    # Huge values are rare (1 in 50 of their kind): each costs milliseconds to generate and encode.
    huge = rng.random() < 0.02
    if kind == 4:
        return "x" * (rng.choice([4097, 70_000]) if huge else rng.choice([0, 1, 4096]))
    if kind == 5 and depth < 3:
        return [confusing_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6 and depth < 3:
        return {
            rng.choice([*HOSTILE_TEXT, "k"]): confusing_value(rng, depth + 1) for _ in range(rng.randrange(4))
        }
    if kind == 7:
        return [0.5] * (70_000 if huge else rng.randrange(1, 5))
    if kind == 8:
        return {f"f{i}": i for i in range(10_001 if huge else rng.randrange(1, 5))}
    return rng.random()


def mutated_event(rng: random.Random, serial: int) -> bytes:
    event = valid_event(rng, serial)
    for _ in range(rng.randrange(1, 3)):
        name = rng.choice(FIELDS + FIELDS_OPTIONAL)
        action = rng.randrange(4)
        if action == 0:
            event.pop(name, None)
        elif action == 1 and isinstance(event.get(name), dict) and event[name]:
            inner = rng.choice(list(event[name]))
            event[name][inner] = confusing_value(rng)
        else:
            event[name] = confusing_value(rng)
    text = json.dumps(event)
    if rng.random() < 0.1:
        # A number no float holds, spliced in as a raw JSON literal.
        text = text.replace('"age": ', f'"age": {rng.choice(HOSTILE_NUMBERS_JSON)}, "_age": ', 1)
    return text.encode("utf-8", errors="surrogatepass")


def deep_nesting(rng: random.Random, serial: int) -> bytes:
    depth = rng.choice([100, 1_000, 1_000, 100_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = opener * depth + "1" + closer * depth
    return f'{{"model": "fraud", "event_id": "d{serial}", "features": {inner}}}'.encode()


def random_bytes(rng: random.Random, serial: int) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 64, 1024]))


def huge_message(rng: random.Random, serial: int) -> bytes:
    event = valid_event(rng, serial)
    event["features"]["blob"] = "x" * rng.choice([500_000, 1_100_000])  # around the 1 MiB message limit
    return json.dumps(event).encode()


def broken_utf8(rng: random.Random, serial: int) -> bytes:
    good = json.dumps(valid_event(rng, serial)).encode()
    cut = rng.randrange(len(good))
    return good[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + good[cut:]


def duplicate_of_recent(rng: random.Random, serial: int) -> bytes:
    return json.dumps(valid_event(rng, max(0, serial - rng.randrange(1, 50)))).encode()


def not_an_object(rng: random.Random, serial: int) -> bytes:
    return json.dumps(rng.choice([[], "event", 42, None, [valid_event(rng, serial)]])).encode()


# (generator, weight): mutated events dominate, because they get past JSON decoding into every field check.
GENERATORS: list[tuple[Callable[[random.Random, int], bytes], int]] = [
    (lambda rng, serial: json.dumps(valid_event(rng, serial)).encode(), 20),
    (mutated_event, 50),
    (duplicate_of_recent, 6),
    (random_bytes, 8),
    (broken_utf8, 6),
    (not_an_object, 5),
    (deep_nesting, 3),
    (huge_message, 1),
]


def messages(seed: int, n: int) -> Iterator[RawMessage | None]:
    rng = random.Random(seed)
    makers = [maker for maker, _ in GENERATORS]
    weights = [weight for _, weight in GENERATORS]
    for serial in range(n):
        if rng.random() < 0.002:
            yield None  # a tombstone: no value at all
            continue
        # A clean start: each model's reference (its first 1,000 events) fixes the feature schema that later
        # events are checked against, as in production.
        maker = makers[0] if serial < WARMUP_MESSAGES else rng.choices(makers, weights)[0]
        yield RawMessage(maker(rng, serial), Position("predictions", serial % 3, serial), key=b"k")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1_048_576


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    config = AppConfig(database_url=f"sqlite:///{tmp_path / 'fuzz.db'}")
    engine = make_engine(config.database_url)
    migrate(engine)
    yield Pipeline(config, Store(engine), clock=lambda: NOW, live=True)
    engine.dispose()


@pytest.mark.slow  # about 75 s on 2 cores, most of it generating the messages
def test_100k_hostile_messages_are_each_accepted_or_dead_lettered_in_bounded_memory(
    pipeline: Pipeline, record_property: Callable[[str, Any], None]
) -> None:
    gc.collect()
    rss_before = rss_mb()
    started = time.perf_counter()
    tombstones = 0
    for index, message in enumerate(messages(SEED, N_MESSAGES)):
        if message is None:
            tombstones += 1
            message = RawMessage(None, Position("predictions", 0, N_MESSAGES + index))
        try:
            pipeline.ingest(message)
        except Exception as exc:  # pragma: no cover - the failure report
            value = b"" if message.value is None else message.value
            pytest.fail(f"message {index} (seed {SEED}) escaped ingest: {exc!r}; first bytes {value[:200]!r}")
        if index % FLUSH_EVERY == FLUSH_EVERY - 1:
            pipeline.flush()
    pipeline.flush()
    elapsed = time.perf_counter() - started
    gc.collect()
    growth = rss_mb() - rss_before

    counters = pipeline.counters
    assert counters["consumed"] == N_MESSAGES
    assert counters["consumed"] == counters["accepted"] + counters["rejected"] + counters["duplicates"]
    # Each kind of outcome happened often: the generator reaches past the JSON decoder into the checks.
    assert counters["accepted"] > 10_000 and counters["rejected"] > 30_000 and counters["duplicates"] > 500
    open_events = sum(
        state["open_events"] + state["reference_events"] for state in pipeline.status().values()
    )
    assert open_events == counters["accepted"]  # every accepted event sits in a window (or the reference)
    with pipeline.store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*), min(length(reason)) FROM dead_letters")).one()
    assert stored[0] == counters["rejected"] >= tombstones
    assert stored[1] > 0  # every dead letter has a reason
    assert growth < MAX_RSS_GROWTH_MB, f"RSS grew by {growth:.0f} MB"
    rate = N_MESSAGES / elapsed
    record_property("fuzz_messages", N_MESSAGES)
    record_property("fuzz_rate_per_s", round(rate))
    record_property("fuzz_rss_growth_mb", round(growth, 1))
    print(
        f"\nfuzz: {N_MESSAGES} messages in {elapsed:.1f} s ({rate:,.0f}/s), {counters}, RSS +{growth:.0f} MB"
    )
