"""Configuration of alerting: the ``alerting`` section of the YAML file (and ``SENTINEL_ALERTING__…``).

Example::

    alerting:
      resolve_after: 3            # consecutive clean windows that resolve an alert
      repeat_interval: 4h         # re-notify while still firing
      severity: {critical_p: 1.0e-6, warning_p: 1.0e-3}
      detector_severity:
        feature_drift: {critical_effect: 5, warning_effect: 2}   # 5+ drifted features: critical
      kafka_topic: sentinel-alerts
      subscriptions:
        - name: oncall
          url: https://hooks.example.com/sentinel
          secret: s3cr3t
          min_severity: warning
          models: [fraud-scorer]
      silences:
        - {model: fraud-scorer, detector: output_drift, until: "2026-12-01T00:00:00Z", comment: retraining}
      delivery: {timeout: 10s, backoff_initial: 1s, backoff_max: 5m, max_age: 1d}
      secret_key: <base64 of 32 random bytes>   # seals webhook secrets at rest; required with PostgreSQL

Webhooks may not reach private, loopback, link-local (cloud metadata), unique-local or unspecified addresses
unless allowed: ``delivery.allowed_networks: [10.20.0.0/16]`` lets one internal range through,
``delivery.allow_private_addresses: true`` lets every address through (a laptop or a test bench only).
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from detectors.registry import DETECTORS
from monitor.settings_base import Duration, StrictSettings
from storage.crypto import SECRET_KEY_SETTING, SecretKeyError, parse_key

__all__ = [
    "CONTRACT_DETECTORS",
    "AlertingSettings",
    "DeliverySettings",
    "SeverityBands",
    "SilenceSettings",
    "SubscriptionSettings",
]

# The published detector ids: stable, so configuration may name them before they are built.
CONTRACT_DETECTORS = frozenset(
    {
        "vae_anomaly",
        "latent_drift",
        "feature_drift",
        "output_drift",
        "performance",
        "label_drift",
        "label_consistency",
        "group_outcome",
        "backdoor",
        "evasion",
        "extraction",
        "probing",
    }
)
THREATS = ("drift", "privacy", "confidentiality", "integrity", "robustness", "backdoor")
Severity = Literal["info", "warning", "critical"]

# Detectors whose statistic is worse when lower (accuracy against a critical accuracy): their effect size is
# threshold / statistic. Every other detector's is statistic / threshold.
LOWER_IS_WORSE = frozenset({"performance"})


def _known_detector(detector_id: str) -> str:
    if detector_id not in CONTRACT_DETECTORS and detector_id not in DETECTORS:
        valid = ", ".join(sorted(CONTRACT_DETECTORS | set(DETECTORS)))
        raise ValueError(f"unknown detector id {detector_id!r}; valid ids: {valid}")
    return detector_id


class SeverityBands(StrictSettings):
    """How strong a failing result's evidence must be for each severity; the stronger of the two bands wins.

    p-value bands: ``p < critical_p`` is critical, ``p < warning_p`` warning, otherwise info. Effect-size
    bands (off unless set): the effect is ``statistic / threshold`` (``threshold / statistic`` for detectors
    whose statistic is worse when lower, such as ``performance``); ``>= critical_effect`` is critical,
    ``>= warning_effect`` warning. A result with neither a p-value nor a usable effect is a warning.

    >>> SeverityBands(critical_p=1e-9).warning_p
    0.001
    """

    critical_p: float | None = Field(1e-6, gt=0, lt=1)
    warning_p: float | None = Field(1e-3, gt=0, lt=1)
    critical_effect: float | None = Field(None, gt=0)
    warning_effect: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> SeverityBands:
        if self.critical_p is not None and self.warning_p is not None and self.critical_p > self.warning_p:
            raise ValueError(
                f"critical_p must be at most warning_p (got {self.critical_p} and {self.warning_p})"
            )
        if (
            self.critical_effect is not None
            and self.warning_effect is not None
            and self.critical_effect < self.warning_effect
        ):
            raise ValueError(
                "critical_effect must be at least warning_effect "
                f"(got {self.critical_effect} and {self.warning_effect})"
            )
        return self


class SubscriptionSettings(StrictSettings):
    """A webhook subscription from the configuration (synced into the database at start, by name).

    Empty filter lists match everything; ``min_severity`` is the least severe alert it receives. The secret
    signs each body (``X-Sentinel-Signature``); it is never logged or shown.
    """

    name: str = Field(min_length=1, max_length=128)
    url: str
    secret: SecretStr | None = None
    format: Literal["native", "slack", "alertmanager"] = "native"
    models: list[str] = Field(default_factory=list)
    detectors: list[str] = Field(default_factory=list)
    threats: list[Literal["drift", "privacy", "confidentiality", "integrity", "robustness", "backdoor"]] = (
        Field(default_factory=list)
    )
    min_severity: Severity = "info"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, value: list[str]) -> list[str]:
        return [_known_detector(d) for d in value]

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (leave it out for unsigned deliveries)")
        return value


class SilenceSettings(StrictSettings):
    """Mute the notifications of alerts matching every given matcher (at least one) until ``until``."""

    fingerprint: str | None = None
    model: str | None = None
    detector: str | None = None
    until: datetime
    starts: datetime | None = None
    comment: str = ""

    @field_validator("until", "starts")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError("must be an RFC 3339 time with a zone, e.g. 2026-12-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _matchers(self) -> SilenceSettings:
        if self.fingerprint is None and self.model is None and self.detector is None:
            raise ValueError("a silence needs at least one of fingerprint, model, detector")
        if self.starts is not None and self.until <= self.starts:
            raise ValueError("until must be after starts")
        return self


class DeliverySettings(StrictSettings):
    """How the outbox is sent: per-attempt timeout, exponential backoff with jitter, and when to give up.

    The n-th retry waits ``min(backoff_max, backoff_initial * 2**(n-1))``, shortened by a random fraction
    of up to ``jitter`` so that many failed deliveries do not retry in lockstep. A delivery is given up
    when an attempt fails at or after ``max_age`` from its creation (the last attempt is made at that age).
    """

    timeout: Duration = 10.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    jitter: float = Field(0.2, ge=0, le=1)
    max_age: Duration = 86400.0
    poll_interval: Duration = 1.0
    batch_size: int = Field(20, ge=1, le=1000)
    # How long a claimed batch is reserved for its worker; default: enough for every attempt to time out.
    lease: Duration | None = None
    # Server-side request forgery guard: a webhook URL whose host resolves to an address that is not
    # globally routable (RFC 1918, loopback, link-local incl. 169.254.169.254, unique-local IPv6, unspecified,
    # CGNAT, reserved) is refused, at subscription time and again at each delivery, unless its address is in
    # `allowed_networks` or `allow_private_addresses` is true. Default: refused (the safe production choice).
    allow_private_addresses: bool = False
    allowed_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(ip_network(str(item), strict=False))
            except ValueError as exc:
                raise ValueError(
                    f"{item!r} is not a CIDR network such as 10.0.0.0/8 or fd00::/8 ({exc})"
                ) from None
        return networks

    @model_validator(mode="after")
    def _backoff_order(self) -> DeliverySettings:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(
                "backoff_initial must be at most backoff_max "
                f"(got {self.backoff_initial} and {self.backoff_max})"
            )
        return self

    @property
    def effective_lease(self) -> float:
        """The lease in seconds: as configured, or every attempt of a batch timing out plus 30 s."""
        return self.lease if self.lease is not None else self.timeout * self.batch_size + 30.0


class AlertingSettings(StrictSettings):
    """The alert lifecycle, its notifications and where they go."""

    enabled: bool = True
    resolve_after: int = Field(3, ge=1, le=1000)
    repeat_interval: Duration = 4 * 3600.0
    severity: SeverityBands = SeverityBands()
    # Per detector id: a partial override of `severity`, merged onto it.
    detector_severity: dict[str, SeverityBands] = Field(default_factory=dict)
    subscriptions: list[SubscriptionSettings] = Field(default_factory=list)
    silences: list[SilenceSettings] = Field(default_factory=list)
    delivery: DeliverySettings = DeliverySettings()
    kafka_topic: str | None = Field(None, min_length=1, max_length=249)
    # Seals subscription secrets at rest (storage.crypto): base64 of 32 random bytes, the same on every
    # replica. Unset: the key file beside a SQLite database; with PostgreSQL, secrets are refused.
    secret_key: SecretStr | None = None
    # Results the engine takes per transaction.
    batch_size: int = Field(500, ge=1, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _merge_severity(cls, data: Any) -> Any:
        # detector_severity.<id> overrides only the keys it names; the rest come from `severity`.
        if not isinstance(data, dict) or not isinstance(data.get("detector_severity"), dict):
            return data
        base = data.get("severity") or {}
        if isinstance(base, SeverityBands):
            base = base.model_dump(exclude_unset=True)
        if not isinstance(base, dict):
            return data
        merged = {}
        for detector_id, override in data["detector_severity"].items():
            if isinstance(override, dict):
                merged[detector_id] = {**base, **override}
            else:
                merged[detector_id] = override
        return {**data, "detector_severity": merged}

    @field_validator("secret_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_key(value.get_secret_value(), SECRET_KEY_SETTING)
            except SecretKeyError as exc:
                # The message names the setting and what is wrong, never the value.
                raise ValueError(str(exc).removeprefix(f"{SECRET_KEY_SETTING} ")) from None
        return value

    @field_validator("detector_severity")
    @classmethod
    def _severity_ids(cls, value: dict[str, SeverityBands]) -> dict[str, SeverityBands]:
        for detector_id in value:
            _known_detector(detector_id)
        return value

    @field_validator("subscriptions")
    @classmethod
    def _unique_names(cls, value: list[SubscriptionSettings]) -> list[SubscriptionSettings]:
        names = [s.name for s in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"subscription names must be unique (repeated: {', '.join(repeated)})")
        return value

    def bands(self, detector_id: str) -> SeverityBands:
        """The severity bands of one detector."""
        return self.detector_severity.get(detector_id, self.severity)
