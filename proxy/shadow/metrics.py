"""Shadow metrics, on the app's own registry next to ``ProxyMetrics``.

Labels stay bounded: ``slug`` and ``variant`` go through ``ProxyMetrics.slug_label`` and
``variant_label`` (the registry's, else ``other``; a slug's variants are separate version
lines with rollouts of their own, so their shadows are counted apart), ``outcome`` and
``reason`` come from fixed sets. Pair ids never become labels.
The per-request families (tokens, latency, errors) are counted on ``ProxyMetrics`` with
``arm="shadow"``; see ``runner``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.prompt_key import PromptKey
from proxy.shadow.compare import Divergence

OTHER = "other"
DIVERGENCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)

#: Why a shadow was not sent. The runner drops for the first four; the pipeline reports the
#: rest through ``ShadowRunner.skip``. Anything else is counted as ``other``.
DROP_REASONS = frozenset(
    {
        "queue_full",
        "stale",
        "draining",
        "cancelled",
        "side_effects",
        "not_completion",
        "body_too_large",
        "render_failed",
        "model_not_served",
        "untranslatable",
        "responses_store",
        OTHER,
    }
)
REQUEST_OUTCOMES = ("sent", "completed", "failed")
#: ``written``: persisted by the sink. ``sink_dropped``: lost (sink queue full, sink down).
#: ``unpaired``: handed to the sink without its primary half (also counted when written).
PAIR_OUTCOMES = ("written", "unpaired", "sink_dropped")


def _fold_all(key: PromptKey | None) -> str:
    return "" if key is None else OTHER


def _fold_variant(key: PromptKey | None) -> str:
    return "" if key is None or key.variant is None else OTHER


class ShadowMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        slug_label: Callable[[PromptKey | None], str] = _fold_all,
        variant_label: Callable[[PromptKey | None], str] = _fold_variant,
    ) -> None:
        """``slug_label`` and ``variant_label`` are ``ProxyMetrics``'; without them every
        slug and every named variant is ``other``."""
        self._slug_label = slug_label
        self._variant_label = variant_label
        self.requests = Counter(
            "promptproxy_shadow_requests",
            "Shadow calls: sent to the provider, then completed (2xx, whole answer) or failed.",
            ("slug", "variant", "outcome"),
            registry=registry,
        )
        self.dropped = Counter(
            "promptproxy_shadow_dropped",
            "Shadows not sent, by reason (queue full, stale in queue, draining, or skipped by "
            "the pipeline: side effects, not a completion, body too large).",
            ("slug", "variant", "reason"),
            registry=registry,
        )
        self.pairs = Counter(
            "promptproxy_shadow_pairs",
            "Primary/shadow pairs: written by the sink, unpaired (primary never finished), "
            "or dropped by the sink.",
            ("outcome",),
            registry=registry,
        )
        self.in_flight = Gauge(
            "promptproxy_shadow_in_flight",
            "Shadow calls running now.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "promptproxy_shadow_queue_depth",
            "Shadow calls waiting for a slot.",
            registry=registry,
        )
        self.divergence = Histogram(
            "promptproxy_shadow_divergence",
            "Divergence of shadow pairs, 0 (same) to 1, by kind (candidate: stable against "
            "the candidate; stable: stable against itself, the noise floor) and measure.",
            ("slug", "variant", "kind", "measure"),
            buckets=DIVERGENCE_BUCKETS,
            registry=registry,
        )
        for outcome in PAIR_OUTCOMES:  # export zeros, so rates work from the first scrape
            self.pairs.labels(outcome)

    def request(self, key: PromptKey | None, outcome: str) -> None:
        self.requests.labels(self._slug_label(key), self._variant_label(key), outcome).inc()

    def drop(self, key: PromptKey, reason: str) -> None:
        label = reason if reason in DROP_REASONS else OTHER
        self.dropped.labels(self._slug_label(key), self._variant_label(key), label).inc()

    def diverged(self, key: PromptKey, kind: str, divergence: Divergence) -> None:
        slug, variant = self._slug_label(key), self._variant_label(key)
        for measure, value in divergence.to_dict().items():
            if value is not None:
                self.divergence.labels(slug, variant, kind, measure).observe(value)

    def pair(self, outcome: str, count: int = 1) -> None:
        """Thread-safe: the file sink's writer thread reports from outside the loop."""
        self.pairs.labels(outcome).inc(count)
