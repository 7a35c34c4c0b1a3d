"""Alerting: the alert lifecycle (:class:`AlertEngine`), the webhook/Kafka outbox sender
(:class:`DeliveryWorker`), what a notification says (:func:`render_body`), the SSRF guard
(:class:`WebhookGuard`) and their configuration (:class:`AlertingSettings`)."""

from monitor.alerting.delivery import DeliveryWorker, classify_status, retry_delay
from monitor.alerting.lifecycle import (
    AlertEngine,
    EngineReport,
    SilenceMatcher,
    Target,
    fingerprint,
    needs_notification,
    observe_clean,
    observe_failure,
    open_alert,
    severity_of,
    silenced,
    subject_of,
)
from monitor.alerting.rendering import alert_document, render_body, sign, verify_signature
from monitor.alerting.settings import (
    AlertingSettings,
    DeliverySettings,
    SeverityBands,
    SilenceSettings,
    SubscriptionSettings,
)
from monitor.alerting.webhook_guard import UnsafeWebhookUrl, WebhookGuard

__all__ = [
    "AlertEngine",
    "AlertingSettings",
    "DeliverySettings",
    "DeliveryWorker",
    "EngineReport",
    "SeverityBands",
    "SilenceMatcher",
    "SilenceSettings",
    "SubscriptionSettings",
    "Target",
    "UnsafeWebhookUrl",
    "WebhookGuard",
    "alert_document",
    "classify_status",
    "fingerprint",
    "needs_notification",
    "observe_clean",
    "observe_failure",
    "open_alert",
    "render_body",
    "retry_delay",
    "severity_of",
    "sign",
    "silenced",
    "subject_of",
    "verify_signature",
]
