"""The Prometheus rules and the Grafana dashboard in deploy/ work against the real metrics.

promtool checks and unit-tests the rules; the rest checks that every metric, label and label
value the rules and panels query is one the proxy exports, so no alert or panel stays silent
because of a typo or a renamed family.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy.metrics import ProxyMetrics
from proxy.registry.fleet_setup import FleetMetrics
from proxy.shadow.metrics import DROP_REASONS, REQUEST_OUTCOMES, ShadowMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yaml"
SCRAPE = PROMETHEUS / "scrape.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "promptproxy-rollout.json"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "https://github.com/promptproxy/promptproxy/blob/main/docs/operations.md#"

#: Labels Prometheus adds at scrape time (deploy/prometheus/scrape.yaml).
TARGET_LABELS = frozenset({"instance", "job", "pod"})
#: Label values fixed by the proxy (docs/metrics.md). A typo in one silences a rule or panel.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "arm": frozenset({"stable", "canary", "pinned", "shadow", ""}),
    "direction": frozenset({"input", "output"}),
    "finish_reason": frozenset(
        {"stop", "length", "tool_calls", "content_filter", "function_call", "other"}
    ),
    "verdict": frozenset({"pass", "fail", "inconclusive"}),
    "action": frozenset({"abort", "ramp", "promote"}),
    "kind": frozenset({"candidate", "stable"}),
    "measure": frozenset(
        {
            "text_distance",
            "length_drift",
            "json_invalid",
            "tool_calls_differ",
            "finish_reason_changed",
        }
    ),
    "reason": DROP_REASONS,
}
#: `outcome` means different things on two families.
OUTCOMES = {"promptproxy_shadow_requests_total": frozenset(REQUEST_OUTCOMES)}

IDENTIFIER = re.compile(r"(?<![\w:$])[A-Za-z_:][\w:]*")
SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SIMPLE_ALTERNATION = re.compile(r"[\w|]*")
# Grafana's macros and the dashboard's variables, with values PromQL accepts.
GRAFANA_MACROS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$slug": "summarize",
}


# --- promtool ------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus) to check and unit-test deploy/prometheus/"
        )
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=120, check=False, cwd=PROMETHEUS
    )


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "record" in r]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_promtool_accepts_every_rule() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alert_rules()) + len(recording_rules())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    config = load_yaml(SCRAPE)
    assert config["rule_files"] == ["alerts.yaml"]
    result = promtool("check", "config", str(SCRAPE))
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of the file.
        config["scrape_configs"] = [
            job for job in config["scrape_configs"] if "kubernetes_sd_configs" not in job
        ]
        config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
        copy = tmp_path / "scrape.yaml"
        copy.write_text(yaml.safe_dump(config))
        result = promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alert_rules()) + len(recording_rules())
    assert f"SUCCESS: {count} rules found" in result.stdout


# --- the alerts, as an operator reads them -----------------------------------------------


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts no test makes fire"
    assert names - quiet == set(), "alerts no test shows staying quiet"


def operations_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


ALERTS_BY_GROUP = [
    pytest.param(g["name"], r, id=r["alert"])
    for g in load_yaml(ALERTS)["groups"]
    for r in g["rules"]
    if "alert" in r
]


@pytest.mark.parametrize(("group", "rule"), ALERTS_BY_GROUP)
def test_alert_says_what_where_how_bad_and_what_to_do(group: str, rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    notes = rule["annotations"]
    assert notes["summary"].strip()
    assert "$value" in notes["description"]
    # Rollout alerts are per prompt and name it; process alerts name the replica.
    where = {"promptproxy-rollout": "$labels.slug", "promptproxy-process": "$labels.instance"}
    assert where[group] in notes["summary"], notes["summary"]
    assert where[group] in notes["description"], notes["description"]
    url = notes["runbook_url"]
    assert url.startswith(RUNBOOK_PREFIX)
    assert url.removeprefix(RUNBOOK_PREFIX) in operations_anchors()


VOLUME_GATE = re.compile(r'\{arm="stable"\} \* 300 >= (\d+)')


def test_every_arm_comparison_gates_volume_on_stable_too() -> None:
    """Two arms differ by chance; on few requests, by a lot (docs/metrics.md, "How the
    rollout alerts tell a regression from noise"). A rule comparing a candidate arm with
    stable must see enough requests on both, not only on the candidate."""
    compared = [
        rule
        for rule in alert_rules()
        if 'arm="stable"' in rule["expr"] and re.search(r'arm=~?"canary', rule["expr"])
    ]
    assert len(compared) == 3
    for rule in compared:
        gates = [int(n) for n in VOLUME_GATE.findall(rule["expr"])]
        assert gates, f"{rule['alert']} has no volume gate on stable"
        assert min(gates) >= 100, rule["alert"]


def test_recording_rules_follow_the_level_metric_operations_convention() -> None:
    for rule in recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert level == "slug_arm", rule["record"]
        assert metric.startswith("promptproxy_"), rule["record"]
        assert operations.endswith("rate5m"), rule["record"]


# --- metric names, labels and values -------------------------------------------------------


def exported() -> dict[str, frozenset[str]]:
    """Sample names the proxy exports, each with its label names."""
    registry = CollectorRegistry()
    owners = (ProxyMetrics(registry, ["gpt-4o-mini"]), ShadowMetrics(registry))
    labels = {
        metric._name: frozenset(metric._labelnames)
        for owner in owners
        for metric in vars(owner).values()
        if isinstance(metric, MetricWrapperBase)
    }
    # Families a collector builds on scrape (the per-request ones) carry their label names.
    labels |= {
        family.name: frozenset(family._labelnames)
        for family in registry.collect()
        if hasattr(family, "_labelnames")
    }
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "info": ("_info",),
    }
    samples = {}
    for family in registry.collect():
        names = {family.name + suffix for suffix in suffixes[family.type]}
        names |= {sample.name for sample in family.samples}
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            samples[name] = labels.get(family.name, frozenset()) | extra | TARGET_LABELS
    return samples


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def promql_in(source: str) -> Iterator[str]:
    """Every PromQL expression (and test input series) in one of the deploy files."""
    if source == "alerts.yaml":
        yield from (r["expr"] for r in alert_rules() + recording_rules())
    elif source == "alerts_test.yaml":
        for case in load_yaml(ALERTS_TEST)["tests"]:
            yield from (s["series"] for s in case.get("input_series", []))
            yield from (e["expr"] for e in case.get("promql_expr_test", []))
    else:
        yield from dashboard_exprs()


SOURCES = ["alerts.yaml", "alerts_test.yaml", "promptproxy-rollout.json"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_metric_queried_is_exported(source: str) -> None:
    samples = exported()
    records = {r["record"] for r in recording_rules()}
    used = {
        name
        for expr in promql_in(source)
        for name in IDENTIFIER.findall(expr)
        if name.startswith("promptproxy_") or ":promptproxy_" in name
    }
    assert used, "no promptproxy metric found: the extraction is broken"
    unknown = {n for n in used if n not in samples and n not in records}
    assert unknown == set(), f"{source} queries metrics the proxy does not export"


@pytest.mark.parametrize("source", SOURCES)
def test_every_label_and_value_matched_exists(source: str) -> None:
    samples = exported()
    problems = []
    for expr in promql_in(source):
        for name, matchers in SELECTOR.findall(expr):
            if name not in samples:
                continue  # recording rules; unknown names fail the test above
            for label, op, value in MATCHER.findall(matchers):
                if label not in samples[name]:
                    problems.append(f"{name} has no label {label!r}")
                    continue
                allowed = OUTCOMES.get(name) if label == "outcome" else LABEL_VALUES.get(label)
                if allowed is None or value.startswith("$"):
                    continue
                if op in ("=", "!="):
                    values = {value}
                elif SIMPLE_ALTERNATION.fullmatch(value):
                    values = set(value.split("|"))
                else:
                    continue
                problems += [f"{name}{{{label}={v!r}}} never exported" for v in values - allowed]
    assert problems == []


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_has_the_datasource_and_slug_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "promptproxy-rollout"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    slug = variables["slug"]
    assert slug["type"] == "query"
    assert slug["datasource"]["uid"] == "${datasource}"
    assert slug["query"]["query"] == "label_values(promptproxy_requests_total, slug)"
    assert slug["multi"] is False  # every panel compares the arms of one prompt


def test_every_panel_queries_the_chosen_datasource() -> None:
    panels = dashboard_panels()
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_rollout_panels_follow_the_chosen_slug() -> None:
    """Every panel above the process row shows the chosen prompt only."""
    section = ""
    checked = 0
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            section = panel["title"]
            continue
        if section.startswith("Process"):
            continue
        for target in panel["targets"]:
            selectors = SELECTOR.findall(target["expr"])
            assert selectors, target["expr"]
            for name, matchers in selectors:
                assert 'slug="$slug"' in matchers, f"{panel['title']}: {name} ignores $slug"
        checked += 1
    assert checked >= 15


def test_dashboard_compares_the_arms() -> None:
    """What an operator opens the dashboard for is there, split by arm."""
    exprs = "\n".join(dashboard_exprs())
    for family in (
        "promptproxy_requests_total",
        "promptproxy_rollout_percent",
        "slug_arm:promptproxy_errors:ratio_rate5m",
        "promptproxy_request_duration_seconds_bucket",
        "promptproxy_time_to_first_token_seconds_bucket",
        "promptproxy_tokens_total",
        "promptproxy_finish_reasons_total",
        "slug_arm:promptproxy_finish_reasons_length:ratio_rate5m",
        "promptproxy_answer_tokens_bucket",
        "promptproxy_cost_usd_total",
        "promptproxy_shadow_divergence_sum",
        "promptproxy_analysis_verdicts_total",
        "promptproxy_analysis_actions_total",
        "promptproxy_event_loop_lag_seconds_bucket",
        "promptproxy_registry_staleness_seconds",
        "promptproxy_redis_errors_total",
        "promptproxy_shadow_queue_depth",
        "promptproxy_shadow_dropped_total",
    ):
        assert family in exprs
    for quantile in ("0.5", "0.95"):
        assert f"histogram_quantile({quantile}, sum by (arm, le)" in exprs


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for macro, value in GRAFANA_MACROS.items():
                expr = expr.replace(macro, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            rules.append({"record": f"panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_list_every_exported_family() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    registry = CollectorRegistry()
    ProxyMetrics(registry, ["gpt-4o-mini"])
    ShadowMetrics(registry)
    FleetMetrics(registry)
    shown = {"counter": "_total", "info": "_info"}
    missing = [
        family.name + shown.get(family.type, "")
        for family in registry.collect()
        if f"`{family.name}{shown.get(family.type, '')}`" not in docs
    ]
    assert missing == [], "families missing from docs/metrics.md"
