"""Alerting: the alert lifecycle (:class:`AlertEngine`), the webhook/Kafka outbox sender
(:class:`DeliveryWorker`) and their configuration (:class:`AlertingSettings`)."""

# monitor.config imports AlertingSettings from this package, and the settings subclass monitor.config's base:
# loading monitor.config first makes the import order the same whichever module is imported first.
import monitor.config  # noqa: F401  isort: skip
from monitor.alerting.delivery import (
    DeliveryWorker,
    UnsafeWebhookUrl,
    WebhookGuard,
    alert_document,
    classify_status,
    render_body,
    retry_delay,
    sign,
    verify_signature,
)
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
from monitor.alerting.settings import (
    AlertingSettings,
    DeliverySettings,
    SeverityBands,
    SilenceSettings,
    SubscriptionSettings,
)

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
