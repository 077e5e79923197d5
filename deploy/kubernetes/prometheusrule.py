"""Write base/prometheusrule.yaml: deploy/prometheus/alerts.yaml as a Prometheus Operator
PrometheusRule, so the cluster runs the rules that promtool tests.

Kustomize cannot turn a rules file into the body of a custom resource, hence this script.
Run it after any change to alerts.yaml (tests/unit/test_kubernetes_manifests.py fails until
the two agree):

    python deploy/kubernetes/prometheusrule.py           # rewrite the file
    python deploy/kubernetes/prometheusrule.py --check   # exit 1 if it is stale

Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yaml"
TARGET = HERE / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/kubernetes/prometheusrule.py: edit
# alerts.yaml (its comments explain every rule), then run the script. Your Prometheus may
# select rules by a label (kube-prometheus-stack: `release`): add it in your overlay.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as they are written in alerts.yaml."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def rule_resource(alerts: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule holding the groups of ``alerts`` unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "promptproxy", "labels": {"app.kubernetes.io/name": "promptproxy"}},
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_text: str) -> str:
    body = yaml.dump(
        rule_resource(yaml.safe_load(alerts_text)),
        Dumper=_Dumper,
        sort_keys=False,
        width=100,
        allow_unicode=True,
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    expected = render(ALERTS.read_text(encoding="utf-8"))
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if current != expected:
            print(f"{TARGET} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
