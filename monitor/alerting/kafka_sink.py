"""The Kafka alerts topic as a delivery channel: one lazily built producer, mapped errors.

The delivery worker (:mod:`monitor.alerting.delivery`) hands it a job's topic, key (the alert fingerprint, so
one alert's notifications stay in order on one partition) and rendered body. Kafka errors become a retryable
:class:`~monitor.errors.DeliveryError`; the producer that raised one is dropped, since it may be wedged on a
dead connection, and the next attempt builds a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monitor.errors import DeliveryError

if TYPE_CHECKING:
    from monitor.config import KafkaSettings

__all__ = ["KafkaAlertSink", "producer_options"]

log = logging.getLogger("sentinel.delivery")


def producer_options(settings: KafkaSettings, timeout: float) -> dict[str, Any]:
    """kafka-python producer arguments: every replica acknowledges, and no call blocks past ``timeout``."""
    return {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": f"{settings.client_id}-alerts",
        "acks": "all",
        "request_timeout_ms": int(timeout * 1000),
        "max_block_ms": int(timeout * 1000),
        **settings.security_options(),
    }


class KafkaAlertSink:
    """Produces rendered notifications to Kafka, waiting for each acknowledgement.

    Parameters
    ----------
    kafka
        Connection settings (None: no Kafka is configured, and every send fails, retryably).
    timeout
        Seconds one send may take, acknowledgement included.
    producer_factory
        Builds the producer from :func:`producer_options` (default ``kafka.KafkaProducer``).
    """

    def __init__(
        self,
        kafka: KafkaSettings | None,
        timeout: float,
        producer_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.timeout = timeout
        self._producer_factory = producer_factory
        self._producer: Any = None

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one message and wait for it; :class:`DeliveryError` (retryable) if Kafka fails."""
        from kafka.errors import KafkaError

        try:
            future = self._producer_instance().send(topic, key=key, value=value)
            future.get(timeout=self.timeout)
        except KafkaError as exc:
            self._drop_producer()
            raise DeliveryError(f"Kafka: {type(exc).__name__}: {exc}", retryable=True) from exc

    def close(self) -> None:
        """Release the producer (flushing what it holds, for a few seconds at most)."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # closing a producer whose broker is away must not fail the stop
                log.debug("closing the alerts producer failed", exc_info=True)
            self._producer = None

    def _producer_instance(self) -> Any:
        if self._producer is None:
            if self.kafka is None:
                from kafka.errors import KafkaConfigurationError

                raise KafkaConfigurationError("no Kafka connection settings for the alerts topic")
            factory = self._producer_factory
            if factory is None:
                from kafka import KafkaProducer

                factory = KafkaProducer
            self._producer = factory(**producer_options(self.kafka, self.timeout))
        return self._producer

    def _drop_producer(self) -> None:
        # A producer that failed may be wedged on a dead connection: the next attempt builds a new one.
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:
                log.debug("closing a failed alerts producer failed", exc_info=True)
            self._producer = None
