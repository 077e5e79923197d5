"""deploy/kubernetes/: every Kustomization in the repo (the base and each overlay), rendered
with `kubectl kustomize` as `kubectl apply -k` renders it, is valid Kubernetes and has the
properties a platform team relies on.

Validation: built-in kinds against the schemas of Kubernetes ``KUBERNETES_VERSION`` bundled
by kubernetes-validate, strict (an unknown field is an error: the API server would drop it
silently); the Prometheus Operator's ServiceMonitor and PrometheusRule against the CRD
schemas vendored in tests/kubernetes_crds/, closed the same way.

Refresh the CRD schemas: `npm pack @kubernetes-models/prometheus-operator@1.6.3` (it ships
them as plain objects; 4.4.4, 5.0.1 and 6.0.0 ship compiled validators instead), take the
object after `const schema =` in monitoring.coreos.com/v1/{ServiceMonitor,PrometheusRule}.js,
and replace its metadata `$ref` by ``{"type": "object"}``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from proxy.backends.kinds import kind_of
from proxy.config import ProxyConfig, load_config
from proxy.web.admin_routes import PUBLIC, ROUTES

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CRDS = ROOT / "tests" / "kubernetes_crds"
#: The newest Kubernetes the pinned kubernetes-validate (1.37.0) has schemas for.
KUBERNETES_VERSION = "1.37.0"


def _kustomizations(kind: str) -> list[str]:
    """The directories under deploy/kubernetes whose kustomization.yaml is of ``kind``."""
    return sorted(
        str(path.parent.relative_to(KUBERNETES))
        for path in KUBERNETES.rglob("kustomization.yaml")
        if yaml.safe_load(path.read_text(encoding="utf-8")).get("kind", "Kustomization") == kind
    )


#: The Kustomizations a user can apply or build on, by their path under deploy/kubernetes.
KUSTOMIZATIONS = _kustomizations("Kustomization")
#: The optional Components a user adds to an overlay of theirs.
COMPONENTS = _kustomizations("Component")
#: The value a test environment gives each variable the Deployment reads from a Secret.
SECRET_PLACEHOLDER = "from-a-secret"
#: What PROMPTPROXY_STORE from a Secret holds (docs/kubernetes.md): a shared store's URL.
STORE_PLACEHOLDER = "redis://store-from-a-secret:6379/0"
DATA_DIR = "/var/lib/promptproxy"
#: How long running shadow calls get after the drain (at most; proxy/services.py).
SHADOW_FLUSH_SECONDS = 5.0


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not on PATH: install it (its built-in Kustomize renders offline) to "
            "render and check deploy/kubernetes/"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kubectl_kustomize(KUBERNETES / name) for name in KUSTOMIZATIONS}


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = objects(docs, kind)
    return doc


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(deployment).get("env", [])}


def environment(deployment: dict[str, Any]) -> dict[str, str]:
    """What the process's environment holds: literal values as written, a placeholder for
    each value read from a Secret."""
    values: dict[str, str] = {}
    for name, entry in env_of(deployment).items():
        if "value" in entry:
            values[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            values[name] = STORE_PLACEHOLDER if name == "PROMPTPROXY_STORE" else SECRET_PLACEHOLDER
    return values


def config_file(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    """The config file the pod reads: the ConfigMap volume mounted where PROMPTPROXY_CONFIG
    points, written out to ``tmp_path``."""
    deployment = only(docs, "Deployment")
    path = Path(environment(deployment)["PROMPTPROXY_CONFIG"])
    (mount,) = [
        m for m in container(deployment)["volumeMounts"] if m["mountPath"] == str(path.parent)
    ]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    name = volumes[mount["name"]]["configMap"]["name"]
    (config_map,) = [c for c in objects(docs, "ConfigMap") if c["metadata"]["name"] == name]
    target = tmp_path / path.name
    target.write_text(config_map["data"][path.name], encoding="utf-8")
    return target


def proxy_config(docs: list[dict[str, Any]], tmp_path: Path) -> ProxyConfig:
    """The config the process runs with: the mounted file under the pod's environment (so
    PROMPTPROXY_STORE, when set, is the store)."""
    environ = environment(only(docs, "Deployment"))
    return load_config(config_file(docs, tmp_path), environ=environ).config


# --- validation ------------------------------------------------------------------------------


def closed(schema: Any) -> Any:
    """``schema`` with unknown fields refused in every object that lists its fields. A CRD
    schema leaves them open and the API server prunes them without a word, so a misspelt
    field would be lost in the cluster; here it fails."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}[kind]
    path = CRDS / f"{plural}.monitoring.coreos.com.v1.json"
    schema = closed(json.loads(path.read_text(encoding="utf-8")))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def problems(doc: dict[str, Any]) -> list[str]:
    """Why ``doc`` is not a valid object of Kubernetes ``KUBERNETES_VERSION`` (or of the
    vendored CRD), one line each; empty when it is."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        return [
            f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in crd_validator(doc["kind"]).iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_object_is_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    assert {doc["kind"] for doc in docs} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert [line for doc in docs for line in problems(doc)] == []


def test_the_overlays_a_user_applies_are_all_checked() -> None:
    assert {"base", "overlays/single", "overlays/replicated"} <= set(KUSTOMIZATIONS)
    assert COMPONENTS == ["components/admin-network-policy"]


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        # a misspelt field, and a number written as a string, in built-in kinds
        ("Deployment", ["spec", "template", "spec", "terminationGracePeriod"], 30),
        ("PodDisruptionBudget", ["spec", "minAvailable"], [2]),
        # and in the CRDs
        ("ServiceMonitor", ["spec", "endpoints", 0, "scrapeInterval"], "15s"),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "expresion"], "up"),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0, "labels"], {"severity": 1}),
    ],
)
def test_validation_refuses_a_broken_object(
    rendered: dict[str, list[dict[str, Any]]], kind: str, path: list[Any], value: Any
) -> None:
    doc = copy.deepcopy(only(rendered["base"], kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert problems(doc), f"{kind} with {path}={value!r} passed validation"


# --- what cannot be correct is refused --------------------------------------------------------


def replicas_on_embedded_store(docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    """Each Deployment of ``docs`` that runs several pods on the embedded store: each pod
    would keep its own registry, so a push or rollback would reach one pod of N."""
    found = []
    for deployment in objects(docs, "Deployment"):
        replicas = deployment["spec"].get("replicas", 1)
        store = proxy_config(docs, tmp_path).registry.store
        kind = kind_of(store)
        if replicas > 1 and (kind is None or not kind.shared):
            found.append(f"{deployment['metadata']['name']}: {replicas} replicas on {store}")
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_kustomization_runs_several_replicas_on_the_embedded_store(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    assert replicas_on_embedded_store(rendered[name], tmp_path) == []


def test_a_user_overlay_scaling_single_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    single = os.path.relpath(KUBERNETES / "overlays" / "single", overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [single],
                "replicas": [{"name": "promptproxy", "count": 3}],
            }
        )
    )
    found = replicas_on_embedded_store(kubectl_kustomize(overlay), tmp_path)
    assert found == [f"promptproxy: 3 replicas on embedded:{DATA_DIR}/registry.db"]


def test_replicated_reads_a_shared_store_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = only(rendered["overlays/replicated"], "Deployment")
    assert deployment["spec"]["replicas"] == 3
    store = env_of(deployment)["PROMPTPROXY_STORE"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "promptproxy-store", "key": "url"}


# --- what a platform team relies on -----------------------------------------------------------


def admin_port_names(deployment: dict[str, Any], config: ProxyConfig) -> set[Any]:
    ports = container(deployment)["ports"]
    (admin,) = [p for p in ports if p["containerPort"] == config.server.admin_port]
    return {admin["name"], admin["containerPort"]}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_admin_port_is_only_in_the_clusterip_admin_service(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    config = proxy_config(docs, tmp_path)
    deployment = only(docs, "Deployment")
    admin = admin_port_names(deployment, config)
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert ports == {"http": config.server.port, "admin": config.server.admin_port}
    exposing = {
        service["metadata"]["name"]: service["spec"]
        for service in objects(docs, "Service")
        if any(port["targetPort"] in admin for port in service["spec"]["ports"])
    }
    assert list(exposing) == ["promptproxy-admin"]
    assert exposing["promptproxy-admin"].get("type", "ClusterIP") == "ClusterIP"
    data = next(s for s in objects(docs, "Service") if s["metadata"]["name"] == "promptproxy")
    assert [port["targetPort"] for port in data["spec"]["ports"]] == ["http"]
    # Nothing routes traffic from outside the cluster: the user adds that for the data port.
    assert not [doc for doc in docs if doc["kind"] in ("Ingress", "HTTPRoute", "Gateway")]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_probes_ask_the_admin_port_for_paths_it_serves(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    deployment = only(docs, "Deployment")
    admin = admin_port_names(deployment, proxy_config(docs, tmp_path))
    public_paths = {
        route.path for route in ROUTES if route.method == "GET" and route.access is PUBLIC
    }
    main = container(deployment)
    probes = {
        kind: main[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe in probes.values():
        assert probe["port"] in admin
        assert probe["path"] in public_paths


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_grace_period_covers_prestop_and_the_drain(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    deployment = only(docs, "Deployment")
    pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    config = proxy_config(docs, tmp_path)
    drain = config.server.shutdown_grace_seconds
    # After the drain, what the process still waits for before it exits: running shadow
    # calls (proxy/services.py gives them min(5 s, the drain)), then tracing's flush.
    shadows = min(SHADOW_FLUSH_SECONDS, drain)
    traces = config.tracing.shutdown_timeout_seconds if config.tracing.enabled else 0.0
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop >= 1  # endpoints need a moment to stop routing to the pod
    assert grace > pre_stop + drain + shadows + traces


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_configmap_loads_with_the_environment_the_pod_gets(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    deployment = only(docs, "Deployment")
    env = environment(deployment)
    settings = load_config(config_file(docs, tmp_path), environ=env)
    config = settings.config
    # Every key the config names arrives from a Secret.
    assert settings.provider_keys == {
        p.name: SECRET_PLACEHOLDER for p in config.providers if p.api_key_env
    }
    assert [(t.name, t.token) for t in settings.admin_tokens] == [("admin", SECRET_PLACEHOLDER)]
    # The process binds where the probes and Services point, and writes only to the data volume.
    assert config.server.admin_host == "0.0.0.0"
    store = kind_of(config.registry.store)
    assert store is not None
    if not store.shared:
        assert config.registry.store == f"embedded:{DATA_DIR}/registry.db"
        assert config.shadow.sink.dir.startswith(f"{DATA_DIR}/")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_secrets_arrive_only_by_secret_key_ref(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    assert objects(docs, "Secret") == []  # the user creates them: docs/kubernetes.md
    deployment = only(docs, "Deployment")
    config = proxy_config(docs, tmp_path)
    secret_names = {p.api_key_env for p in config.provider_list() if p.api_key_env}
    secret_names |= {"PROMPTPROXY_ADMIN_TOKEN"}
    env = env_of(deployment)
    for variable in secret_names | ({"PROMPTPROXY_STORE"} & set(env)):
        assert set(env[variable]) == {"name", "valueFrom"}, variable
        assert set(env[variable]["valueFrom"]) == {"secretKeyRef"}, variable
    main = container(deployment)
    assert "envFrom" not in main  # every variable is named, so none arrives by surprise
    # No key in the config file either.
    text = only(docs, "ConfigMap")["data"]["promptproxy.yaml"]
    assert not re.search(r"sk-[A-Za-z0-9]|token:\s*\S", text)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_pod_runs_as_the_images_non_root_user_read_only(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    deployment = only(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    (account,) = objects(rendered[name], "ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"]
    assert account["automountServiceAccountToken"] is False
    main = container(deployment)
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "command" not in main  # the image's `promptproxy serve`
    assert "args" not in main
    writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
    assert writable == {DATA_DIR, "/tmp"}
    resources = main["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def data_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == DATA_DIR]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {k: v for k, v in volumes[mount["name"]].items() if k != "name"}


def test_only_single_keeps_its_data_on_a_claim_one_pod_at_a_time(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        deployment = only(docs, "Deployment")
        claims = objects(docs, "PersistentVolumeClaim")
        if name == "overlays/single":
            (claim,) = claims
            assert data_volume(deployment) == {
                "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}
            }
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        else:
            assert claims == [], name
            assert set(data_volume(deployment)) == {"emptyDir"}, name


def test_replicated_keeps_two_of_three_through_a_drain_spread_over_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["overlays/replicated"]
    deployment = only(docs, "Deployment")
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_selectors_match_the_pods(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    docs = rendered[name]
    deployment = only(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(service["spec"]["selector"] for service in objects(docs, "Service")),
    ):
        assert selector.items() <= labels.items()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_servicemonitor_scrapes_the_admin_service_only(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    monitor = only(docs, "ServiceMonitor")["spec"]
    wanted = monitor["selector"]["matchLabels"].items()
    selected = [s for s in objects(docs, "Service") if wanted <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["promptproxy-admin"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# --- the PrometheusRule is alerts.yaml ---------------------------------------------------------


def generator() -> ModuleType:
    path = KUBERNETES / "prometheusrule.py"
    spec = importlib.util.spec_from_file_location("prometheusrule", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_holds_the_rules_promtool_tests(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for docs in rendered.values():
        assert only(docs, "PrometheusRule")["spec"]["groups"] == alerts["groups"]
    committed = (KUBERNETES / "base" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generator().render(ALERTS.read_text(encoding="utf-8")), (
        "deploy/kubernetes/base/prometheusrule.yaml is stale: run "
        "python deploy/kubernetes/prometheusrule.py"
    )


def test_the_generator_carries_a_changed_rule() -> None:
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts["groups"][0]["rules"][0]["expr"] = "vector(1)\n+ vector(2)"
    out = yaml.safe_load(generator().render(yaml.safe_dump(alerts)))
    assert out["spec"]["groups"][0]["rules"][0]["expr"] == "vector(1)\n+ vector(2)"
    assert problems(out) == []


# --- the optional NetworkPolicy ---------------------------------------------------------------


def user_overlay(tmp_path: Path, base: str, components: list[str]) -> list[dict[str, Any]]:
    """An overlay of the user's own, on ``base`` with ``components``, rendered."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(KUBERNETES / base, overlay)],
                "components": [os.path.relpath(KUBERNETES / c, overlay) for c in components],
            }
        )
    )
    return kubectl_kustomize(overlay)


@pytest.mark.parametrize("base", ["overlays/single", "overlays/replicated"])
def test_the_network_policy_admits_only_prometheus_to_the_admin_port(
    base: str, tmp_path: Path
) -> None:
    docs = user_overlay(tmp_path, base, COMPONENTS)
    assert [line for doc in docs for line in problems(doc)] == []
    policy = only(docs, "NetworkPolicy")["spec"]
    deployment = only(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]  # egress (providers, the store) untouched
    config = proxy_config(docs, tmp_path)
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    admitted: dict[int, list[Any]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            number = named.get(port["port"], port["port"])
            admitted.setdefault(number, []).append(rule.get("from"))
    # The data port from anywhere; the admin port only from the selected namespace.
    assert admitted[config.server.port] == [None]
    (sources,) = admitted[config.server.admin_port]
    assert sources == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert set(admitted) == {config.server.port, config.server.admin_port}
