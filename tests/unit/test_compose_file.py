"""deploy/compose.yaml is a valid Compose file (the Compose specification's JSON schema, as
vendored by the check-jsonschema package) describing the topology its users rely on: two
proxies on one Redis, the simulator as their provider, Prometheus scraping both with the
alert rules, Grafana with the dashboard. There is no Docker engine here; the same topology
runs as processes in tests/integration/test_replicas_on_redis.py and
tests/integration/test_rollouts_on_redis.py."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from proxy.backends.kinds import kind_of
from proxy.config import Settings, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
#: Where check-jsonschema keeps its copy of the compose-spec schema.
SCHEMA_PACKAGE = "check_jsonschema"
SCHEMA_PATH = "builtin_schemas/vendor/compose-spec.json"
IMAGE = "promptproxy:0.1.0"
PROXIES = ("proxy-a", "proxy-b")
#: How long running shadow calls get after the drain (at most; proxy/services.py).
SHADOW_FLUSH_SECONDS = 5.0


def compose_schema() -> dict[str, Any]:
    try:
        resource = importlib.resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_PATH)
        text = resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.fail(
            f"the compose-spec schema is not at {SCHEMA_PACKAGE}/{SCHEMA_PATH} ({exc}): "
            "check-jsonschema (the test extra, pinned in constraints.txt) moved or dropped its "
            "vendored copy; find it in the installed package and update SCHEMA_PATH"
        )
    schema: dict[str, Any] = json.loads(text)
    assert schema.get("$id") == "compose_spec.json", schema.get("$id")
    return schema


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message[:300]}"
        for error in validator(schema).iter_errors(document)
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the `<<` merge keys the file uses, as Compose does.
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file or folder mounted there (paths in a Compose
    file are relative to its folder)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def mounted_file(service: dict[str, Any], container_path: str) -> Path:
    path = PurePosixPath(container_path)
    for target, source in bind_mounts(service).items():
        if path == PurePosixPath(target):
            return source
        if PurePosixPath(target) in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"nothing is mounted at {container_path}")


def proxy_settings(service: dict[str, Any]) -> Settings:
    """The proxy's configuration as it starts in the container: the mounted file under the
    service's environment."""
    environment = {k: str(v) for k, v in service.get("environment", {}).items()}
    environment = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in environment.items()}
    config = mounted_file(service, environment["PROMPTPROXY_CONFIG"])
    return load_config(config, environ=environment)


def host_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    published = []
    for port in service.get("ports", []):
        address, host, container = str(port).split(":")
        published.append((address, int(host), int(container)))
    return published


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- the file --------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_refuses_a_broken_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["proxy-a"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["sim"]["helthcheck"] = broken["services"]["sim"].pop("healthcheck")
    errors = schema_errors(broken)
    assert [e for e in errors if e.startswith("services/sim:") and "'helthcheck'" in e]
    assert [e for e in errors if e.startswith("services/proxy-a/depends_on:")]


def test_promptproxy_services_run_the_image_the_dockerfile_builds(
    compose: dict[str, Any],
) -> None:
    ours = {name: s for name, s in services(compose).items() if s["image"] == IMAGE}
    assert set(ours) == {"sim", *PROXIES}
    for service in ours.values():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
        assert service["read_only"] is True
    for name, service in services(compose).items():
        if name not in ours:  # third-party images pinned by tag, never `latest`
            assert re.fullmatch(r"[\w./-]+:\w[\w.-]*", service["image"]), name
            assert not service["image"].endswith(":latest"), name


# --- the topology ----------------------------------------------------------------------------


def test_both_proxies_share_one_redis_and_call_the_simulator(compose: dict[str, Any]) -> None:
    everything = services(compose)
    sim_command = everything["sim"]["command"]
    assert sim_command[0] == "simulate"
    assert option(sim_command, "--host") == "0.0.0.0"
    sim_port = int(option(sim_command, "--port"))
    stores = set()
    for name in PROXIES:
        service = everything[name]
        assert "command" not in service  # the image's `promptproxy serve`
        config = proxy_settings(service).config
        store = urlsplit(config.registry.store)
        kind = kind_of(config.registry.store)
        assert kind is not None
        assert kind.shared
        assert store.hostname in everything
        assert everything[store.hostname]["image"].startswith("redis:")
        assert (store.port or 6379) == 6379
        stores.add(config.registry.store)
        for provider in config.provider_list():
            url = urlsplit(provider.base_url)
            assert (url.hostname, url.port) == ("sim", sim_port), provider.name
        assert config.server.host == "0.0.0.0"
        assert config.server.admin_host == "0.0.0.0"
        depends = everything[name]["depends_on"]
        for needed in (store.hostname, "sim"):
            assert depends[needed] == {"condition": "service_healthy"}, name
    assert len(stores) == 1


def waits_for_healthy(everything: dict[str, dict[str, Any]], name: str) -> set[str]:
    """The services ``name`` starts after, once they are healthy, directly or not."""
    found: set[str] = set()
    pending = [name]
    while pending:
        for other, how in everything[pending.pop()].get("depends_on", {}).items():
            if how.get("condition") == "service_healthy" and other not in found:
                found.add(other)
                pending.append(other)
    return found


def test_proxies_that_bootstrap_prompts_start_one_after_the_other(
    compose: dict[str, Any],
) -> None:
    # Two bootstraps at once on an empty Redis race to promote the same first versions,
    # and the loser's start fails (measured: one start in three with two proxies).
    everything = services(compose)
    bootstrapping = [
        name for name in PROXIES if proxy_settings(everything[name]).config.registry.bootstrap_dir
    ]
    assert len(bootstrapping) > 1
    for i, first in enumerate(bootstrapping):
        for second in bootstrapping[i + 1 :]:
            assert first in waits_for_healthy(everything, second) or second in waits_for_healthy(
                everything, first
            ), f"{first} and {second} bootstrap prompts at the same time"


def test_the_proxy_config_loads_with_the_bootstrap_prompts_mounted(
    compose: dict[str, Any],
) -> None:
    for name in PROXIES:
        service = services(compose)[name]
        settings = proxy_settings(service)
        assert [(t.name, t.role) for t in settings.admin_tokens] == [("admin", "admin")]
        bootstrap = settings.config.registry.bootstrap_dir
        assert bootstrap is not None
        prompts = mounted_file(service, bootstrap)
        assert sorted(prompts.glob("*.md")), prompts
        # SIGTERM: the drain, then running shadow calls (min(5 s, the drain):
        # proxy/services.py), end before Compose's SIGKILL.
        grace = int(service["stop_grace_period"].removesuffix("s"))
        drain = settings.config.server.shutdown_grace_seconds
        assert grace > drain + min(SHADOW_FLUSH_SECONDS, drain)


def test_every_mounted_file_is_in_the_repository(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
                assert (COMPOSE.parent / source).resolve().is_relative_to(ROOT), source
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_ports_do_not_clash_and_stay_on_this_machine(compose: dict[str, Any]) -> None:
    published = [(name, *port) for name, s in services(compose).items() for port in host_ports(s)]
    host_side = [port for _, _, port, _ in published]
    assert len(host_side) == len(set(host_side)), published
    assert {address for _, address, _, _ in published} == {"127.0.0.1"}
    for name in PROXIES:
        config = proxy_settings(services(compose)[name]).config
        container_side = {c for _, _, c in host_ports(services(compose)[name])}
        assert container_side == {config.server.port, config.server.admin_port}


def test_every_service_has_a_health_check_and_proxies_check_readiness(
    compose: dict[str, Any],
) -> None:
    for name, service in services(compose).items():
        if name == "grafana":  # nothing waits for it
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name
    for name in PROXIES:
        config = proxy_settings(services(compose)[name]).config
        check = " ".join(services(compose)[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{config.server.admin_port}/readyz" in check
    sim_port = option(services(compose)["sim"]["command"], "--port")
    assert f"http://127.0.0.1:{sim_port}/v1/models" in " ".join(
        services(compose)["sim"]["healthcheck"]["test"]
    )


# --- Prometheus and Grafana ------------------------------------------------------------------


def prometheus_config(compose: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    service = services(compose)["prometheus"]
    path = mounted_file(service, "/etc/prometheus/prometheus.yml")
    return service, yaml.safe_load(path.read_text(encoding="utf-8"))


def test_prometheus_scrapes_both_admin_ports_and_loads_the_alert_rules(
    compose: dict[str, Any],
) -> None:
    service, config = prometheus_config(compose)
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = set()
    for name in PROXIES:
        admin_port = proxy_settings(services(compose)[name]).config.server.admin_port
        expected.add(f"{name}:{admin_port}")
    assert targets == expected
    (rules,) = config["rule_files"]
    # Relative rule paths are resolved from the config file's folder.
    mounted = mounted_file(service, str(PurePosixPath("/etc/prometheus") / rules))
    assert mounted == DEPLOY / "prometheus" / "alerts.yaml"


def test_promtool_accepts_the_prometheus_config(compose: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus) to check deploy/compose/prometheus.yml"
        )
    service, config = prometheus_config(compose)
    config["rule_files"] = [
        str(mounted_file(service, str(PurePosixPath("/etc/prometheus") / rule)))
        for rule in config["rule_files"]
    ]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_dashboard_and_this_prometheus(
    compose: dict[str, Any],
) -> None:
    everything = services(compose)
    grafana = everything["grafana"]
    provisioning = mounted_file(grafana, "/etc/grafana/provisioning")
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "promptproxy.yaml").read_text())
    (provider,) = providers["providers"]
    dashboards = mounted_file(grafana, provider["options"]["path"])
    assert sorted(dashboards.glob("*.json")) == sorted(
        (DEPLOY / "grafana" / "dashboards").glob("*.json")
    )
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_file(grafana, home).is_file()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    prometheus_port = 9090  # the prom/prometheus image's default listen port
    assert url.port == prometheus_port
    assert ("127.0.0.1", prometheus_port, prometheus_port) in host_ports(everything["prometheus"])
    _, config = prometheus_config(compose)
    assert source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
