"""Configuration: one YAML file plus ``SENTINEL_…`` environment variables, environment winning.

Validated once at start. Every fault is reported with the key's dotted path and the reason, e.g.::

    invalid configuration:
      models.fraud-scorer.window: must be a positive duration such as '60s', '5m' or 300 (got '-1m')

Environment variables map onto keys with ``__`` as the nesting separator and values parsed as YAML
scalars: ``SENTINEL_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``SENTINEL_DEFAULTS__WINDOW=5m``. A bad value
from one is reported under the variable's name (``SENTINEL_DEFAULTS__WINDOW: defaults.window: …``); a
variable that names no setting, such as a Kubernetes service link, is ignored (:mod:`monitor.settings_env`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from detectors.registry import DETECTORS, check_detector_id, create_detector
from monitor.alerting.settings import AlertingSettings
from monitor.api.settings import ApiSettings
from monitor.errors import ConfigError
from monitor.intake.parsing import MODEL_ID
from monitor.settings_base import Duration, StrictSettings, parse_duration
from monitor.settings_env import EnvironmentSettings, read_environment

# Every detector id that works on the logged events alone.
DEFAULT_DETECTORS = (
    "vae_anomaly",
    "latent_drift",
    "feature_drift",
    "output_drift",
    "label_drift",
    "performance",
    "label_consistency",
    "group_outcome",
    "backdoor",
    "evasion",
    "extraction",
    "probing",
)
# Validation context key: False skips building each configured detector to check its parameters.
CHECK_DETECTOR_PARAMS = "check_detector_params"
# Detectors that run a VAE of their own on the inputs: it gets vae_anomaly's network settings.
VAE_USERS = ("backdoor", "evasion")


def _default_detectors() -> dict[str, dict[str, Any] | bool | None]:
    return {name: {} for name in DEFAULT_DETECTORS if name in DETECTORS}


class KafkaSettings(StrictSettings):
    """Where the prediction logs come from."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "predictions"
    group_id: str = "sentinel"
    client_id: str = "sentinel"
    dead_letter_topic: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # kafka-python's defaults left a group join hanging against some brokers; these are set explicitly.
    session_timeout_ms: int = Field(6000, ge=1000, le=300_000)
    heartbeat_interval_ms: int = Field(1000, ge=100, le=60_000)
    max_poll_interval_ms: int = Field(60_000, ge=1000, le=3_600_000)
    max_poll_records: int = Field(2000, ge=1, le=100_000)
    max_message_bytes: int = Field(1_048_576, ge=1024, le=100 * 1_048_576)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = Field(None, repr=False)
    ssl_cafile: str | None = None
    # Mutual TLS: the client's certificate and key (PEM files), and the key's password if it has one.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = Field(None, repr=False)
    ssl_check_hostname: bool = True
    # How long one connection attempt waits for the brokers before the daemon's own backoff takes over.
    bootstrap_timeout: Duration = 10.0
    retry_backoff_initial: Duration = 0.5
    retry_backoff_max: Duration = 30.0

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        credentials = self.sasl_mechanism and self.sasl_plain_username
        if self.security_protocol.startswith("SASL_") and not credentials:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism and sasl_plain_username"
            )
        return self

    def security_options(self) -> dict[str, Any]:
        """kafka-python's connection security arguments, shared by the consumer and the alerts producer."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            options["sasl_plain_password"] = self.sasl_plain_password
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
                if getattr(self, name):
                    options[name] = getattr(self, name)
        return options

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"(got {self.heartbeat_interval_ms} and {self.session_timeout_ms})"
            )
        return self


class ReferenceSettings(StrictSettings):
    """Where a model's reference (what normal looks like) comes from."""

    source: Literal["warmup", "file"] = "warmup"
    path: Path | None = None
    warmup_events: int = Field(1000, ge=50, le=1_000_000)

    @model_validator(mode="after")
    def _file_needs_path(self) -> ReferenceSettings:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs 'path' (a JSONL file of events)")
        if self.path is not None and self.source == "file" and not self.path.is_file():
            raise ValueError(f"reference file {str(self.path)!r} does not exist")
        return self


class Persistence(StrictSettings):
    """Alert only when ``k`` of a detector's last ``n`` tested windows fail (Prometheus' ``for:``)."""

    k: int = Field(2, ge=1)
    n: int = Field(3, ge=1, le=100)

    @model_validator(mode="after")
    def _k_at_most_n(self) -> Persistence:
        if self.k > self.n:
            raise ValueError(f"k must be at most n (got k={self.k}, n={self.n})")
        return self


class ModelSettings(StrictSettings):
    """Per-model settings; ``defaults`` holds them for every model, ``models.<id>`` overrides."""

    window: Duration = 60.0
    allowed_lateness: float = Field(10.0, ge=0)
    min_events: int = Field(30, ge=1)
    max_window_sample: int = Field(10_000, ge=100)
    top_anomalies: int = Field(20, ge=0, le=1000)
    max_future_skew: Duration = 3600.0
    reference: ReferenceSettings = ReferenceSettings()
    # The per-window false-alarm budget of the model, split evenly across its detectors (Bonferroni), unless a
    # detector's own `alpha` is set. With persistence this keeps a clean stream near one alert a day.
    significance: float = Field(0.01, gt=0, lt=0.5)
    persistence: Persistence = Persistence()
    # Evidence this strong alerts at once, whatever the persistence rule says.
    immediate_p: float = Field(1e-6, ge=0, lt=0.5)
    # Detector id -> parameters; `false` switches a detector off (e.g. one enabled in `defaults`).
    detectors: dict[str, dict[str, Any] | bool | None] = Field(default_factory=lambda: _default_detectors())

    @field_validator("allowed_lateness", mode="before")
    @classmethod
    def _lateness(cls, value: Any) -> float:
        if value in (0, "0", 0.0):
            return 0.0
        return parse_duration(value)

    @field_validator("detectors", mode="before")
    @classmethod
    def _on_top_of_defaults(cls, value: Any) -> Any:
        # Every default detector is on unless switched off with `false`: naming one detector to tune it must
        # not silently switch the others off.
        if isinstance(value, dict):
            return {**_default_detectors(), **value}
        return value

    @field_validator("detectors")
    @classmethod
    def _detectors_exist(
        cls, value: dict[str, dict[str, Any] | bool | None], info: ValidationInfo
    ) -> dict[str, dict[str, Any] | bool | None]:
        check_params = (info.context or {}).get(CHECK_DETECTOR_PARAMS, True)
        for detector_id, params in value.items():
            if params is False:
                continue
            # Building the detector checks every parameter with the detector's own rules. It imports the
            # detector (torch, scipy), so a command that runs none checks only the id (see load_config).
            try:
                check_detector_id(detector_id)
                if check_params and isinstance(params, dict) and params:
                    create_detector(detector_id, params)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{detector_id}: {exc}") from exc
        return value

    @property
    def enabled_detectors(self) -> list[str]:
        return [name for name, params in self.detectors.items() if params is not False]

    def detector_params(self, detector_id: str) -> dict[str, Any]:
        """The detector's parameters, with its share of the significance budget as ``alpha`` unless set."""
        raw = self.detectors.get(detector_id)
        params = dict(raw) if isinstance(raw, dict) else {}
        params.setdefault("alpha", self.significance / max(1, len(self.enabled_detectors)))
        if detector_id in VAE_USERS and "vae" not in params:
            vae = self.detectors.get("vae_anomaly")
            # The network and its training, not vae_anomaly's decision rule (alpha, quantile).
            network = vae.items() if isinstance(vae, dict) else ()
            params["vae"] = {k: v for k, v in network if k not in ("alpha", "quantile")}
        return params

    def params_hash(self, detector_id: str) -> str:
        """A stable hash of one detector's parameters: fitted state is reused only for equal hashes."""
        blob = json.dumps(self.detector_params(detector_id), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


class LogSettings(StrictSettings):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False


class RetentionSettings(StrictSettings):
    """How long stored history is kept; ``null`` keeps it forever. A job deletes older rows in batches."""

    enabled: bool = True
    windows: Duration | None = 90 * 86400.0  # with their results, events and anomalies
    dead_letters: Duration | None = 30 * 86400.0
    resolved_alerts: Duration | None = 365 * 86400.0  # with their deliveries and attempts
    interval: Duration = 3600.0  # between runs of the job
    batch: int = Field(1000, ge=1, le=100_000)  # rows per transaction


class AppConfig(StrictSettings):
    """The whole configuration of one daemon."""

    database_url: str = "sqlite:///sentinel.db"
    kafka: KafkaSettings = KafkaSettings()
    log: LogSettings = LogSettings()
    defaults: ModelSettings = ModelSettings()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    unknown_models: Literal["monitor", "dead_letter"] = "monitor"
    tick_interval: Duration = 1.0
    close_on_wall_clock: bool = True
    db_retry_initial: Duration = 0.5
    db_retry_max: Duration = 30.0
    alerting: AlertingSettings = AlertingSettings()
    api: ApiSettings = ApiSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="before")
    @classmethod
    def _merge_model_overrides(cls, data: Any) -> Any:
        # Each models.<id> entry is a partial override of `defaults`, deep-merged before validation so that
        # errors still name models.<id>.<key>.
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return data
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            return data
        merged = {}
        for name, override in data["models"].items():
            if not isinstance(override, dict | None):
                merged[name] = override
                continue
            merged[name] = _deep_merge(defaults, override or {})
        return {**data, "models": merged}

    @field_validator("models")
    @classmethod
    def _model_ids(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name in value:
            if not MODEL_ID.match(name):
                raise ValueError(f"model id {name!r} must match [A-Za-z0-9._-]{{1,128}}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                f"must be a sqlite:/// or postgresql+psycopg:// URL (got {redact_url(value)!r})"
            )
        return value

    def model_settings(self, model: str) -> ModelSettings:
        """The settings of one model: its override, or the defaults."""
        return self.models.get(model, self.defaults)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (safe to print or log)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check_detector_params: bool = True,
) -> AppConfig:
    """Read, merge and validate the configuration; raise :class:`ConfigError` naming every bad key.

    ``check_detector_params=False`` checks detector ids but not their parameters, which takes building
    each detector (importing torch and scipy): for commands that run no detector, such as ``sentinel
    alerts``. Commands that run detectors keep the check, so a bad parameter fails at start.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = path if path is not None else environ.get("SENTINEL_CONFIG")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([("--config", f"cannot read {str(path)!r}: {exc.strerror}")]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([("--config", f"{str(path)!r} is not valid YAML: {exc}")]) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([("--config", f"{str(path)!r} must hold a mapping at the top level")])
        data = loaded or {}
    environment = read_environment(AppConfig, environ)
    data = _deep_merge(data, environment.tree)
    try:
        return AppConfig.model_validate(data, context={CHECK_DETECTOR_PARAMS: check_detector_params})
    except ValidationError as exc:
        raise ConfigError([_describe(error, environment) for error in exc.errors()]) from None


def _describe(error: Any, environment: EnvironmentSettings) -> tuple[str, str]:
    """``(where, reason)`` for one refused key: a value from the environment is named by its variable."""
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join(loc) or "(top level)"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {error['input']!r})"
    if (variable := environment.variable_at(loc)) is not None:
        return variable, f"{path}: {message}"
    if below := environment.variables_below(loc):
        # A check across a section's keys, some of which the environment set.
        return path, f"{message} (environment: {', '.join(below)})"
    return path, message
