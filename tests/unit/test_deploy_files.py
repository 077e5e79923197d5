"""The deploy manifests parse and agree with the proxy's defaults and endpoints."""

import json
import re
from pathlib import Path

import yaml

from proxy.config import ProxyConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_kubernetes_manifest_probes_and_grace_fit_the_proxy() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "promptproxy.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    config = ProxyConfig.model_validate(
        yaml.safe_load(kinds["ConfigMap"]["data"]["promptproxy.yaml"])
    )
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.server.port, "admin": config.server.admin_port}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config.server.shutdown_grace_seconds


def test_prometheus_scrapes_the_admin_port_the_manifest_and_config_expose() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yaml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "promptproxy.yaml").read_text()))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    (keep,) = [r for r in jobs["promptproxy"]["relabel_configs"] if r.get("action") == "keep"]
    assert keep["source_labels"] == ["__meta_kubernetes_service_name"]
    (admin,) = [name for name in services if re.fullmatch(keep["regex"], name)]
    (port,) = services[admin]["spec"]["ports"]
    assert port["targetPort"] == "admin"
    (static,) = jobs["promptproxy-static"]["static_configs"]
    admin_port = ProxyConfig.model_validate({}).server.admin_port
    assert static["targets"] == [f"127.0.0.1:{admin_port}"]
    assert port["port"] == admin_port


def test_grafana_provisioning_loads_the_dashboard_from_prometheus() -> None:
    grafana = DEPLOY / "grafana"
    providers = yaml.safe_load((grafana / "provisioning/dashboards/promptproxy.yaml").read_text())
    (provider,) = providers["providers"]
    assert providers["apiVersion"] == 1
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"  # the dashboard's datasource variable asks for it
    assert source["url"].startswith("http")
    (board,) = (grafana / "dashboards").glob("*.json")
    assert json.loads(board.read_text())["uid"] == "promptproxy-rollout"
