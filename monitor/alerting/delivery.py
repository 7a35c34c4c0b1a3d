"""Sending the outbox: webhooks over HTTP (httpx) and the optional Kafka alerts topic.

:class:`DeliveryWorker` claims due deliveries (:meth:`storage.AlertStore.claim_deliveries`: ``SKIP LOCKED``
plus a lease, so several replicas share the work on PostgreSQL), sends each with a timeout and records every
attempt. Outcomes (:func:`classify_status`): a 2xx delivers; 429, 5xx, connection errors and timeouts are
retried with exponential backoff and jitter (:func:`retry_delay`) until ``max_age``; any other status fails
the delivery for good. Delivery is at-least-once: a delivery whose acknowledgement was lost (a crash between
the send and the record) is sent again, with the same ``X-Sentinel-Delivery`` id and the same body.

Webhook request (contract section 4)::

    POST <url>
    Content-Type: application/json
    X-Sentinel-Delivery: <delivery uuid, stable across retries>
    X-Sentinel-Timestamp: <unix seconds of this attempt>
    X-Sentinel-Signature: sha256=<hex HMAC-SHA256 of the body with the subscription's secret>
    X-Sentinel-Event: firing | escalated | repeat | resolved

    {"version": "1", "status": "firing", "alert": {...}}

A receiver verifies with :func:`verify_signature`. Bodies are rendered once, when the delivery is enqueued
(:func:`render_body`), so every retry sends the same bytes.

The subscription's secret is stored sealed (:mod:`storage.crypto`); the worker opens it just before signing
and keeps it no longer than the attempt. A secret that does not open (the key is not the one it was sealed
with) fails the attempt with an error naming ``alerting.secret_key`` and is retried with the usual backoff,
so fixing the key and restarting delivers what waited.

Server-side request forgery (:class:`WebhookGuard`): whoever may create a subscription must not be able to
make Sentinel send requests into the network it runs in (a cloud metadata service, an admin port on
loopback, a database on a private range). Before each attempt the URL's host is resolved, every address is
checked (private RFC 1918, loopback, link-local incl. 169.254.169.254, unique-local IPv6, unspecified,
CGNAT, multicast, reserved: refused unless allowed in ``alerting.delivery``), and the request is sent to the
address that was checked, with the original ``Host`` header and TLS server name: a DNS answer that changes
between the check and the connection (rebinding) cannot redirect it. Redirects are never followed (a 3xx is
not an acknowledgement and fails the delivery), so a receiver cannot bounce a delivery inward either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from monitor.alerting.webhook_guard import UnsafeWebhookUrl, WebhookGuard, WebhookTarget
from monitor.errors import DeliveryError
from storage import AlertRecord, AlertStore, AttemptIn, DeliveryJob, StorageUnavailable
from storage.crypto import SecretBox, SecretKeyError

if TYPE_CHECKING:
    from monitor.alerting.settings import DeliverySettings
    from monitor.config import KafkaSettings

__all__ = [
    "USER_AGENT",
    "DeliveryWorker",
    "UnsafeWebhookUrl",
    "WebhookGuard",
    "alert_document",
    "classify_status",
    "render_body",
    "retry_delay",
    "rfc3339",
    "sign",
    "verify_signature",
]

log = logging.getLogger("sentinel.delivery")

USER_AGENT = "sentinel-webhook/1"
_ERROR_LIMIT = 500  # characters of an error message kept per attempt
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end time"

Clock = Callable[[], datetime]


# ----------------------------------------------------------------------------------- formats


def rfc3339(value: datetime | None) -> str | None:
    """An aware datetime as RFC 3339 UTC with a ``Z`` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_document(alert: AlertRecord) -> dict[str, Any]:
    """The contract's alert object (section 4), times as RFC 3339 UTC."""
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "model": alert.model,
        "detector": alert.detector,
        "threat": alert.threat,
        "severity": alert.severity,
        "state": alert.state,
        "title": alert.title,
        "summary": alert.summary,
        "window_start": rfc3339(alert.window_start),
        "window_end": rfc3339(alert.window_end),
        "statistic": alert.statistic,
        "threshold": alert.threshold,
        "p_value": alert.p_value,
        "details": alert.details,
        "first_seen": rfc3339(alert.first_seen),
        "last_seen": rfc3339(alert.last_seen),
        "count": alert.count,
        "resolved_at": rfc3339(alert.resolved_at),
    }


def _dumps(document: dict[str, Any]) -> bytes:
    # Compact and key-sorted: the same alert always renders to the same bytes.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def render_body(fmt: str, alert: AlertRecord, *, receiver: str = "sentinel") -> bytes:
    """The request body for one notification of ``alert`` in its current state.

    ``native``: ``{"version": "1", "status": ..., "alert": {...}}`` exactly as in the contract (also the
    Kafka message value). ``slack``: ``{"text": ...}``. ``alertmanager``: Alertmanager's webhook payload
    (version "4") with one alert, so tools that take Alertmanager webhooks take Sentinel's.
    """
    status = alert.state
    if fmt == "native":
        return _dumps({"version": "1", "status": status, "alert": alert_document(alert)})
    if fmt == "slack":
        mark = "RESOLVED" if status == "resolved" else f"FIRING:{alert.severity.upper()}"
        return _dumps({"text": f"[{mark}] {alert.title}\n{alert.summary}"})
    if fmt == "alertmanager":
        labels = {
            "alertname": alert.detector,
            "model": alert.model,
            "detector": alert.detector,
            "threat": alert.threat,
            "severity": alert.severity,
        }
        subject = alert.details.get("subject") if isinstance(alert.details, dict) else None
        if subject:
            labels["subject"] = str(subject)
        annotations = {"summary": alert.title, "description": alert.summary}
        return _dumps(
            {
                "version": "4",
                "groupKey": f'{{}}:{{fingerprint="{alert.fingerprint}"}}',
                "truncatedAlerts": 0,
                "status": status,
                "receiver": receiver,
                "groupLabels": {"fingerprint": alert.fingerprint},
                "commonLabels": labels,
                "commonAnnotations": annotations,
                "externalURL": "",
                "alerts": [
                    {
                        "status": status,
                        "labels": labels,
                        "annotations": annotations,
                        "startsAt": rfc3339(alert.first_seen),
                        "endsAt": rfc3339(alert.resolved_at) or _ZERO_TIME,
                        "generatorURL": "",
                        "fingerprint": alert.fingerprint,
                    }
                ],
            }
        )
    raise ValueError(f"unknown payload format {fmt!r}; valid: native, slack, alertmanager")


# ----------------------------------------------------------------------------------- signing and outcomes


def sign(secret: str, body: bytes) -> str:
    """The ``X-Sentinel-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


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
        now: Clock | None = None,
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
        self._now = now or (lambda: datetime.now(UTC))
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
        self._producer_factory = producer_factory
        self._producer: Any = None
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
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # closing a producer whose broker is away must not fail the stop
                log.debug("closing the alerts producer failed", exc_info=True)
            self._producer = None

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
        from kafka.errors import KafkaError

        if job.topic is None:
            raise DeliveryError("kafka delivery without a topic", retryable=False)
        try:
            producer = self._producer_instance()
            future = producer.send(job.topic, key=job.fingerprint.encode(), value=job.body)
            future.get(timeout=self.settings.timeout)
        except KafkaError as exc:
            self._drop_producer()
            raise DeliveryError(f"Kafka: {type(exc).__name__}: {exc}", retryable=True) from exc

    def _producer_instance(self) -> Any:
        if self._producer is None:
            if self.kafka is None:
                from kafka.errors import KafkaConfigurationError

                raise KafkaConfigurationError("no Kafka connection settings for the alerts topic")
            factory = self._producer_factory
            if factory is None:
                from kafka import KafkaProducer

                factory = KafkaProducer
            self._producer = factory(**_producer_options(self.kafka, self.settings.timeout))
        return self._producer

    def _drop_producer(self) -> None:
        # A producer that failed may be wedged on a dead connection: the next attempt builds a new one.
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:
                log.debug("closing a failed alerts producer failed", exc_info=True)
            self._producer = None


def _producer_options(settings: KafkaSettings, timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": f"{settings.client_id}-alerts",
        "acks": "all",
        "request_timeout_ms": int(timeout * 1000),
        "max_block_ms": int(timeout * 1000),
        **settings.security_options(),
    }
    return options
