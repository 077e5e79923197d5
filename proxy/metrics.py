"""Prometheus metrics on a registry the app owns (never the global one).

Label values are bounded: ``route`` is an enum, ``model`` is allow-listed (else ``other``),
``status_class`` is ``2xx``..``5xx``, ``error_class`` comes from a fixed set, and ``slug``,
``version`` and ``arm`` are filled only from the registry (empty when the request names no
prompt). No request ids, users or tenants ever become labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxy import __version__
from proxy.registry.models import Rollout

# Seconds; doubling from 5 ms to ~82 s covers both cache hits and long reasoning answers.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PROMPT_LABELS = ("slug", "version", "arm")
OTHER = "other"


class Series:
    """The labelled children of one (route, model, slug, version, arm), looked up once.

    ``labels()`` validates and locks on every call; a request touches up to six series, so
    the children are cached here. The cache is bounded by the same label allow-lists that
    bound the exported series.
    """

    __slots__ = (
        "_errors",
        "_metrics",
        "_requests",
        "duration",
        "input_tokens",
        "key",
        "output_tokens",
        "ttft",
    )

    def __init__(self, metrics: ProxyMetrics, key: tuple[str, str, str, str, str]) -> None:
        self._metrics = metrics
        self.key = key
        self.duration = metrics.duration.labels(*key)
        self.ttft = metrics.ttft.labels(*key)
        self.input_tokens = metrics.tokens.labels(*key, "input")
        self.output_tokens = metrics.tokens.labels(*key, "output")
        self._requests: dict[str, Counter] = {}
        self._errors: dict[str, Counter] = {}

    def requests(self, status_class: str) -> Counter:
        child = self._requests.get(status_class)
        if child is None:
            child = self._requests[status_class] = self._metrics.requests.labels(
                *self.key, status_class
            )
        return child

    def observe(
        self,
        status_class: str,
        duration: float,
        ttft: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        error_class: str | None,
    ) -> None:
        """Count one finished call (a request, or a shadow copy of one)."""
        self.requests(status_class).inc()
        self.duration.observe(duration)
        if ttft is not None:
            self.ttft.observe(ttft)
        if input_tokens:
            self.input_tokens.inc(input_tokens)
        if output_tokens:
            self.output_tokens.inc(output_tokens)
        if error_class is not None:
            self.errors(error_class).inc()

    def errors(self, error_class: str) -> Counter:
        child = self._errors.get(error_class)
        if child is None:
            route, _, slug, version, arm = self.key
            child = self._errors[error_class] = self._metrics.errors.labels(
                route, error_class, slug, version, arm
            )
        return child


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry, models: Iterable[str]) -> None:
        self.registry = registry
        self._models = frozenset(models)
        self._slugs: frozenset[str] = frozenset()
        self._series: dict[tuple[str, str, str, str, str], Series] = {}
        base = ("route", "model", *PROMPT_LABELS)
        self.requests = Counter(
            "promptproxy_requests",
            "Requests answered by the proxy.",
            (*base, "status_class"),
            registry=registry,
        )
        self.errors = Counter(
            "promptproxy_errors",
            "Requests that failed, by class (upstream status, timeout, interrupted stream, "
            "client disconnect, invalid request...).",
            ("route", "error_class", *PROMPT_LABELS),
            registry=registry,
        )
        self.duration = Histogram(
            "promptproxy_request_duration_seconds",
            "Time from request arrival to the last byte sent to the client.",
            base,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "promptproxy_time_to_first_token_seconds",
            "Streams only: time from request arrival to the first event sent to the client.",
            base,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "promptproxy_tokens",
            "Tokens reported by the provider, by direction (input, output).",
            (*base, "direction"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "promptproxy_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
        )
        self.draining = Gauge(
            "promptproxy_draining",
            "1 while the process is shutting down and refuses new work.",
            registry=registry,
        )
        self.registry_up = Gauge(
            "promptproxy_registry_up",
            "1 while the registry store answers; 0 while serving the last good snapshot.",
            registry=registry,
        )
        self.registry_revision = Gauge(
            "promptproxy_registry_revision",
            "Store revision of the snapshot being served.",
            registry=registry,
        )
        self.registry_staleness = Gauge(
            "promptproxy_registry_staleness_seconds",
            "Seconds since the served snapshot was last confirmed current with the store.",
            registry=registry,
        )
        self.registry_errors = Counter(
            "promptproxy_registry_errors",
            "Failed registry store operations in the background refresher.",
            ("op",),
            registry=registry,
        )
        self.log_lines_dropped = Gauge(
            "promptproxy_log_lines_dropped",
            "Log lines dropped because the log writer fell behind (a count since start).",
            registry=registry,
        )
        self.rollout_percent = Gauge(
            "promptproxy_rollout_percent",
            "Running rollouts: share of keys on the candidate, by mode (canary: served by it; "
            "shadow: also sent to it). Absent when no rollout runs.",
            ("slug", "mode", "candidate"),
            registry=registry,
        )
        self.rollout_unkeyed = Counter(
            "promptproxy_rollout_unkeyed",
            "Requests under a sticky rollout that carried no sticky key; they stay on stable.",
            ("slug",),
            registry=registry,
        )
        Info("promptproxy_build", "Build information.", registry=registry).info(
            {"version": __version__}
        )

    def series(self, route: str, model: str, slug: str, version: str, arm: str) -> Series:
        key = (route, model, slug, version, arm)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(self, key)
        return found

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        return model if model in self._models else OTHER

    def set_known_slugs(self, slugs: Iterable[str]) -> None:
        """Slugs that keep their own series (the registry's); others count as `other`."""
        self._slugs = frozenset(slugs)

    def set_rollouts(self, rollouts: Mapping[str, Rollout]) -> None:
        """Mirror the snapshot's rollouts (called on every snapshot swap, which is rare)."""
        self.rollout_percent.clear()
        for slug, rollout in rollouts.items():
            self.rollout_percent.labels(slug, rollout.mode.value, str(rollout.candidate)).set(
                rollout.percent
            )

    def slug_label(self, slug: str | None) -> str:
        if slug is None:
            return ""
        return slug if slug in self._slugs else OTHER
