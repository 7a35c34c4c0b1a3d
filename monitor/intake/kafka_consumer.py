"""Kafka intake: a kafka-python consumer in a consumer group, on its own thread.

Offsets are committed manually and only up to :meth:`Pipeline.safe_offsets`: the first message whose effect
is not stored yet. A crash at any moment therefore loses nothing (the restart re-reads what was not
stored), and the pipeline's idempotent writes make the re-read harmless (at-least-once delivery, each event
counted once).

A broker that is down at start, or goes away later, is retried with exponential backoff and a logged
reason; a database that is away pauses consumption rather than committing past unstored work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from monitor.config import KafkaSettings
from monitor.pipeline import Pipeline, RawMessage
from monitor.windows import Position
from storage import StorageUnavailable

log = logging.getLogger("sentinel.consumer")

# Pause fetching while this many messages wait for the database.
BACKLOG_PAUSE = 50_000
LAG_INTERVAL = 5.0  # seconds between consumer-lag measurements
COMMIT_TIMEOUT_MS = 5000  # for offset commits and committed-offset reads
RECONNECTED_AFTER = 3.0  # seconds the group coordinator must stay known after a loss to count as connected


class Backoff:
    """Exponential backoff with a ceiling; ``reset`` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial


class _RebalanceFlag(ConsumerRebalanceListener):
    # Runs on kafka-python's IO loop: it must not block, so it only raises a flag for the poll loop.
    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.flag.set()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned partitions: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        self.flag.set()


def consumer_options(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python options from the settings (also used by tests and the demo)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "group_id": settings.group_id,
        "client_id": settings.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_poll_records": settings.max_poll_records,
        "fetch_max_bytes": max(52_428_800, settings.max_message_bytes * 2),
        "max_partition_fetch_bytes": max(1_048_576, settings.max_message_bytes * 2),
        "bootstrap_timeout_ms": int(settings.bootstrap_timeout * 1000),
        "reconnect_backoff_max_ms": 5000,
        **settings.security_options(),
    }
    return options


class KafkaIntake(threading.Thread):
    """The consumer thread. ``stop()`` makes it finish its batch, commit what is stored, and close."""

    def __init__(
        self,
        settings: KafkaSettings,
        pipeline: Pipeline,
        *,
        consumer_factory: Callable[..., KafkaConsumer] = KafkaConsumer,
        before_close: Callable[[], None] | None = None,
        db_retry: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        super().__init__(name="sentinel-intake", daemon=True)
        self.settings = settings
        self.pipeline = pipeline
        self.consumer_factory = consumer_factory
        self.before_close = before_close
        self.db_retry = db_retry  # initial and maximum wait while the database is unavailable
        self._known_since: float | None = None  # since when the group coordinator is known (monotonic)
        self._coordinator_lost_at: float | None = None  # set while lost or not yet steady again
        self._stop_requested = threading.Event()
        self._rebalanced = threading.Event()
        self._committed: dict[TopicPartition, int] = {}
        self.connected = threading.Event()
        self.assigned: set[tuple[str, int]] = set()
        self.lag: dict[tuple[str, int], int] = {}  # per owned partition: messages not read yet
        self._lag_measured = float("-inf")
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def run(self) -> None:
        try:
            consumer = self._connect()
            if consumer is None:
                return
            try:
                self._consume(consumer)
            finally:
                self._shutdown(consumer)
        except BaseException as exc:  # recorded for the daemon, which exits non-zero ("crashed")
            self.error = exc
            log.exception("intake crashed")

    def _connect(self) -> KafkaConsumer | None:
        backoff = Backoff(self.settings.retry_backoff_initial, self.settings.retry_backoff_max)
        while not self.stopping:
            try:
                consumer = self.consumer_factory(**consumer_options(self.settings))
                consumer.subscribe([self.settings.topic], listener=_RebalanceFlag(self._rebalanced))
                self.connected.set()
                log.info(
                    "connected to Kafka at %s, topic %s, group %s",
                    self.settings.bootstrap_servers,
                    self.settings.topic,
                    self.settings.group_id,
                )
                return consumer
            except KafkaError as exc:
                delay = backoff.next()
                log.warning(
                    "Kafka at %s unreachable (%s); retrying in %.1f s",
                    self.settings.bootstrap_servers,
                    exc,
                    delay,
                )
                self._stop_requested.wait(delay)
        return None

    def _consume(self, consumer: KafkaConsumer) -> None:
        db_backoff = Backoff(*self.db_retry)
        paused = False
        while not self.stopping:
            if self._rebalanced.is_set():
                self._rewind(consumer)
            try:
                batch = consumer.poll(timeout_ms=500)
            except KafkaError as exc:
                self._note_connection(consumer)
                log.warning("poll failed (%s: %s); retrying", type(exc).__name__, exc)
                self._stop_requested.wait(1.0)
                continue
            self.assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            self._note_connection(consumer)
            try:
                self._ingest(consumer, batch)
                self.pipeline.flush()
                db_backoff.reset()
                self._measure_lag(consumer)
            except StorageUnavailable as exc:
                delay = db_backoff.next()
                log.warning("database unavailable (%s); intake waits %.1f s and keeps offsets", exc, delay)
                self._stop_requested.wait(delay)
            overloaded = self.pipeline.backlog > BACKLOG_PAUSE
            if overloaded and not paused:
                consumer.pause(*consumer.assignment())
                paused = True
                log.warning("pausing consumption: %d messages wait for the database", self.pipeline.backlog)
            elif paused and not overloaded:
                consumer.resume(*consumer.paused())
                paused = False
            self._commit(consumer)

    def _ingest(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            for index, record in enumerate(records):
                if self._rebalanced.is_set():
                    return  # the rewind re-reads the rest
                try:
                    self.pipeline.ingest(
                        RawMessage(record.value, Position(tp.topic, tp.partition, record.offset), record.key)
                    )
                except StorageUnavailable:
                    # A model seen for the first time could not be loaded: read this message again later.
                    consumer.seek(tp, records[index].offset)
                    raise

    def _note_connection(self, consumer: KafkaConsumer) -> None:
        """Keep ``connected`` (and so /readyz) true only while the group coordinator is known.

        kafka-python keeps the partition assignment through a broker outage and polls return empty, so
        neither shows the outage; the coordinator becomes unknown within about a second of losing the
        brokers. During the outage each reconnect attempt makes it look known for a moment, so after a
        loss it must stay known for RECONNECTED_AFTER seconds before the intake counts as connected again.
        There is no public accessor for the coordinator, hence the private attribute, read defensively.
        """
        coordinator = getattr(consumer, "_coordinator", None)
        unknown = getattr(coordinator, "coordinator_unknown", None)
        if unknown is None:
            return
        now = time.monotonic()
        if unknown():
            if self._coordinator_lost_at is None and self._known_since is not None:
                servers = self.settings.bootstrap_servers
                log.warning("lost the Kafka group coordinator (%s); not ready", servers)
            self._coordinator_lost_at = now
            self._known_since = None
            self.connected.clear()
            return
        if self._known_since is None:
            self._known_since = now
        if self._coordinator_lost_at is None:
            self.connected.set()  # never lost: connected from the first poll
        elif now - self._known_since >= RECONNECTED_AFTER:
            log.info("Kafka group coordinator reachable again")
            self._coordinator_lost_at = None
            self.connected.set()

    def _measure_lag(self, consumer: KafkaConsumer) -> None:
        """Lag = the partition's high watermark (from the last fetch response, no extra request) minus the
        offset after the last message taken. Commits trail on purpose (until windows are stored), so the
        committed offset would show a window's worth of lag even when intake keeps up. Measured at most
        every LAG_INTERVAL seconds: a partition nothing was read from yet needs a position request."""
        now = time.monotonic()
        if now - self._lag_measured < LAG_INTERVAL:
            return
        self._lag_measured = now
        read = self.pipeline.read_offsets()
        lag = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = read.get(tp)
            if position is None:
                try:
                    position = consumer.position(tp, timeout_ms=200)
                except KafkaError:
                    position = None
            if highwater is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        self.lag = lag

    def _rewind(self, consumer: KafkaConsumer) -> None:
        """After a rebalance, rebuild the open windows from the committed offsets of what we own now."""
        self._rebalanced.clear()
        self.pipeline.forget_uncommitted()
        self._committed.clear()
        for tp in consumer.assignment():
            committed = consumer.committed(tp, timeout_ms=COMMIT_TIMEOUT_MS)
            if committed is None:
                if self.settings.auto_offset_reset == "earliest":
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, committed)
                self._committed[tp] = committed

    def _commit(self, consumer: KafkaConsumer) -> None:
        owned = consumer.assignment()
        offsets = {}
        for (topic, partition), offset in self.pipeline.safe_offsets().items():
            tp = TopicPartition(topic, partition)
            if tp in owned and self._committed.get(tp) != offset:
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            # Bounded: without a timeout kafka-python retries a commit for as long as the brokers are away,
            # and the whole intake loop (readiness, database backoff, stop requests) would wait with it.
            consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            # Not fatal: the next loop commits again; a restart meanwhile only re-reads stored work.
            log.warning("offset commit failed (%s: %s)", type(exc).__name__, exc)
            return
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset

    def _shutdown(self, consumer: KafkaConsumer) -> None:
        try:
            if self.before_close is not None:
                self.before_close()
            self.pipeline.flush()
            self._commit(consumer)
        except (StorageUnavailable, KafkaError) as exc:
            log.warning("final store/commit incomplete (%s); the restart re-reads the rest", exc)
        finally:
            consumer.close(autocommit=False)
            log.info("consumer closed")

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        return {(tp.topic, tp.partition): offset for tp, offset in self._committed.items()}


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (used by the daemon's readiness checks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
