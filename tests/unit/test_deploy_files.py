"""The deploy manifests parse and agree with the proxy's defaults and endpoints."""

import json
import re
from pathlib import Path

import yaml

from proxy.config import ProxyConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_prometheus_scrapes_the_admin_port_the_manifest_and_config_expose() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yaml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    # The Kubernetes objects themselves: tests/unit/test_kubernetes_manifests.py.
    base = DEPLOY / "kubernetes" / "base"
    docs = [yaml.safe_load(p.read_text()) for p in base.glob("service*.yaml")]
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


def test_links_between_the_deployment_docs_resolve() -> None:
    docs = DEPLOY.parent / "docs"
    for page in ("deployment.md", "kubernetes.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (docs / page).read_text()):
            if "://" not in target:
                assert (docs / target).exists(), f"docs/{page} links to {target}"
