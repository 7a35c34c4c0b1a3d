"""The Helm chart in helm/: it renders, lints, passes Kubernetes' own schemas, refuses bad values, and agrees
with the daemon (the ConfigMap and the Secret's SENTINEL_... variables load with Sentinel's config loader).

Rendering uses helm-python-sdk (Helm's Go library, no helm binary), the manifests are checked with
kubernetes-validate against the three newest Kubernetes minor versions it ships schemas for. Missing tooling
is a failure, not a skip: the chart would otherwise go untested without anyone noticing.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import posixpath
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from monitor.alerting.settings import AlertingSettings
from monitor.api.settings import ApiSettings
from monitor.config import AppConfig, KafkaSettings, load_config

CHART = Path(__file__).resolve().parent.parent / "helm"
PRODUCTION_VALUES = CHART / "examples" / "values-production.yaml"
RELEASE = "sentinel-test"
NAMESPACE = "ml-monitoring"
TOOLING = "helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"

# A password and tokens with the characters that break naive YAML parsing of environment values.
AWKWARD_PASSWORD = "#not-a-comment: [really] 00123"
READ_TOKEN = "read-0123"
ADMIN_TOKEN = "admin-4567"
WEBHOOK_SECRET = "wh-secret-89"

# Every optional part on: autoscaling, ServiceMonitor, NetworkPolicy with egress, Kafka TLS, every secret.
ALL_ON: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/sentinel"}},
    "podAnnotations": {"example.com/team": "ml-platform"},
    "priorityClassName": "monitoring",
    "config": {
        "kafka": {
            "bootstrap_servers": "kafka-0:9093,kafka-1:9093",
            "topic": "predictions",
            "group_id": "sentinel",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "sentinel",
        },
        "defaults": {"window": "5m", "detectors": {"feature_drift": {"correction": "fdr_bh"}}},
        "alerting": {"resolve_after": 2, "kafka_topic": "sentinel-alerts"},
        "api": {"allow_unauthenticated_remote": False},
    },
    "secrets": {
        "databaseUrl": "postgresql+psycopg://sentinel:pw@db:5432/sentinel",
        "kafkaSaslPassword": AWKWARD_PASSWORD,
        "apiReadTokens": [READ_TOKEN],
        "apiAdminTokens": [ADMIN_TOKEN],
        "alertSubscriptions": [
            {
                "name": "oncall",
                "url": "https://hooks.example.com/s",
                "secret": WEBHOOK_SECRET,
                "min_severity": "warning",
            }
        ],
    },
    "kafkaTls": {"caSecret": "kafka-ca", "caKey": "ca.crt"},
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "extraVolumes": [{"name": "references", "configMap": {"name": "sentinel-references"}}],
    "extraVolumeMounts": [{"name": "references", "mountPath": "/references", "readOnly": True}],
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
    },
}

# The objects every installation gets, and those only the optional parts add.
ALWAYS = {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "PodDisruptionBudget"}
OPTIONAL = {"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"}


def _tool(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"{package} is needed to test the Helm chart but cannot be imported ({exc}); "
            f"install the dev tooling: .venv/bin/pip install {TOOLING}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return _tool("helm_python", "helm-python-sdk")


@pytest.fixture(scope="module")
def kubernetes_validate() -> ModuleType:
    return _tool("kubernetes_validate", "kubernetes-validate")


def production_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return loaded


SCENARIOS = {"defaults": dict[str, Any](), "all-on": ALL_ON, "production": production_values()}


def loadable(scenario: str, tmp_path: Path) -> dict[str, Any]:
    """A scenario's values, with the production example's reference file (mounted in the pod) made real here:
    the loader checks that it exists."""
    values = copy.deepcopy(SCENARIOS[scenario])
    if scenario == "production":
        reference = tmp_path / "fraud-scorer.jsonl"
        reference.write_text("{}\n")
        values["config"]["models"]["fraud-scorer"]["reference"]["path"] = str(reference)
    return values


def render(helm: ModuleType, values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The chart's objects by kind (each kind appears at most once in this chart)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    objects: dict[str, dict[str, Any]] = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                assert document["kind"] not in objects, f"two objects of kind {document['kind']}"
                objects[document["kind"]] = document
    return objects


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [sentinel] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(sentinel)


def config_text(objects: dict[str, dict[str, Any]]) -> str:
    return str(objects["ConfigMap"]["data"]["config.yaml"])


def daemon_environment(
    objects: dict[str, dict[str, Any]], existing_secret: dict[str, str] | None = None
) -> dict[str, str]:
    """The SENTINEL_... variables the kubelet would give the container, from the rendered Secret (or from the
    given contents of an existing Secret)."""
    if existing_secret is None:
        data = objects["Secret"].get("data") or {}
        secret = {key: base64.b64decode(value).decode() for key, value in data.items()}
    else:
        secret = existing_secret
    environ: dict[str, str] = {}
    for variable in container(objects).get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        if ref["key"] in secret:
            environ[variable["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{variable['name']} needs {ref['key']}, which is missing"
    return environ


def load_rendered_config(
    objects: dict[str, dict[str, Any]], tmp_path: Path, existing_secret: dict[str, str] | None = None
) -> AppConfig:
    path = tmp_path / f"config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(config_text(objects))
    return load_config(path, environ=daemon_environment(objects, existing_secret))


def newest_kubernetes_versions(kubernetes_validate: ModuleType, count: int = 3) -> list[str]:
    minors = sorted(
        {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()},
        key=lambda v: tuple(int(p) for p in v.split(".")),
    )
    return minors[-count:]


# ServiceMonitor is a CRD of the Prometheus Operator, which kubernetes-validate has no schema for: it is
# checked against the fields this chart sets, as the operator's CRD (monitoring.coreos.com/v1) defines them.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$",
                            },
                        },
                    },
                },
            },
        },
    },
}


# ---------------------------------------------------------------------------------------------- rendering


def test_default_values_render_the_always_on_objects_only(helm: ModuleType) -> None:
    objects = render(helm)
    assert set(objects) == ALWAYS
    assert objects["Deployment"]["spec"]["replicas"] == 1


def test_every_optional_part_renders_when_switched_on(helm: ModuleType) -> None:
    objects = render(helm, ALL_ON)
    assert set(objects) == ALWAYS | OPTIONAL
    # The autoscaler owns the replica count; a fixed one would fight it on every upgrade.
    assert "replicas" not in objects["Deployment"]["spec"]
    assert (
        objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == objects["Deployment"]["metadata"]["name"]
    )
    endpoint = objects["ServiceMonitor"]["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert objects["ServiceMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert objects["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert mounts["references"] == "/references"
    assert "kafka-tls" in mounts


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_chart_lints_clean_in_strict_mode(helm: ModuleType, scenario: str) -> None:
    report = helm.lint(CHART, copy.deepcopy(SCENARIOS[scenario]), strict=True, namespace=NAMESPACE)
    # Severity 1 is informational ("icon is recommended"); strict mode fails on warnings (2) and errors (3).
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], (problems, report["errors"])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_passes_the_kubernetes_schemas_of_the_three_newest_versions(
    helm: ModuleType, kubernetes_validate: ModuleType, scenario: str
) -> None:
    import jsonschema

    objects = render(helm, SCENARIOS[scenario])
    versions = newest_kubernetes_versions(kubernetes_validate)
    assert len(versions) == 3
    failures = []
    for kind, document in objects.items():
        if kind == "ServiceMonitor":
            jsonschema.validate(document, SERVICE_MONITOR_SCHEMA)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{kind} on {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_a_manifest_with_a_misspelt_field_fails_the_strict_kubernetes_schema(
    kubernetes_validate: ModuleType, helm: ModuleType
) -> None:
    # The validation above is only worth something if strict mode catches what a typo in a template produces.
    deployment = render(helm)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {
        "httpGet": {"path": "/readyz"}
    }
    version = newest_kubernetes_versions(kubernetes_validate)[-1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


# ------------------------------------------------------------------------------------------------ values


def test_the_default_and_example_values_satisfy_the_schema(helm: ModuleType) -> None:
    with helm.Chart.load(CHART) as chart:
        for values in SCENARIOS.values():
            chart.validate_schema(copy.deepcopy(values))


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({"replicaCount": -1}, ["/replicaCount", "minimum", "got -1"]),
        ({"replicaCount": "three"}, ["/replicaCount", "got string, want integer"]),
        ({"replicas": 3}, ["additional properties 'replicas' not allowed"]),
        (
            {"image": {"repository": "sentinel", "pullPolicy": "Sometimes"}},
            ["/image/pullPolicy", "'IfNotPresent'"],
        ),
        ({"service": {"port": 70000}}, ["/service/port", "got 70,000, want 65,535"]),
        (
            {"config": {"kafka": {"bootstrap_servers": "k:9092", "security_protocol": "SASL_SSL"}}},
            ["/config/kafka", "missing properties 'sasl_mechanism', 'sasl_plain_username'"],
        ),
        (
            {"config": {"kafka": {"bootstrap_servers": "k:9092", "security_protocol": "TLS"}}},
            ["/config/kafka/security_protocol", "'SASL_SSL'"],
        ),
        # Secrets in the ConfigMap would be readable by anyone who may read ConfigMaps.
        (
            {"config": {"kafka": {"bootstrap_servers": "k:9092", "sasl_plain_password": "pw"}}},
            ["/config/kafka", "'sasl_plain_password' not allowed"],
        ),
        (
            {"config": {"kafka": {"bootstrap_servers": "k"}, "database_url": "sqlite://"}},
            ["'database_url' not allowed"],
        ),
        (
            {"secrets": {"databaseUrl": "mysql://db/sentinel"}},
            ["/secrets/databaseUrl", "does not match pattern"],
        ),
        (
            {"secrets": {"alertSubscriptions": [{"name": "oncall", "url": "ftp://x"}]}},
            ["/secrets/alertSubscriptions/0/url"],
        ),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None,
)
def test_invalid_values_are_refused_naming_the_key(
    helm: ModuleType, values: dict[str, Any], fragments: list[str]
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    for fragment in fragments:
        assert fragment in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [{"replicaCount": 3}, {"autoscaling": {"enabled": True}}],
    ids=["three replicas", "autoscaling"],
)
def test_several_replicas_without_postgresql_are_refused(helm: ModuleType, values: dict[str, Any]) -> None:
    # Each pod would keep its own SQLite file: alerts, offsets and deliveries would not be shared.
    with pytest.raises(helm.HelmError, match="need PostgreSQL"):
        render(helm, values)
    render(helm, {**values, "secrets": {"databaseUrl": "postgresql+psycopg://s:pw@db/sentinel"}})


# -------------------------------------------------------------------------------------------- deployment


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_pod_runs_non_root_on_a_read_only_root_filesystem(
    helm: ModuleType, scenario: str, tmp_path: Path
) -> None:
    objects = render(helm, SCENARIOS[scenario])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    sentinel = container(objects)
    security = sentinel["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0 and pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no SENTINEL_SERVICE_HOST & co. in the environment
    # Whatever writes on a read-only root filesystem has an emptyDir: /tmp, and SQLite's directory.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in sentinel["volumeMounts"] if m["name"] in empty_dirs}
    assert "/tmp" in writable
    sqlite_url = yaml.safe_load(config_text(objects))["database_url"]
    assert sqlite_url.startswith("sqlite:///")
    assert posixpath.dirname(sqlite_url.removeprefix("sqlite:///")) in writable


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_probes_hit_the_api_port_the_daemon_listens_on(
    helm: ModuleType, scenario: str, tmp_path: Path
) -> None:
    objects = render(helm, {**loadable(scenario, tmp_path), "containerPort": 9411})
    sentinel = container(objects)
    ports = {p["name"]: p["containerPort"] for p in sentinel["ports"]}
    assert sentinel["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sentinel["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sentinel["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[sentinel[probe]["httpGet"]["port"]] == 9411
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    # The daemon, given the rendered file, listens on every interface on that port.
    existing = {"database-url": "postgresql+psycopg://s:pw@db/sentinel", "api-read-tokens": "[t1]"}
    config = load_rendered_config(objects, tmp_path, existing if scenario == "production" else None)
    assert (config.api.host, config.api.port) == ("0.0.0.0", 9411)


def test_a_config_change_rolls_the_pods_and_an_unchanged_one_does_not(helm: ModuleType) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        return dict(render(helm, values)["Deployment"]["spec"]["template"]["metadata"]["annotations"])

    base = annotations({})
    assert annotations({}) == base
    changed = annotations({"config": {"kafka": {"bootstrap_servers": "other:9092"}}})
    assert changed["checksum/config"] != base["checksum/config"]
    rotated = annotations({"secrets": {"apiReadTokens": ["new-token"]}})
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert rotated["checksum/config"] == base["checksum/config"]


# ----------------------------------------------------------------------------------- chart and daemon agree


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_the_rendered_configuration_loads_with_sentinels_own_loader(
    helm: ModuleType, scenario: str, tmp_path: Path
) -> None:
    values = SCENARIOS[scenario]
    config = load_rendered_config(render(helm, values), tmp_path)
    kafka = values.get("config", {}).get("kafka", {"bootstrap_servers": "kafka:9092"})
    assert config.kafka.bootstrap_servers == kafka["bootstrap_servers"]
    assert config.kafka.security_protocol == kafka.get("security_protocol", "PLAINTEXT")
    assert config.log.json_lines is True
    if scenario == "defaults":
        assert config.database_url == "sqlite:////var/lib/sentinel/sentinel.db"
        assert not config.api.auth_enabled


def test_secret_values_reach_the_daemon_unchanged(helm: ModuleType, tmp_path: Path) -> None:
    # Environment values are parsed as YAML by the loader: a raw "#..." would be a comment, "00123" a number.
    objects = render(helm, ALL_ON)
    config = load_rendered_config(objects, tmp_path)
    assert config.database_url == ALL_ON["secrets"]["databaseUrl"]
    assert config.kafka.sasl_plain_password == AWKWARD_PASSWORD
    assert (config.kafka.sasl_mechanism, config.kafka.sasl_plain_username) == ("SCRAM-SHA-512", "sentinel")
    assert config.kafka.ssl_cafile == "/etc/sentinel/kafka-tls/ca.crt"
    assert (config.api.read_tokens, config.api.admin_tokens) == ([READ_TOKEN], [ADMIN_TOKEN])
    [subscription] = config.alerting.subscriptions
    assert subscription.secret is not None and subscription.secret.get_secret_value() == WEBHOOK_SECRET
    assert subscription.min_severity == "warning"
    # And none of it is in the ConfigMap.
    for secret in (AWKWARD_PASSWORD, READ_TOKEN, ADMIN_TOKEN, WEBHOOK_SECRET, "pw@db"):
        assert secret not in config_text(objects)


def test_the_production_example_loads_with_an_existing_secret_in_the_documented_format(
    helm: ModuleType, tmp_path: Path
) -> None:
    objects = render(helm, loadable("production", tmp_path))
    assert "Secret" not in objects
    assert objects["Deployment"]["spec"]["replicas"] == 3
    # The format docs/deployment.md gives for a Secret created with kubectl.
    existing = {
        "database-url": '"postgresql+psycopg://sentinel:p#ss@pg:5432/sentinel"',
        "kafka-sasl-password": '"s3cr3t: value"',
        "api-read-tokens": '["dash-1", "dash-2"]',
        "api-admin-tokens": '["ops-1"]',
        "alert-subscriptions": '[{"name": "oncall", "url": "https://hooks.example.com/x", "secret": "abc"}]',
    }
    config = load_rendered_config(objects, tmp_path, existing)
    assert config.database_url == "postgresql+psycopg://sentinel:p#ss@pg:5432/sentinel"
    assert config.kafka.security_protocol == "SASL_SSL"
    assert config.kafka.sasl_plain_password == "s3cr3t: value"
    assert config.kafka.ssl_cafile == "/etc/sentinel/kafka-tls/ca.crt"
    assert config.api.read_tokens == ["dash-1", "dash-2"]
    assert config.model_settings("fraud-scorer").window == 300.0
    assert [s.name for s in config.alerting.subscriptions] == ["oncall"]


def test_the_values_schema_knows_every_configuration_key_of_the_daemon(helm: ModuleType) -> None:
    # When the daemon gains a setting, the chart's schema must learn it too (or say who owns it).
    with helm.Chart.load(CHART) as chart:
        schema = chart.schema
    config = schema["properties"]["config"]["properties"]
    owned_by_secrets = {"database_url"}
    assert set(config) | owned_by_secrets == set(AppConfig.model_fields)
    kafka_secrets = {"sasl_plain_password", "ssl_password"}
    assert set(config["kafka"]["properties"]) | kafka_secrets == set(KafkaSettings.model_fields)
    alerting_secrets = {"subscriptions", "secret_key"}
    assert set(config["alerting"]["properties"]) | alerting_secrets == set(AlertingSettings.model_fields)
    # host and port follow containerPort, tokens come from the Secret, and the probes need the API on.
    chart_owned = {"host", "port", "read_tokens", "admin_tokens", "enabled"}
    assert set(config["api"]["properties"]) | chart_owned == set(ApiSettings.model_fields)


@pytest.mark.slow
@pytest.mark.kafka
def test_the_rendered_pod_configuration_runs_the_daemon(
    helm: ModuleType, broker: Any, tmp_path: Path
) -> None:
    from monitor.broker import create_topic, free_port
    from tests.daemon_process import DaemonProcess

    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 2)
    port = free_port()
    values = {
        "containerPort": port,
        "config": {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "group_id": topic}
        },
        "secrets": {
            "databaseUrl": f"sqlite:///{tmp_path / 'sentinel.db'}",
            "apiReadTokens": [READ_TOKEN],
            "apiAdminTokens": [ADMIN_TOKEN],
        },
    }
    objects = render(helm, values)
    sentinel = container(objects)
    assert sentinel["args"] == ["run", "--config", "/etc/sentinel/config.yaml"]
    daemon = DaemonProcess(yaml.safe_load(config_text(objects)), tmp_path, env=daemon_environment(objects))
    daemon.start()
    try:
        daemon.wait_for("assigned partitions", timeout=120)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/v1/alerts", timeout=5).status_code == 401
        authorised = httpx.get(
            f"{base}/v1/alerts", headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=5
        )
        assert authorised.status_code == 200
        assert daemon.terminate() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
    assert "Traceback" not in daemon.log
