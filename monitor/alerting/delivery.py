"""Sending the outbox: the delivery worker and its retry policy.

:class:`DeliveryWorker` claims due deliveries (:meth:`storage.AlertStore.claim_deliveries`: ``SKIP LOCKED``
plus a lease, so several replicas share the work on PostgreSQL), sends each with a timeout and records every
attempt. Outcomes (:func:`classify_status`): a 2xx delivers; 429, 5xx, connection errors and timeouts are
retried with exponential backoff and jitter (:func:`retry_delay`) until ``max_age``; any other status fails
the delivery for good. Delivery is at-least-once: a delivery whose acknowledgement was lost (a crash between
the send and the record) is sent again, with the same ``X-Sentinel-Delivery`` id and the same body.

A webhook is an HTTP POST (httpx) of the body rendered at enqueue time (:mod:`monitor.alerting.rendering`
describes the request and its signature); the Kafka alerts topic is the other channel
(:mod:`monitor.alerting.kafka_sink`).

The subscription's secret is stored sealed (:mod:`storage.crypto`); the worker opens it just before signing
and keeps it no longer than the attempt. A secret that does not open (the key is not the one it was sealed
with) fails the attempt with an error naming ``alerting.secret_key`` and is retried with the usual backoff,
so fixing the key and restarting delivers what waited.

Every webhook attempt passes the SSRF guard (:mod:`monitor.alerting.webhook_guard`) first and connects to the
address the guard checked. Redirects are never followed (a 3xx is not an acknowledgement and fails the
delivery), so a receiver cannot bounce a delivery inward either.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from monitor.alerting.kafka_sink import KafkaAlertSink
from monitor.alerting.rendering import sign
from monitor.alerting.webhook_guard import UnsafeWebhookUrl, WebhookGuard, WebhookTarget
from monitor.clock import WallClock, utcnow
from monitor.errors import DeliveryError
from storage import AlertStore, AttemptIn, DeliveryJob, StorageUnavailable
from storage.crypto import SecretBox, SecretKeyError

if TYPE_CHECKING:
    from monitor.alerting.settings import DeliverySettings
    from monitor.config import KafkaSettings

__all__ = ["USER_AGENT", "DeliveryWorker", "classify_status", "retry_delay"]

log = logging.getLogger("sentinel.delivery")

USER_AGENT = "sentinel-webhook/1"
_ERROR_LIMIT = 500  # characters of an error message kept per attempt


# ----------------------------------------------------------------------------------- retry policy


def classify_status(status_code: int) -> str:
    """``delivered`` for 2xx; ``retry`` for 429 and 5xx; ``failed`` (for good) for anything else."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 429 or 500 <= status_code < 600:
        return "retry"
    return "failed"


def retry_delay(
    attempt: int, *, initial: float, maximum: float, jitter: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``initial * 2**(attempt-1)`` up to
    ``maximum``, less a random fraction of up to ``jitter`` of it (spreads retries of many deliveries)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    base = min(maximum, initial * 2.0 ** min(attempt - 1, 60))
    draw = (rng or random).random()
    return base * (1.0 - jitter * draw)


def _retry_after(response: httpx.Response, now: datetime) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class _Sent:
    status_code: int | None
    retry_after: float | None = None


class DeliveryWorker:
    """Sends due deliveries, on its own thread (:meth:`start`/:meth:`stop`) or one batch at a time
    (:meth:`run_once`, for tests with an injected ``now``).

    Parameters
    ----------
    store
        The alerting store.
    settings
        Timeout, backoff, jitter, max age, batch size, poll interval.
    kafka
        Connection settings for the Kafka alerts topic (only needed when deliveries to it exist).
    now
        The clock (aware UTC).
    transport
        An httpx transport (tests may pass ``httpx.MockTransport``); default: real HTTP.
    rng
        Randomness for the jitter.
    producer_factory
        Builds the Kafka producer (default ``kafka.KafkaProducer``).
    guard
        The SSRF guard applied to every webhook attempt; default: the one ``settings`` configures.
    secret_box
        Opens the subscriptions' sealed secrets; default: the store's (:attr:`AlertStore.secret_box`).
    """

    def __init__(
        self,
        store: AlertStore,
        settings: DeliverySettings,
        *,
        kafka: KafkaSettings | None = None,
        now: WallClock | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        worker_id: str | None = None,
        producer_factory: Callable[..., Any] | None = None,
        guard: WebhookGuard | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.guard = guard or WebhookGuard.from_settings(settings)
        self._secret_box = secret_box
        self.kafka = kafka
        self._now = now or utcnow
        self._rng = rng or random.Random()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # httpx logs every request with its full URL at INFO, and a webhook URL may carry a token (Slack
        # style): only its warnings may reach the log. This worker logs each outcome itself, without the URL.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        self._client = httpx.Client(
            timeout=settings.timeout,
            transport=transport,
            follow_redirects=False,  # a redirect is not an acknowledgement
            headers={"User-Agent": USER_AGENT},
        )
        self._kafka_sink = KafkaAlertSink(kafka, settings.timeout, producer_factory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Send in the background until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="sentinel-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the delivery in flight and stop; pending ones stay in the database for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Release the HTTP client and the Kafka producer."""
        self._client.close()
        self._kafka_sink.close()

    def _loop(self) -> None:
        backoff = self.settings.poll_interval
        while not self._stop.is_set():
            try:
                handled = self.run_once()
                backoff = self.settings.poll_interval
            except StorageUnavailable as exc:
                backoff = min(backoff * 2, 30.0)
                log.warning("database unavailable (%s); deliveries wait %.1f s", exc, backoff)
                handled = 0
            except Exception:  # a bug must not silently end delivery: log it, keep going
                log.exception("delivery worker failed; retrying")
                handled = 0
                backoff = min(backoff * 2, 30.0)
            if handled == 0:
                self._stop.wait(backoff)

    # ------------------------------------------------------------------ one batch

    def run_once(self, now: datetime | None = None) -> int:
        """Claim one batch of due deliveries and attempt each; returns how many were handled."""
        claimed_at = now if now is not None else self._now()
        if not self.store.has_due_deliveries(claimed_at):
            return 0  # idle: no write transaction (and on SQLite no write lock) for nothing
        jobs = self.store.claim_deliveries(
            self.worker_id,
            claimed_at,
            limit=self.settings.batch_size,
            lease=timedelta(seconds=self.settings.effective_lease),
        )
        for index, job in enumerate(jobs):
            if self._stop.is_set() and now is None:
                # Stopping: give the rest back at once (they stay pending and are sent after the restart).
                self.store.release([j.id for j in jobs[index:]], self.worker_id)
                break
            self._attempt(job, now)
        return len(jobs)

    def _attempt(self, job: DeliveryJob, fixed_now: datetime | None) -> None:
        label = self._label(job)
        if not job.subscription_active:
            self.store.give_up(job.id, "subscription deleted", fixed_now or self._now())
            log.info("delivery %s to %s given up: subscription deleted", job.uuid, label)
            return
        started = fixed_now or self._now()
        t0 = time.perf_counter()
        try:
            sent = self._send(job, started)
            error = None
            outcome = classify_status(sent.status_code) if sent.status_code is not None else "delivered"
            if outcome != "delivered":
                error = f"HTTP {sent.status_code}"
        except DeliveryError as exc:
            sent = _Sent(None)
            error = str(exc)[:_ERROR_LIMIT]
            outcome = "retry" if exc.retryable else "failed"
        duration_ms = (time.perf_counter() - t0) * 1000.0
        done_at = fixed_now or self._now()
        next_at: datetime | None = None
        if outcome == "retry":
            deadline = job.created_at + timedelta(seconds=self.settings.max_age)
            if done_at >= deadline:
                outcome = "failed"
                error = f"{error}; given up after max_age {self.settings.max_age:.0f} s"
            else:
                delay = retry_delay(
                    job.attempts + 1,
                    initial=self.settings.backoff_initial,
                    maximum=self.settings.backoff_max,
                    jitter=self.settings.jitter,
                    rng=self._rng,
                )
                if sent.retry_after is not None:
                    delay = max(delay, min(sent.retry_after, self.settings.backoff_max))
                # The last try is made at max_age, not skipped.
                next_at = min(done_at + timedelta(seconds=delay), deadline)
        self.store.record_attempt(
            job.id,
            self.worker_id,
            AttemptIn(
                started_at=started,
                duration_ms=duration_ms,
                status_code=sent.status_code,
                error=error,
                outcome=outcome,
            ),
            next_attempt_at=next_at,
        )
        if outcome == "delivered":
            log.info("delivery %s (%s) to %s delivered in %.0f ms", job.uuid, job.reason, label, duration_ms)
        elif outcome == "retry":
            assert next_at is not None
            log.warning(
                "delivery %s to %s failed (%s), attempt %d; retrying at %s",
                job.uuid,
                label,
                error,
                job.attempts + 1,
                next_at.isoformat(),
            )
        else:
            log.error("delivery %s to %s failed for good: %s", job.uuid, label, error)

    @staticmethod
    def _label(job: DeliveryJob) -> str:
        # Never the URL (it may hold a token) and never the secret: the subscription's name or the topic.
        if job.channel == "kafka":
            return f"topic {job.topic}"
        return f"subscription {job.subscription_name!r} (id {job.subscription_id})"

    def _send(self, job: DeliveryJob, now: datetime) -> _Sent:
        if job.channel == "kafka":
            self._produce(job)
            return _Sent(None)
        return self._post(job, now)

    def _post(self, job: DeliveryJob, now: datetime) -> _Sent:
        if job.url is None:
            raise DeliveryError("subscription has no URL", retryable=False)
        headers = {
            "Content-Type": "application/json",
            "X-Sentinel-Delivery": job.uuid,
            "X-Sentinel-Timestamp": str(int(now.timestamp())),
            "X-Sentinel-Event": job.reason,
        }
        if job.sealed_secret:
            headers["X-Sentinel-Signature"] = sign(self._open_secret(job), job.body)
        target = self._checked_target(job.url)
        headers["Host"] = target.host_header
        # TLS is negotiated and verified for the URL's host name, while the connection goes to the address
        # that was checked (not to whatever a second DNS lookup might return).
        extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
        try:
            request = self._client.build_request(
                "POST", target.pinned_url(), content=job.body, headers=headers, extensions=extensions
            )
            response = self._client.send(request)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=False) from exc
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        return _Sent(response.status_code, _retry_after(response, now))

    def _open_secret(self, job: DeliveryJob) -> str:
        """The plain secret of the job's subscription, for this one signature."""
        assert job.sealed_secret is not None
        try:
            box = self._secret_box or self.store.secret_box
            return box.open(job.sealed_secret)
        except SecretKeyError as exc:
            # Retried (with backoff): the fix is to configure the right key, after which the wait is over.
            log.error("cannot sign delivery %s to %s: %s", job.uuid, self._label(job), exc)
            raise DeliveryError(f"cannot open the subscription's secret: {exc}", retryable=True) from None

    def _checked_target(self, url: str) -> WebhookTarget:
        """Resolve and check ``url`` now, at the attempt (the SSRF guard; see the module docstring)."""
        try:
            target = self.guard.check(url)
        except UnsafeWebhookUrl as exc:
            raise DeliveryError(f"refused: {exc}", retryable=False) from None
        except (socket.gaierror, UnicodeError) as exc:
            raise DeliveryError(f"cannot resolve the webhook host: {exc}", retryable=True) from None
        assert target is not None  # check() returns None only with unresolved_ok
        return target

    def _produce(self, job: DeliveryJob) -> None:
        if job.topic is None:
            raise DeliveryError("kafka delivery without a topic", retryable=False)
        self._kafka_sink.send(job.topic, key=job.fingerprint.encode(), value=job.body)
