"""The merge of the workers' /metrics (proxy/workers/merge.py): what one process would
report, every gauge family with a rule, and counters that never go down when a worker
exits."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from proxy.metrics import ProxyMetrics
from proxy.registry.fleet_setup import FleetMetrics
from proxy.shadow.metrics import ShadowMetrics
from proxy.workers.merge import GAUGE_RULES, Families, lasting, merge, parse, render
from proxy.workers.supervisor import SupervisorMetrics

ROOT = Path(__file__).resolve().parents[2]
#: The labels of the one request series ``worker`` counts in.
CHAT = {
    "arm": "",
    "model": "gpt-4o-mini",
    "provider": "upstream",
    "route": "chat.completions",
    "slug": "",
    "tier": "",
    "variant": "",
    "version": "",
}


def worker(
    requests: int,
    *,
    in_flight: int = 0,
    up: bool = True,
    staleness: float = 0.0,
    revision: int = 1,
    feedback: float | None = None,
) -> tuple[ProxyMetrics, Families]:
    """A worker's registry after ``requests`` answered chat calls of 0.1 s, and its parse."""
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini"])
    ShadowMetrics(registry)
    FleetMetrics(registry)
    series = metrics.series("chat.completions", "gpt-4o-mini", None, "", "", provider="upstream")
    for _ in range(requests):
        series.observe("2xx", 0.1, None, 10, 20, None, "stop")
    metrics.requests_open = in_flight
    metrics.registry_up.set(1.0 if up else 0.0)
    metrics.registry_staleness.set(staleness)
    metrics.registry_revision.set(revision)
    metrics.connections_open.labels("data").set(in_flight)
    if feedback is not None:
        metrics.feedback.labels("s", "1", "stable", "", "thumbs").observe(feedback)
    return metrics, parse(generate_latest(registry).decode())


def value(families: Families, family: str, sample: str | None = None, **labels: str) -> float:
    """One sample of the merged exposition, read back from its rendered text."""
    reread = parse(render(families).decode())
    key = (sample or family, tuple(sorted(labels.items())))
    return reread[family].samples[key]


def test_every_gauge_family_a_worker_or_the_supervisor_exports_has_a_rule() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini"])
    ShadowMetrics(registry)
    FleetMetrics(registry)
    # Labelled gauges export nothing until a child exists.
    metrics.rollout_percent.labels("s", "", "", "canary", "2").set(10)
    metrics.analysis_leader.labels("s").set(1)
    metrics.connections_open.labels("data").set(1)
    supervisor = SupervisorMetrics(CollectorRegistry())
    supervisor.workers.labels("ready").set(1)
    families = parse(generate_latest(registry).decode())
    families.update(parse(generate_latest(supervisor.registry).decode()))
    gauges = {
        name
        for name, family in families.items()
        if family.type == "gauge"
        and not (name.endswith("_created") and name.removesuffix("_created") in families)
    }
    assert gauges - set(GAUGE_RULES) == set(), "gauges without a merge rule in GAUGE_RULES"
    # And no rule for a family nobody exports (a renamed gauge would keep a dead rule).
    assert set(GAUGE_RULES) - gauges == set()


def test_one_worker_merges_to_its_own_exposition_byte_for_byte() -> None:
    metrics, _ = worker(3, in_flight=2, feedback=1.0)
    text = generate_latest(metrics.registry)
    assert render(merge([parse(text.decode())])) == text


def test_counts_add_up_and_gauges_follow_their_rule() -> None:
    _, one = worker(3, in_flight=2, staleness=0.5, revision=7, feedback=1.0)
    _, two = worker(5, in_flight=1, up=False, staleness=4.0, revision=6, feedback=0.0)
    merged = merge([one, two])
    requests = "promptproxy_requests_total"
    assert value(merged, "promptproxy_requests", requests, **CHAT, status_class="2xx") == 8
    duration = "promptproxy_request_duration_seconds"
    assert value(merged, duration, f"{duration}_bucket", **CHAT, le="0.16") == 8
    assert value(merged, duration, f"{duration}_bucket", **CHAT, le="0.08") == 0
    assert abs(value(merged, duration, f"{duration}_sum", **CHAT) - 0.8) < 1e-9
    feedback = {"arm": "stable", "name": "thumbs", "slug": "s", "variant": "", "version": "1"}
    family = "promptproxy_feedback_value"
    assert value(merged, family, f"{family}_count", **feedback) == 2
    assert value(merged, family, f"{family}_sum", **feedback) == 1
    assert value(merged, "promptproxy_requests_in_flight") == 3
    assert value(merged, "promptproxy_connections_open", port="data") == 3
    assert value(merged, "promptproxy_registry_up") == 0  # one worker's store is down
    assert value(merged, "promptproxy_registry_staleness_seconds") == 4.0
    assert value(merged, "promptproxy_registry_revision") == 6  # the most behind
    assert value(merged, "promptproxy_build_info", version="0.1.0") == 1


def test_the_earliest_created_time_stands() -> None:
    _, one = worker(1)
    _, two = worker(1)
    created = "promptproxy_requests_created"
    first = value(one, created, **CHAT, status_class="2xx")
    assert first <= value(two, created, **CHAT, status_class="2xx")
    assert value(merge([two, one]), created, **CHAT, status_class="2xx") == first


def test_an_exited_workers_counts_stay_and_its_gauges_go() -> None:
    _, dead = worker(4, in_flight=3)
    _, alive = worker(2, in_flight=1)
    kept = lasting(dead)
    assert "promptproxy_requests_in_flight" not in kept
    assert "promptproxy_requests" in kept
    assert "promptproxy_requests_created" in kept
    merged = merge([alive, kept])
    requests = "promptproxy_requests_total"
    assert value(merged, "promptproxy_requests", requests, **CHAT, status_class="2xx") == 6
    assert value(merged, "promptproxy_requests_in_flight") == 1


def test_the_supervisor_families_are_documented() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for family in ("`promptproxy_workers`", "`promptproxy_worker_restarts_total`"):
        assert family in docs
