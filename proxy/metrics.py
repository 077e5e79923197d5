"""Prometheus metrics on a registry the app owns (never the global one).

Label values are bounded: ``route`` is an enum, ``model`` is allow-listed (else ``other``),
``status_class`` is ``2xx``..``5xx``, ``error_class`` and ``finish_reason`` come from fixed
sets, ``slug`` and ``variant`` are those of a registry prompt key (else ``other``; the default
variant is ``""``), ``version`` is one *in use* by that key (its prod, its rollout's
candidate; else ``other``) and ``arm`` is an enum (all four empty when the request names no
prompt); ``tier`` comes from the config. No request ids, users or tenants ever become labels.
When a version goes out of use its series are removed, so a key keeps a handful of series
however many versions it has had. docs/metrics.md lists every family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary

from proxy import __version__
from proxy.metric_series import RequestFamilies, Series, SeriesKey
from proxy.prompt_key import PromptKey
from proxy.registry.models import RegistrySnapshot, Rollout

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
#: Output tokens per answer: OpenTelemetry's `gen_ai.client.token.usage` buckets (x4), cut at
#: 64k tokens, which is beyond any model's output limit today.
ANSWER_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
#: A judge's score, 0 to 1, in steps of 0.1.
JUDGE_SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
#: Seconds a 250 ms sleep overshoots; anything near 100 ms means requests stall.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: Finish reasons keep their name; anything else a provider invents is `other`. The Responses
#: API's spellings map onto the chat ones so one PromQL query covers both routes.
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "function_call",
    "completed": "stop",
    "max_output_tokens": "length",
}

PROMPT_LABELS = ("slug", "version", "arm", "variant")
OTHER = "other"
_NO_VERSIONS: frozenset[str] = frozenset()

#: A registry key's labels: its slug, its variant (``""`` for the default one) and the
#: versions that keep their own label.
KeyLabels = tuple[str, str, frozenset[str]]

#: USD per million tokens, (input, output), by the model name sent upstream.
Prices = Mapping[str, tuple[float, float]]


class ProxyMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        models: Iterable[str],
        prices: Prices | None = None,
        feedback_names: Iterable[str] = (),
        tiers: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self._models = frozenset(models)
        self._tiers = frozenset(tiers)
        self._prices: Prices = dict(prices or {})
        self._feedback_names = frozenset(feedback_names)
        self._keys: frozenset[PromptKey] = frozenset()
        #: key -> the versions that keep their own label (as strings)
        self._in_use: dict[PromptKey, frozenset[str]] = {}
        #: registry key -> its labels, so a request folds its prompt in one lookup
        self._labels: dict[PromptKey, KeyLabels] = {}
        #: (slug, variant) labels -> the versions their series keep
        self._labels_in_use: dict[tuple[str, str], frozenset[str]] = {}
        self._series: dict[SeriesKey, Series] = {}
        # The per-request families: counted lock-free per label set (see metric_series.py).
        self._families = RequestFamilies(
            self._series.values,
            latency_buckets=LATENCY_BUCKETS,
            ttft_buckets=TTFT_BUCKETS,
            answer_token_buckets=ANSWER_TOKEN_BUCKETS,
            finish_reasons=_FINISH_REASONS,
            other=OTHER,
        )
        registry.register(self._families)
        self.feedback = Summary(
            "promptproxy_feedback_value",
            "Downstream outcomes posted to /v1/feedback, attributed to the slug, version, arm "
            "and variant that answered (count and sum of values; mean = sum / count).",
            (*PROMPT_LABELS, "name"),
            registry=registry,
        )
        #: Requests being handled now: a plain count the request path adds to and takes
        #: from (a Gauge's inc and dec each take a lock), read by the gauge on scrape.
        self.requests_open = 0
        self.in_flight = Gauge(
            "promptproxy_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
        )
        self.in_flight.set_function(lambda: self.requests_open)
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
        self.registry_store_replaced = Gauge(
            "promptproxy_registry_store_replaced",
            "1 while the registry store is not the registry this replica serves (emptied, "
            "replaced or put back to an older copy): the last good snapshot keeps serving and "
            "admin writes are refused until an operator restores the store.",
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
            "shadow: also sent to it), by the prompt's variant and layer (tier or tenant "
            "override; the highest percent of that kind). Absent when no rollout runs.",
            ("slug", "variant", "layer", "mode", "candidate"),
            registry=registry,
        )
        self.rollout_unkeyed = Counter(
            "promptproxy_rollout_unkeyed",
            "Requests under a sticky rollout that carried no sticky key; they stay on stable.",
            ("slug",),
            registry=registry,
        )
        self.rollout_fallbacks = Counter(
            "promptproxy_rollout_fallbacks",
            "Requests a canary's candidate could not serve (its template, or its model's "
            "provider, refused them), answered by stable instead, by reason.",
            ("slug", "reason"),
            registry=registry,
        )
        self.redis_errors = Counter(
            "promptproxy_redis_errors",
            "Failed Redis operations outside the registry refresher (analysis statistics, "
            "lease, verdicts, feedback index), by operation.",
            ("op",),
            registry=registry,
        )
        self.usage_pending = Gauge(
            "promptproxy_usage_pending_rows",
            "Per-tenant usage rows (tenant, slug, variant, minute) this replica holds until "
            "its next flush to the store; rising: the store refuses the flushes.",
            registry=registry,
        )
        self.captures = Counter(
            "promptproxy_captures",
            "Captured calls (capture.slugs) by what became of them: written to the store, or "
            "dropped: queue_full (past capture.queue_size), too_large (past "
            "capture.max_bytes), store_failed (the store refused the batch).",
            ["result"],
            registry=registry,
        )
        self.judge_score = Histogram(
            "promptproxy_judge_score",
            "Online judging (evals.online): the judge's score (0 to 1) of sampled served "
            "answers, by the slug, version, arm and variant that answered.",
            PROMPT_LABELS,
            buckets=JUDGE_SCORE_BUCKETS,
            registry=registry,
        )
        self.online_judge = Counter(
            "promptproxy_online_judge",
            "Answers sampled for online judging by what became of them: scored, queue_full "
            "(past evals.online_queue_size), judge_failed (the judge's call failed or gave no "
            "score), no_judge (the judge has no prod version or pins no model).",
            ["result"],
            registry=registry,
        )
        self.usage_dropped = Counter(
            "promptproxy_usage_dropped_rows",
            "Per-tenant usage rows given up: the store could not take them in time (past "
            "usage.max_pending_rows, or older than usage.keep_days), or whether a write "
            "added them is unknown (never sent again).",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "promptproxy_event_loop_lag_seconds",
            "How late the event loop wakes a 250 ms timer: time every request waits too.",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.analysis_verdicts = Counter(
            "promptproxy_analysis_verdicts",
            "Automated rollout analysis verdicts (pass, fail, inconclusive), counted by the "
            "replica holding the slug's analysis lease.",
            ("slug", "verdict"),
            registry=registry,
        )
        self.analysis_actions = Counter(
            "promptproxy_analysis_actions",
            "Rollout changes made by the analyser (abort, ramp, promote).",
            ("slug", "action"),
            registry=registry,
        )
        self.analysis_leader = Gauge(
            "promptproxy_analysis_leader",
            "Analysed rollouts of the slug (its base, variants, overrides) whose analysis "
            "lease this replica holds: 1 for a slug with one rollout. Absent once none runs.",
            ("slug",),
            registry=registry,
        )
        self.connections_closed = Counter(
            "promptproxy_connections_closed",
            "Client connections the proxy closed on a deadline, by port (data, admin) and "
            "reason: header_timeout (no complete request head in time: slow or silent "
            "clients, slowloris), body_timeout (body still incomplete; answered 408) or idle "
            "(keep-alive connection unused too long).",
            ("port", "reason"),
            registry=registry,
        )
        self.connections_open = Gauge(
            "promptproxy_connections_open",
            "Client connections open now, by port (data, admin).",
            ("port",),
            registry=registry,
        )
        self.upstream_pool_in_use = Gauge(
            "promptproxy_upstream_pool_in_use",
            "Upstream connections in use now (a stream holds one for its whole answer).",
            registry=registry,
        )
        self.upstream_pool_waiting = Gauge(
            "promptproxy_upstream_pool_waiting",
            "Requests waiting for a free upstream connection (all upstream.max_connections "
            "in use); after upstream.pool_wait_seconds they get a 503.",
            registry=registry,
        )
        self.upstream_pool_limit = Gauge(
            "promptproxy_upstream_pool_limit",
            "upstream.max_connections: the pool's size.",
            registry=registry,
        )
        Info("promptproxy_build", "Build information.", registry=registry).info(
            {"version": __version__}
        )

    def series(
        self,
        route: str,
        model: str,
        key: PromptKey | None,
        version: str,
        arm: str,
        tier: str | None = None,
        provider: str | None = None,
    ) -> Series:
        """The cached children for these labels; the prompt ``key`` (which names the
        variant served), ``version`` and the tenant's ``tier`` are raw and folded here
        (``model`` is already a label: see ``model_label``). A tier outside
        ``tenants.tiers`` (a record older than the config) is ``other``; no tenant, ``""``.
        The tenant itself is never a label. ``provider`` is a configured provider's name
        (``""``: the request never reached one)."""
        slug, version, variant = self.prompt_labels(key, version)
        labels = (
            route,
            model,
            slug,
            version,
            arm,
            "" if not tier else tier if tier in self._tiers else OTHER,
            variant,
            provider or "",
        )
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = Series(labels, self._families)
        return found

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        return model if model in self._models else OTHER

    def price_of(self, model: str | None) -> tuple[float, float] | None:
        return None if model is None else self._prices.get(model)

    def feedback_label(self, name: str) -> str:
        return name if name in self._feedback_names else OTHER

    def prompt_labels(self, key: PromptKey | None, version: str) -> tuple[str, str, str]:
        """The (slug, version, variant) labels of an answer by ``key``'s ``version``: all
        ``""`` without a prompt. A key the registry does not know is what a caller typed, so
        none of its names becomes a label."""
        if key is None:
            return "", "", ""
        known = self._labels.get(key)
        if known is None:
            return OTHER, OTHER if version else "", "" if key.variant is None else OTHER
        slug, variant, in_use = known
        return slug, "" if not version else version if version in in_use else OTHER, variant

    def version_label(self, key: PromptKey, version: str) -> str:
        known = self._labels.get(key)
        return version if known is not None and version in known[2] else OTHER

    def set_known_keys(self, keys: Iterable[PromptKey]) -> None:
        """Keys whose slug and variant keep their own series (the registry's); others
        count as `other`."""
        self._keys = frozenset(keys)
        self._relabel()

    def set_registry(self, snapshot: RegistrySnapshot) -> None:
        """Follow a new snapshot: its keys, its versions in use, its rollouts. Series of
        versions that left use are removed (their later requests count as `other`)."""
        self.set_known_keys(snapshot.versions)
        in_use: dict[PromptKey, set[int]] = {key: {v} for key, v in snapshot.prod.items()}
        for key, rollout in snapshot.rollouts.items():
            in_use.setdefault(key, set()).add(rollout.candidate)
        self.set_versions_in_use(in_use)
        self.set_rollouts(snapshot.rollouts)

    def set_versions_in_use(self, in_use: Mapping[PromptKey, Iterable[int]]) -> None:
        self._in_use = {key: frozenset(map(str, vs)) for key, vs in in_use.items()}
        self._relabel()
        self._prune()

    def _relabel(self) -> None:
        labels: dict[PromptKey, KeyLabels] = {}
        in_use: dict[tuple[str, str], frozenset[str]] = {}
        for key in self._keys:
            variant = key.variant or ""
            if key.layer is not None:
                # An override's version numbers count its own line: under its base's
                # series they would read as the base's versions. Its layer, which may
                # name a tenant, is never a label.
                labels[key] = (key.slug, variant, _NO_VERSIONS)
                continue
            # One base key per (slug, variant): a variant's versions never keep, or
            # prune, the default variant's series of the same number.
            versions = self._in_use.get(key, _NO_VERSIONS)
            labels[key] = (key.slug, variant, versions)
            in_use[key.slug, variant] = versions
        self._labels = labels
        self._labels_in_use = in_use

    def _prune(self) -> None:
        for labels in list(self._series):
            _, _, slug, version, _, _, variant, _ = labels
            if not version or version == OTHER:
                continue
            if version in self._labels_in_use.get((slug, variant), ()):
                continue
            del self._series[labels]

    def set_rollouts(self, rollouts: Mapping[PromptKey, Rollout]) -> None:
        """Mirror the snapshot's rollouts (called on every snapshot swap, which is rare)."""
        self.rollout_percent.clear()
        # A slug's base, variants and overrides roll out apart; tenants are no label, so
        # the overrides of one kind share a series, showing the highest percent.
        shown: dict[tuple[str, str, str, str, str], float] = {}
        for key, rollout in rollouts.items():
            labels: tuple[str, str, str, str, str] = (
                key.slug,
                key.variant or "",
                "" if key.layer is None else key.layer.kind,
                rollout.mode.value,
                str(rollout.candidate),
            )
            shown[labels] = max(shown.get(labels, 0.0), rollout.percent)
        for labels, percent in shown.items():
            self.rollout_percent.labels(*labels).set(percent)

    def slug_label(self, key: PromptKey | None) -> str:
        """The ``slug`` label of ``key``: its slug while the registry knows the key."""
        if key is None:
            return ""
        known = self._labels.get(key)
        return OTHER if known is None else known[0]

    def variant_label(self, key: PromptKey | None) -> str:
        """The ``variant`` label of ``key``: its variant while the registry knows the key,
        ``""`` for the default variant."""
        if key is None or key.variant is None:
            return ""
        known = self._labels.get(key)
        return OTHER if known is None else known[1]
