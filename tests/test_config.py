"""Configuration: YAML + SENTINEL_ environment, environment winning, faults named by key path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from monitor.config import load_config, parse_duration
from monitor.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sentinel.yaml"
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


def test_defaults_need_no_file() -> None:
    config = load_config(environ={})
    assert config.database_url.startswith("sqlite:///")
    assert config.defaults.window == 60.0
    assert config.defaults.reference.source == "warmup"
    assert "vae_anomaly" in config.defaults.detectors


def test_model_override_merges_onto_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
defaults:
  window: 5m
  min_events: 50
  detectors:
    vae_anomaly: {quantile: 0.995}
models:
  fraud-scorer:
    window: 30s
    detectors:
      vae_anomaly: {alpha: 0.001}
""",
    )
    config = load_config(path, environ={})
    fraud = config.model_settings("fraud-scorer")
    assert fraud.window == 30.0
    assert fraud.min_events == 50  # inherited
    assert fraud.detectors["vae_anomaly"] == {"quantile": 0.995, "alpha": 0.001}
    assert config.model_settings("other").window == 300.0


def test_environment_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_servers: file:9092\n  topic: from-file\n")
    config = load_config(
        path,
        environ={
            "SENTINEL_KAFKA__BOOTSTRAP_SERVERS": "env:9092",
            "SENTINEL_DEFAULTS__MIN_EVENTS": "7",
            "SENTINEL_MODELS__Fraud.Model-2__WINDOW": "2m",
            "SENTINEL_REQUIRE_SERVICES": "1",  # reserved, not a config key
        },
    )
    assert config.kafka.bootstrap_servers == "env:9092"
    assert config.kafka.topic == "from-file"
    assert config.defaults.min_events == 7
    assert config.model_settings("Fraud.Model-2").window == 120.0


@pytest.mark.parametrize(
    ("yaml_text", "key", "fragment"),
    [
        ("kafka:\n  session_timeout_ms: soon\n", "kafka.session_timeout_ms", "valid integer"),
        ("kafka:\n  bootstrap: x\n", "kafka.bootstrap", "unknown key"),
        ("defaults:\n  window: -5m\n", "defaults.window", "duration"),
        ("models:\n  m1:\n    window: often\n", "models.m1.window", "duration"),
        ("models:\n  m1:\n    reference: {source: file}\n", "models.m1.reference", "needs 'path'"),
        ("models:\n  m1:\n    detectors: {nonsense: {}}\n", "models.m1.detectors", "nonsense: unknown"),
        ("models:\n  m1:\n    detectors: {vae_anomaly: {quantile: 7}}\n", "models.m1.detectors", "quantile"),
        ("models:\n  'bad id!': {}\n", "models", "must match"),
        ("database_url: mysql://x\n", "database_url", "sqlite"),
        ("kafka:\n  heartbeat_interval_ms: 5000\n", "kafka", "third of session_timeout_ms"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, yaml_text), environ={})
    found = problems(exc)
    assert key in found, found
    assert fragment in found[key], found
    assert key in str(exc.value)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("SENTINEL_KAFKA__MAX_POLL_RECORDS", "lots", "kafka.max_poll_records"),
        ("SENTINEL_DATABASE_URL", "mysql://x", "database_url"),
        ("SENTINEL_MODELS__Fraud.Model-2__WINDOW", "often", "models.Fraud.Model-2.window"),
        ("SENTINEL_DEFAULTS__REFERENCE__WARMUP_EVENTS", "3", "defaults.reference.warmup_events"),
    ],
)
def test_bad_environment_value_names_the_variable_and_the_key(variable: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(environ={variable: value})
    assert problems(exc)[variable].startswith(f"{key}: "), problems(exc)
    assert f"  {variable}: {key}: " in str(exc.value)


def test_a_section_check_names_the_variables_that_set_its_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"SENTINEL_DEFAULTS__DETECTORS__VAE_ANOMALY__QUANTILE": "7"})
    reason = problems(exc)["defaults.detectors"]
    assert "quantile" in reason and "SENTINEL_DEFAULTS__DETECTORS__VAE_ANOMALY__QUANTILE" in reason


# ------------------------------------------------------------------------- variables that name no setting


def service_links(service: str, cluster_ip: str, ports: list[tuple[str, int, str]]) -> dict[str, str]:
    """The variables a kubelet adds to every pod for one Service (Kubernetes' pkg/kubelet/envvars).

    ``ports`` are ``(name, port, protocol)``; the first port also gives ``<NAME>_SERVICE_PORT`` and
    ``<NAME>_PORT``.
    """
    prefix = service.upper().replace("-", "_")
    host_port = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    _, first_port, first_protocol = ports[0]
    links = {
        f"{prefix}_SERVICE_HOST": cluster_ip,
        f"{prefix}_SERVICE_PORT": str(first_port),
        f"{prefix}_PORT": f"{first_protocol.lower()}://{host_port}:{first_port}",
    }
    for name, port, protocol in ports:
        if name:
            links[f"{prefix}_SERVICE_PORT_{name.upper().replace('-', '_')}"] = str(port)
        port_prefix = f"{prefix}_PORT_{port}_{protocol}"
        links[port_prefix] = f"{protocol.lower()}://{host_port}:{port}"
        links[f"{port_prefix}_PROTO"] = protocol.lower()
        links[f"{port_prefix}_PORT"] = str(port)
        links[f"{port_prefix}_ADDR"] = cluster_ip
    return links


def test_the_service_links_of_the_chart_s_service_are_exactly_these() -> None:
    # `helm install sentinel ./helm` names the Service `sentinel`, with one port named http.
    assert service_links("sentinel", "10.96.0.10", [("http", 8080, "TCP")]) == {
        "SENTINEL_SERVICE_HOST": "10.96.0.10",
        "SENTINEL_SERVICE_PORT": "8080",
        "SENTINEL_SERVICE_PORT_HTTP": "8080",
        "SENTINEL_PORT": "tcp://10.96.0.10:8080",
        "SENTINEL_PORT_8080_TCP": "tcp://10.96.0.10:8080",
        "SENTINEL_PORT_8080_TCP_PROTO": "tcp",
        "SENTINEL_PORT_8080_TCP_PORT": "8080",
        "SENTINEL_PORT_8080_TCP_ADDR": "10.96.0.10",
    }


@pytest.mark.parametrize(
    "links",
    [
        service_links("sentinel", "10.96.0.10", [("http", 8080, "TCP")]),
        service_links("sentinel", "10.96.0.11", [("", 80, "TCP")]),  # an unnamed port
        service_links("sentinel-api", "10.96.0.12", [("http", 8080, "TCP"), ("grpc-web", 9090, "TCP")]),
        service_links("sentinel-metrics", "fd00::1", [("metrics", 9100, "TCP"), ("dns", 53, "UDP")]),
        service_links("sentinel-kafka", "10.96.0.13", [("sctp-x", 3868, "SCTP")]),
    ],
    ids=["sentinel", "unnamed-port", "sentinel-api", "ipv6-udp", "sctp"],
)
def test_service_links_are_ignored_silently(links: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    config = load_config(environ={**links, "SENTINEL_KAFKA__TOPIC": "logs"})
    assert config.kafka.topic == "logs"
    assert config.api.port == 8080
    assert not caplog.records, caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("SENTINEL_KAFKA_BOOTSTRAP_SERVERS", "broker:9092", "SENTINEL_KAFKA__BOOTSTRAP_SERVERS"),
        ("SENTINEL_PORT", "9090", "SENTINEL_API__PORT"),  # not a kubelet's value: someone meant a setting
        ("SENTINEL_MODELS__fraud__WINDOWS", "5m", "SENTINEL_MODELS__fraud__WINDOW"),
        ("SENTINEL_DEFAULTS__REFERENCE__SOURCES", "file", "SENTINEL_DEFAULTS__REFERENCE__SOURCE"),
        ("SENTINEL_SOMETHING_ELSE", "1", None),
        ("SENTINEL_", "1", None),
    ],
)
def test_a_variable_that_names_no_setting_warns_once_and_is_ignored(
    variable: str, value: str, hint: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = load_config(environ={variable: value})
    assert config == load_config(environ={})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and variable in warnings[0], warnings
    if hint is None:
        assert "did you mean" not in warnings[0]
    else:
        assert f"did you mean {hint}?" in warnings[0]


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a list\n"), environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (300, 300.0),
        ("45", 45.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2d", 172800.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", 0, True, None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_naming_one_detector_keeps_the_others_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  m1:\n    detectors:\n      vae_anomaly: {quantile: 0.995}\n      performance: false\n",
    )
    settings = load_config(path, environ={}).model_settings("m1")
    assert "feature_drift" in settings.enabled_detectors
    assert "performance" not in settings.enabled_detectors
    assert settings.detectors["vae_anomaly"] == {"quantile": 0.995}


@pytest.mark.parametrize(
    "password", ["#not-a-comment", "00123", "a: b", "[x", "null-ish", "true!", " spaced "]
)
def test_environment_strings_arrive_as_given(password: str) -> None:
    # Secrets come from the environment (Kubernetes Secrets); read as YAML, "#x" would be a comment (None),
    # "00123" the number 123 and "a: b" a mapping.
    config = load_config(
        environ={
            "SENTINEL_KAFKA__SASL_PLAIN_PASSWORD": password,
            "SENTINEL_KAFKA__SESSION_TIMEOUT_MS": "9000",  # typed fields still take their values
            "SENTINEL_API__READ_TOKENS": "[t1, t2]",
            "SENTINEL_DATABASE_URL": '"sqlite:///quoted.db"',
        }
    )
    assert config.kafka.sasl_plain_password == password
    assert config.kafka.session_timeout_ms == 9000
    assert config.api.read_tokens == ["t1", "t2"]
    assert config.database_url == "sqlite:///quoted.db"


def test_kafka_security_settings_reach_the_client_and_sasl_needs_credentials() -> None:
    from monitor.intake.kafka_consumer import consumer_options

    config = load_config(
        environ={
            "SENTINEL_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "SENTINEL_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "SENTINEL_KAFKA__SASL_PLAIN_USERNAME": "sentinel",
            "SENTINEL_KAFKA__SASL_PLAIN_PASSWORD": "pw",
            "SENTINEL_KAFKA__SSL_CAFILE": "/etc/kafka/ca.pem",
            "SENTINEL_KAFKA__SSL_CERTFILE": "/etc/kafka/client.pem",
            "SENTINEL_KAFKA__SSL_KEYFILE": "/etc/kafka/client.key",
        }
    )
    options = consumer_options(config.kafka)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["ssl_certfile"], options["ssl_keyfile"], options["ssl_check_hostname"]) == (
        "/etc/kafka/client.pem",
        "/etc/kafka/client.key",
        True,
    )
    assert "pw" not in repr(config.kafka)
    with pytest.raises(ConfigError, match=r"kafka: .*needs sasl_mechanism and sasl_plain_username"):
        load_config(environ={"SENTINEL_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
