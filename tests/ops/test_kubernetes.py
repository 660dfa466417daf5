"""The Kubernetes package (deploy/kubernetes): every overlay renders with `kubectl kustomize`, every
object validates offline (kubernetes-validate for the core kinds, the Prometheus Operator's v1 fields
below for its CRDs), and the rendered objects say what the README promises: security context,
probes, configuration, credentials, rules and dashboards from config/, network policy, HA."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from exporter.settings import Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
COMPONENTS = ("prometheus-operator", "grafana-dashboards", "ha", "network-policy")
OVERLAYS = ("demo", "production")
# The oldest Kubernetes minor still commonly run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SECRET = "alpaca-exporter-credentials"
CREDENTIALS = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")
LEADER_ELECTION_LABEL = "alpaca-exporter/leader-election"
Object = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: these tests render deploy/kubernetes with `kubectl kustomize`")
    return path


def kustomize(directory: Path) -> list[Object]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [document for document in yaml.safe_load_all(done.stdout) if document]


def compose(directory: Path, components: Iterable[str], namespace: str = "exporter") -> list[Object]:
    """Render the base with the given components, as an overlay of the user's would."""
    directory.mkdir(parents=True)
    # kustomize takes only relative paths to other kustomizations.
    relative = Path(os.path.relpath(KUBERNETES, directory))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": [str(relative / "base")],
        "components": [str(relative / "components" / name) for name in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(directory)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    """The overlays, the bare base, and the base with every component (the only place `ha` is used)."""
    result = {name: kustomize(KUBERNETES / "overlays" / name) for name in OVERLAYS}
    result["base"] = kustomize(KUBERNETES / "base")
    result["everything"] = compose(tmp_path_factory.mktemp("kustomize") / "everything", COMPONENTS)
    return result


def find(objects: list[Object], kind: str, name: str | None = None) -> list[Object]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Object], kind: str, name: str | None = None) -> Object:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: list[Object]) -> Object:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Object = containers[0]
    return result


def config_map_data(objects: list[Object]) -> dict[str, str]:
    """The ConfigMap the Deployment's envFrom names (its name carries kustomize's content hash)."""
    (source,) = container(objects)["envFrom"]
    data: dict[str, str] = one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    return data


def selects(selector: Object, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are handled here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pod_labels(objects: list[Object]) -> dict[str, str]:
    labels: dict[str, str] = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


# --- schema validation ----------------------------------------------------------------------------

# The Prometheus Operator's v1 CRDs (monitoring.coreos.com_servicemonitors.yaml and
# monitoring.coreos.com_prometheusrules.yaml of prometheus-operator 0.8x), transcribed for the fields
# a ServiceMonitor endpoint and a PrometheusRule can hold: allowed keys, required keys, types,
# patterns. The API server prunes unknown fields of a custom resource silently, so a misspelt field
# would vanish without an error: here every unknown key fails.
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array", "items": {"type": "object"}}},
    "additionalProperties": False,
}
ENDPOINT_FIELDS = {
    "port": {"type": "string"},
    "targetPort": {"type": ["string", "integer"]},
    "path": {"type": "string"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": {"type": "object"},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"},
    "enableHttp2": {"type": "boolean"},
    "followRedirects": {"type": "boolean"},
    "filterRunning": {"type": "boolean"},
    "relabelings": {"type": "array"},
    "metricRelabelings": {"type": "array"},
    "tlsConfig": {"type": "object"},
    "authorization": {"type": "object"},
    "basicAuth": {"type": "object"},
    "oauth2": {"type": "object"},
    "bearerTokenFile": {"type": "string"},
    "bearerTokenSecret": {"type": "object"},
    "proxyUrl": {"type": "string"},
    "noProxy": {"type": "string"},
    "proxyFromEnvironment": {"type": "boolean"},
    "proxyConnectHeader": {"type": "object"},
}
SERVICE_MONITOR_SPEC_FIELDS = {
    "endpoints": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "properties": ENDPOINT_FIELDS, "additionalProperties": False},
    },
    "selector": LABEL_SELECTOR,
    "namespaceSelector": {
        "type": "object",
        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
        "additionalProperties": False,
    },
    "jobLabel": {"type": "string"},
    "targetLabels": {"type": "array", "items": {"type": "string"}},
    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
    "attachMetadata": {"type": "object"},
    "sampleLimit": {"type": "integer"},
    "targetLimit": {"type": "integer"},
    "labelLimit": {"type": "integer"},
    "labelNameLengthLimit": {"type": "integer"},
    "labelValueLengthLimit": {"type": "integer"},
    "keepDroppedTargets": {"type": "integer"},
    "bodySizeLimit": {"type": "string"},
    "scrapeClass": {"type": "string", "minLength": 1},
    "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
    "fallbackScrapeProtocol": {"type": "string"},
    "scrapeClassicHistograms": {"type": "boolean"},
    "convertClassicHistogramsToNHCB": {"type": "boolean"},
    "nativeHistogramBucketLimit": {"type": "integer"},
    "nativeHistogramMinBucketFactor": {"type": ["string", "integer"]},
    "selectorMechanism": {"enum": ["RelabelConfig", "RoleSelector"]},
}
RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": ["string", "integer"]},
        "for": DURATION,
        "keep_firing_for": {**DURATION, "minLength": 1},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
    # "Only one of `record` and `alert` must be set."
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
RULE_GROUP = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "interval": DURATION,
        "query_offset": DURATION,
        "limit": {"type": "integer"},
        "labels": STRING_MAP,
        "partial_response_strategy": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
        "rules": {"type": "array", "items": RULE},
    },
    "additionalProperties": False,
}


def custom_resource(kind: str, spec: Object) -> Object:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


OPERATOR_SCHEMAS = {
    "ServiceMonitor": custom_resource(
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["endpoints", "selector"],
            "properties": SERVICE_MONITOR_SPEC_FIELDS,
            "additionalProperties": False,
        },
    ),
    "PrometheusRule": custom_resource(
        "PrometheusRule",
        {
            "type": "object",
            "properties": {"groups": {"type": "array", "items": RULE_GROUP}},
            "additionalProperties": False,
        },
    ),
}


def validate(document: Object) -> list[str]:
    """Problems of one rendered object against its schema, one line each ([] when valid)."""
    if document["apiVersion"].startswith("monitoring.coreos.com/"):
        schema = OPERATOR_SCHEMAS.get(document["kind"])
        if schema is None:
            return [f"{document['kind']}: no schema transcribed for this kind of the Prometheus Operator"]
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"Kubernetes {version}: {exc}")
    return problems


# --- every overlay renders, every object validates ------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders(rendered: dict[str, list[Object]], overlay: str) -> None:
    objects = rendered[overlay]
    namespace = one(objects, "Namespace")["metadata"]["name"]
    for document in objects:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == namespace, document["metadata"]["name"]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    one(objects, "Service")
    one(objects, "ServiceAccount")


@pytest.mark.parametrize("build", [*OVERLAYS, "everything"])
def test_every_object_validates_against_its_schema(rendered: dict[str, list[Object]], build: str) -> None:
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in rendered[build]}
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_validation_catches_mistakes(rendered: dict[str, list[Object]]) -> None:
    deployment = copy.deepcopy(one(rendered["production"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt
    assert validate(deployment)
    deployment = copy.deepcopy(one(rendered["production"], "Deployment"))
    deployment["spec"]["replicas"] = "one"
    assert validate(deployment)
    monitor = copy.deepcopy(one(rendered["production"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # the operator calls it `interval`
    assert validate(monitor)
    monitor = copy.deepcopy(one(rendered["production"], "ServiceMonitor"))
    del monitor["spec"]["selector"]
    assert validate(monitor)
    rule = copy.deepcopy(one(rendered["production"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    assert validate(rule)
    rule = copy.deepcopy(one(rendered["production"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["record"] = "both:alert:and_record"
    assert validate(rule)


# --- the base: one locked-down replica ------------------------------------------------------------


def test_base_runs_unprivileged_on_a_read_only_filesystem(rendered: dict[str, list[Object]]) -> None:
    for build in ("base", *OVERLAYS):
        objects = rendered[build]
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = container(objects)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "volumes" not in pod, "the daemon writes nothing: no writable volume either"


def test_base_mounts_no_service_account_token(rendered: dict[str, list[Object]]) -> None:
    for build in ("base", *OVERLAYS):
        objects = rendered[build]
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
        assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
        assert not find(objects, "Role")
        assert not find(objects, "RoleBinding")


def test_probes_use_healthz_and_readyz(rendered: dict[str, list[Object]]) -> None:
    exporter = container(rendered["base"])
    ports = {port["name"]: port["containerPort"] for port in exporter["ports"]}
    assert ports == {"http": 9877}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert exporter[probe]["httpGet"] == {"path": path, "port": "http"}, probe


def test_resources_are_requested(rendered: dict[str, list[Object]]) -> None:
    resources = container(rendered["base"])["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_service_reaches_the_pods_and_keeps_not_ready_ones(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["base"]
    service = one(objects, "Service")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(objects))
    (port,) = service["spec"]["ports"]
    assert port["port"] == 9877
    assert port["targetPort"] in {p["name"] for p in container(objects)["ports"]}
    assert service["spec"]["publishNotReadyAddresses"] is True


# --- configuration --------------------------------------------------------------------------------

# Required by `run`, no default: the base has a placeholder, the production overlay its own list.
REQUIRED = {"EXPORTER_SYMBOLS"}


def readme_configuration() -> dict[str, str | None]:
    """EXPORTER_* variable -> documented default (None where the README gives no plain value)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str | None] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or "`EXPORTER_" not in cells[0]:
            continue
        names = re.findall(r"`(EXPORTER_[A-Z_]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        plain = len(defaults) == len(names) and re.fullmatch(r"(`[^`]*`(, )?)+", cells[1]) is not None
        for index, name in enumerate(names):
            documented[name] = defaults[index] if plain else None
    return documented


def test_readme_table_is_parsed() -> None:
    documented = readme_configuration()
    # Every variable the daemon reads is in the README's table (tests/test_readme.py), so all of them here.
    assert set(documented) == {env_name(field) for field in Settings.model_fields} - set(CREDENTIALS)
    assert documented["EXPORTER_PORT"] == "9877"
    assert documented["EXPORTER_HOST"] == "0.0.0.0"
    assert documented["EXPORTER_SYMBOLS"] is None
    assert documented["EXPORTER_MAX_MESSAGE_AGE_SECONDS"] is None


def test_config_map_carries_every_documented_variable(rendered: dict[str, list[Object]]) -> None:
    data = config_map_data(rendered["base"])
    env_file = (KUBERNETES / "base" / "exporter.env").read_text()
    for name, default in readme_configuration().items():
        if name in REQUIRED:
            assert data.get(name), f"{name} is required and missing"
        elif default is None:
            # Derived or unset by default ("derived from the feed", "unset"): a value would override
            # the derivation, so the variable is only explained.
            assert name not in data, f"{name} would override its derived default"
            assert re.search(rf"^# {name} ", env_file, flags=re.MULTILINE), f"exporter.env should explain {name}"
        else:
            assert data.get(name) == default, f"{name}: {data.get(name)!r}, README default {default!r}"


@pytest.mark.parametrize("build", [*OVERLAYS, "everything"])
def test_config_map_is_a_valid_configuration(
    rendered: dict[str, list[Object]], build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("EXPORTER_", "APCA_")):
            monkeypatch.delenv(name)
    for name, value in config_map_data(rendered[build]).items():
        monkeypatch.setenv(name, value)
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "placeholder")
    # Kubernetes sets these in every pod; leader election (`ha`) finds the API server through them.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    settings = load_settings(for_run=True, env_file=None)
    assert settings.port == 9877


# --- credentials ----------------------------------------------------------------------------------


def secret_references(objects: list[Object]) -> list[Object]:
    exporter = container(objects)
    refs = [e["valueFrom"]["secretKeyRef"] for e in exporter.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    refs += [s["secretRef"] for s in exporter.get("envFrom", []) if "secretRef" in s]
    return refs


def test_production_reads_the_credentials_from_the_secret(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["production"]
    exporter = container(objects)
    assert exporter["args"] == ["run"]
    by_name = {e["name"]: e for e in exporter["env"]}
    for key in CREDENTIALS:
        assert by_name[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
    assert len(secret_references(objects)) == len(CREDENTIALS)
    # The Secret is the user's: no credentials, not even placeholders, live in the repository.
    assert not find(objects, "Secret")
    assert not set(CREDENTIALS) & set(config_map_data(objects))
    assert config_map_data(objects)["EXPORTER_SYMBOLS"] != "SPY", "production sets its own symbols"


def test_demo_runs_demo_without_credentials(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["demo"]
    exporter = container(objects)
    assert exporter["args"] == ["demo"]
    assert secret_references(objects) == []
    assert not {e["name"] for e in exporter.get("env", [])} & set(CREDENTIALS)
    assert not find(objects, "Secret")
    assert SECRET not in json.dumps(objects)


# --- generated from config/ -----------------------------------------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_kubernetes_generate", KUBERNETES / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date() -> None:
    drifted = generator().drifted()
    assert drifted == [], "run .venv/bin/python deploy/kubernetes/generate.py: " + ", ".join(map(str, drifted))


def test_generated_files_say_so() -> None:
    for path in generator().render():
        assert "do not edit" in path.read_text().splitlines()[0], path


def test_prometheus_rule_holds_the_rule_files(rendered: dict[str, list[Object]]) -> None:
    groups = [
        group
        for name in ("alerts.yml", "recording_rules.yml")
        for group in yaml.safe_load((REPO / "config" / name).read_text())["groups"]
    ]
    rule = one(rendered["production"], "PrometheusRule")
    # Whole groups compared: names, intervals, every rule's alert/record, expr, for, labels, annotations.
    assert rule["spec"]["groups"] == groups


def test_service_monitor_scrapes_the_service_as_the_rules_job(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["production"]
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # config/alerts.yml selects job="alpaca-exporter"; jobLabel makes it so whatever the Service's name.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "alpaca-exporter"
    assert 'job="alpaca-exporter"' in (REPO / "config" / "alerts.yml").read_text()


def test_dashboard_config_maps_carry_every_dashboard(rendered: dict[str, list[Object]]) -> None:
    maps = [m for m in find(rendered["production"], "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    carried = {key: value for m in maps for key, value in m["data"].items()}
    sources = sorted((REPO / "config" / "grafana" / "dashboards").glob("*.json"))
    assert len(sources) >= 4
    assert carried == {f"alpaca-exporter-{path.name}": path.read_text() for path in sources}
    for text in carried.values():
        json.loads(text)


# --- network policy -------------------------------------------------------------------------------


def allowed_ports(objects: list[Object], direction: str) -> set[tuple[str, int]]:
    """(protocol, port) pairs the NetworkPolicies allow the exporter's pods in one direction."""
    labels = pod_labels(objects)
    allowed = set()
    for policy in find(objects, "NetworkPolicy"):
        spec = policy["spec"]
        if not selects(spec["podSelector"], labels):
            continue
        assert direction.capitalize() in spec["policyTypes"]
        for rule in spec.get(direction, []):
            allowed |= {(port.get("protocol", "TCP"), port["port"]) for port in rule["ports"]}
    return allowed


def test_network_policy_allows_scrapes_dns_and_https(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["production"]
    assert allowed_ports(objects, "ingress") == {("TCP", 9877)}
    # DNS, then Alpaca and Yahoo (both HTTPS); nothing else, so no API server without `ha`.
    assert allowed_ports(objects, "egress") == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_network_policy_lets_ha_reach_the_api_server(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["everything"]
    assert pod_labels(objects)[LEADER_ELECTION_LABEL] == "kubernetes"
    assert allowed_ports(objects, "egress") == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}


# --- the ha component -----------------------------------------------------------------------------


def test_ha_runs_two_replicas_with_leader_election(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["everything"]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # Never two pods on the key's single connection: no rolling update, even with leader election.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    data = config_map_data(objects)
    assert data["EXPORTER_LEADER_ELECTION"] == "kubernetes"
    assert config_map_data(rendered["production"])["EXPORTER_LEADER_ELECTION"] == "off"
    # CONTRACT section 13's defaults.
    assert data["EXPORTER_LEADER_ELECTION_LEASE_NAME"] == "alpaca-exporter"
    assert data["EXPORTER_LEADER_ELECTION_LEASE_SECONDS"] == "15"
    assert data["EXPORTER_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"] == "10"
    assert data["EXPORTER_LEADER_ELECTION_RETRY_PERIOD_SECONDS"] == "2"
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container(objects)["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["EXPORTER_LEADER_ELECTION_NAMESPACE"] == "metadata.namespace"


def test_ha_mounts_the_token_of_its_service_account(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["everything"]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    account = one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is True
    binding = one(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "exporter"}
    ]
    assert binding["roleRef"]["name"] == one(objects, "Role")["metadata"]["name"]


def test_ha_role_allows_only_its_lease(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["everything"]
    lease = config_map_data(objects)["EXPORTER_LEADER_ELECTION_LEASE_NAME"]
    granted = set()
    for rule in one(objects, "Role")["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"]
        assert rule["resources"] == ["leases"]
        names = tuple(rule.get("resourceNames", ["*"]))
        granted |= {(verb, names) for verb in rule["verbs"]}
    # `create` cannot be limited by name in RBAC; everything else is.
    assert granted == {("get", (lease,)), ("update", (lease,)), ("patch", (lease,)), ("create", ("*",))}


def test_ha_spreads_replicas_and_budgets_disruptions(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["everything"]
    labels = pod_labels(objects)
    budget = one(objects, "PodDisruptionBudget")
    assert selects(budget["spec"]["selector"], labels)
    assert budget["spec"]["minAvailable"] == 1
    affinity = one(objects, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"], labels)


def test_readme_walks_from_the_demo_to_production_and_the_ha_pair() -> None:
    readme = (REPO / "README.md").read_text()
    assert "kubectl apply -k deploy/kubernetes/overlays/demo" in readme
    assert "kubectl apply -k deploy/kubernetes/overlays/production" in readme
    assert "uncomment `../../components/ha`" in readme
    production = (KUBERNETES / "overlays" / "production" / "kustomization.yaml").read_text()
    assert "# - ../../components/ha" in production


def test_capacity_figures_come_from_the_benchmark() -> None:
    readme = (REPO / "README.md").read_text()
    scaling = readme.split("\n## Scaling out\n", 1)[1].split("\n## ", 1)[0]
    performance = (REPO / "docs" / "performance.md").read_text()
    # The capacity table cites these figures of docs/performance.md; a new benchmark run changes both.
    for figure in ("765,937", "693,470", "6.55", "61.45", "46.5", "44.2", "32.6 MB"):
        assert figure in scaling, f"{figure} is not in the README's Scaling out section"
        assert figure in performance, f"{figure} is no longer in docs/performance.md"
