"""The workers' ``/metrics``, merged into the one exposition a single process would give.

Each worker exports its own registry (``Gauge.set_function`` callbacks and the lock-free
``RequestFamilies`` collector: prometheus-client's multiprocess mode, which keeps values in
shared files, supports neither). The supervisor scrapes every worker's text and merges it:

- counters, histograms and summaries: summed per label set (buckets per ``le``), which is
  what the one process would have counted. Their ``_created`` samples (exported as gauges
  named ``<family>_created``): the earliest.
- gauges: by the family's rule in ``GAUGE_RULES``: ``sum`` for amounts each worker holds
  (requests in flight, connections, queued rows), ``max`` for "is any worker in this state"
  and for staleness, ``min`` for up-ness and the served revision (the machine is as current
  as its most behind worker). A gauge missing from the table is merged by ``max``, which
  never inflates a figure; tests/unit/test_workers_merge.py fails on such a gauge, so a new
  family gets its rule when it is added.
- a worker that exits leaves its counts: its last scrape's counters, histograms and
  summaries are kept (``retire``) and added to every later merge, so a restart never makes
  a merged counter go down (which Prometheus would read as a reset, and ``rate()`` as a
  burst). What it counted after that last scrape is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Rule = Literal["sum", "max", "min"]

#: How each gauge family of a worker adds up across workers (see the module's docstring).
GAUGE_RULES: Final[Mapping[str, Rule]] = {
    "promptproxy_requests_in_flight": "sum",
    "promptproxy_draining": "max",
    "promptproxy_registry_up": "min",
    "promptproxy_registry_store_replaced": "max",
    "promptproxy_registry_revision": "min",
    "promptproxy_registry_staleness_seconds": "max",
    "promptproxy_log_lines_dropped": "sum",
    # Every worker shows the same rollouts; one moment apart, the one ahead.
    "promptproxy_rollout_percent": "max",
    "promptproxy_usage_pending_rows": "sum",
    # Leases held by this machine's workers: `sum by (slug)` stays the fleet's count.
    "promptproxy_analysis_leader": "sum",
    "promptproxy_connections_open": "sum",
    "promptproxy_upstream_pool_in_use": "sum",
    "promptproxy_upstream_pool_waiting": "sum",
    # Each worker has its own pool: the machine's is their sum.
    "promptproxy_upstream_pool_limit": "sum",
    "promptproxy_shadow_in_flight": "sum",
    "promptproxy_shadow_queue_depth": "sum",
    "promptproxy_build_info": "max",
    # The supervisor's own (``SupervisorMetrics``); it is the only one exporting them.
    "promptproxy_workers": "sum",
}
_CREATED = "_created"

#: (sample name, sorted label pairs)
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class Family:
    name: str
    type: str
    documentation: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


#: Family name (as the text parser names it: a counter without ``_total``) -> family.
Families = dict[str, Family]


def parse(text: str) -> Families:
    """A worker's ``/metrics`` text (Prometheus text format 0.0.4). Raises ``ValueError``
    on text that is not that format."""
    out: Families = {}
    for metric in text_string_to_metric_families(text):
        family = out.setdefault(metric.name, Family(metric.name, metric.type, metric.documentation))
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            family.samples[key] = sample.value
    return out


def _is_created(name: str, families: Mapping[str, Family]) -> bool:
    """A ``<family>_created`` gauge of a counter, histogram or summary ``<family>``."""
    if not name.endswith(_CREATED):
        return False
    stem = families.get(name.removesuffix(_CREATED))
    return stem is not None and stem.type != "gauge"


def rule_of(name: str, kind: str, families: Mapping[str, Family]) -> Rule:
    """How ``name`` (of type ``kind``) adds up; ``families``: every family of the merge."""
    if kind != "gauge":
        return "sum"
    if _is_created(name, families):
        return "min"
    return GAUGE_RULES.get(name, "max")


def merge(parts: Iterable[Families]) -> Families:
    """One exposition from several, family by family, in the order they first appear."""
    parts = list(parts)
    kinds: dict[str, Family] = {}
    for part in parts:
        for name, family in part.items():
            kinds.setdefault(name, family)
    out: Families = {}
    for part in parts:
        for name, family in part.items():
            merged = out.get(name)
            if merged is None:
                merged = out[name] = Family(name, family.type, family.documentation)
            rule = rule_of(name, family.type, kinds)
            samples = merged.samples
            for key, value in family.samples.items():
                seen = samples.get(key)
                if seen is None:
                    samples[key] = value
                elif rule == "sum":
                    samples[key] = seen + value
                elif rule == "max":
                    samples[key] = max(seen, value)
                else:
                    samples[key] = min(seen, value)
    return out


def lasting(families: Families) -> Families:
    """What a worker that exited still contributes: its counts (counters, histograms,
    summaries and their ``_created``), never its gauges, which described a process now
    gone."""
    return {
        name: family
        for name, family in families.items()
        if family.type != "gauge" or _is_created(name, families)
    }


class _Fixed:
    """A collector that yields prepared families (to render them as prometheus_client
    would, escaping included)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def render(families: Families) -> bytes:
    metrics: list[Metric] = []
    for family in families.values():
        metric = Metric(family.name, family.documentation, family.type)
        for (name, labels), value in family.samples.items():
            metric.add_sample(name, dict(labels), value)
        metrics.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(metrics))
    return generate_latest(registry)
