"""The deploy manifests parse and agree with the proxy's defaults and endpoints."""

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
