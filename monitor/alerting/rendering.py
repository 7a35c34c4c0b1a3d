"""What a notification says and how it is signed: the alert document, the three body formats, the HMAC.

Bodies are rendered once, when a delivery is enqueued (:func:`render_body`, called by the alert engine), so
every retry sends the same bytes, and the ``X-Sentinel-Signature`` (:func:`sign`) is computed over exactly
those bytes. A receiver checks a request with :func:`verify_signature`. Pure functions: no I/O, no clock.

Webhook request (the delivery worker, :mod:`monitor.alerting.delivery`, sends it)::

    POST <url>
    Content-Type: application/json
    X-Sentinel-Delivery: <delivery uuid, stable across retries>
    X-Sentinel-Timestamp: <unix seconds of this attempt>
    X-Sentinel-Signature: sha256=<hex HMAC-SHA256 of the body with the subscription's secret>
    X-Sentinel-Event: firing | escalated | repeat | resolved

    {"version": "1", "status": "firing", "alert": {...}}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from storage import AlertRecord

__all__ = ["alert_document", "render_body", "rfc3339", "sign", "verify_signature"]

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end time"


def rfc3339(value: datetime | None) -> str | None:
    """An aware datetime as RFC 3339 UTC with a ``Z`` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_document(alert: AlertRecord) -> dict[str, Any]:
    """The alert object of a notification (``alert`` in the native body), times as RFC 3339 UTC."""
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

    ``native``: ``{"version": "1", "status": ..., "alert": {...}}`` as in the module docstring (also the
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


def sign(secret: str, body: bytes) -> str:
    """The ``X-Sentinel-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)
