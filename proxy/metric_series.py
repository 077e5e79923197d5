"""The per-request metric families, counted without a lock and exported on scrape.

Every finished exchange adds to up to eight children (requests, duration, tokens in and
out, answer length, cost, finish reason, error). prometheus_client takes a lock for each
``inc`` and ``observe`` (its values may be shared with other threads): measured, that was
7 % of a swap-in request's instructions. Here each label set's ``Series`` holds plain
numbers that only the event loop's thread writes, and ``RequestFamilies`` turns them into
the same families, names, labels, buckets and ``_created`` samples when the registry is
scraped (on the loop's thread too: the admin app serves ``/metrics``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

#: (route, model, slug, version, arm, tier, variant)
SeriesKey = tuple[str, str, str, str, str, str, str, str]

_BASE = ("route", "model", "slug", "version", "arm", "tier", "variant", "provider")


class Buckets:
    """One histogram child: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("_bounds", "_les", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...], les: tuple[str, ...]) -> None:
        self._bounds = bounds
        self._les = les  # the `le` label of each bucket, +Inf last
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Prometheus' `le` means.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for le, count in zip(self._les, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


def le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The `le` labels prometheus_client writes for these bounds (``1`` is ``1.0``)."""
    to_go: Callable[[float], str] = floatToGoString
    return tuple(to_go(bound) for bound in (*bounds, math.inf))


def estimated_cost(price: tuple[float, float], input_tokens: int, output_tokens: int) -> float:
    """US dollars for these tokens at ``price`` (input, output) per million; 0 for a
    result that is not a positive finite number (a provider's absurd token counts)."""
    cost = (input_tokens * price[0] + output_tokens * price[1]) / 1e6
    return cost if cost > 0 and math.isfinite(cost) else 0.0


class Series:
    """The numbers of one (route, model, slug, version, arm, tier, variant, provider), found
    once per request."""

    __slots__ = (
        "_reasons",
        "answer_tokens",
        "cost",
        "created",
        "duration",
        "errors",
        "finish_reasons",
        "input_tokens",
        "key",
        "output_tokens",
        "requests",
        "ttft",
    )

    def __init__(self, key: SeriesKey, families: RequestFamilies) -> None:
        self.key = key
        self.created = time.time()
        self.duration = Buckets(*families.latency)
        self.ttft = Buckets(*families.ttft)
        self.answer_tokens = Buckets(*families.answer_tokens)
        self._reasons = families.finish_reason_label
        self.input_tokens = 0.0
        self.output_tokens = 0.0
        self.cost = 0.0
        #: status class -> count; error class -> count; finish reason label -> count
        self.requests: dict[str, float] = {}
        self.errors: dict[str, float] = {}
        self.finish_reasons: dict[str, float] = {}

    def observe(
        self,
        status_class: str,
        duration: float,
        ttft: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        error_class: str | None,
        finish_reason: str | None = None,
        price: tuple[float, float] | None = None,
    ) -> None:
        """Count one finished call (a request, or a shadow copy of one). ``price`` is the
        model's (input, output) USD per million tokens, when the config knows it."""
        requests = self.requests
        requests[status_class] = requests.get(status_class, 0.0) + 1
        self.duration.observe(duration)
        if ttft is not None:
            self.ttft.observe(ttft)
        if input_tokens:
            self.input_tokens += input_tokens
        if output_tokens is not None and error_class is None:
            self.answer_tokens.observe(output_tokens)
        if output_tokens:
            self.output_tokens += output_tokens
        if price is not None and (input_tokens or output_tokens):
            self.cost += estimated_cost(price, input_tokens or 0, output_tokens or 0)
        if error_class is not None:
            errors = self.errors
            errors[error_class] = errors.get(error_class, 0.0) + 1
        if finish_reason is not None:
            label = self._reasons(finish_reason)
            reasons = self.finish_reasons
            reasons[label] = reasons.get(label, 0.0) + 1


class RequestFamilies(Collector):
    """The per-request families of every live ``Series``, built on each scrape."""

    def __init__(
        self,
        series: Callable[[], Iterable[Series]],
        *,
        latency_buckets: tuple[float, ...],
        ttft_buckets: tuple[float, ...],
        answer_token_buckets: tuple[float, ...],
        finish_reasons: Mapping[str, str],
        other: str,
    ) -> None:
        """``finish_reasons`` maps a provider's reason to its label; others are ``other``."""
        self._series = series
        self.latency = (latency_buckets, le_labels(latency_buckets))
        self.ttft = (ttft_buckets, le_labels(ttft_buckets))
        self.answer_tokens = (answer_token_buckets, le_labels(answer_token_buckets))
        self._finish_reasons = dict(finish_reasons)
        self._other = other

    def finish_reason_label(self, reason: str) -> str:
        return self._finish_reasons.get(reason, self._other)

    def describe(self) -> Iterator[Metric]:
        """The families without samples: how the registry learns the names it must keep
        unique, without a scrape."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, errors, duration, ttft, tokens, reasons, answer, cost = self._families()
        # Two families drop a label of the series, so several series add to one child: the
        # cost child is shared by the routes of one (model, slug, version, arm, tier,
        # variant), the error child by the models of one route. Written once per series,
        # they would be samples with identical labels: Prometheus drops all but one, so a
        # model's count is lost.
        costs: dict[tuple[str, ...], list[float]] = {}
        errs: dict[tuple[str, ...], list[float]] = {}
        for s in list(self._series()):
            key, created = list(s.key), s.created
            for status_class, count in s.requests.items():
                requests.add_metric([*key, status_class], count, created=created)
            route, model, slug, version, arm, tier, variant, provider = key
            for error_class, count in s.errors.items():
                error_labels = (route, error_class, slug, version, arm, tier, variant, provider)
                _add(errs, error_labels, count, created)
            for name, hist, family in (
                ("promptproxy_request_duration_seconds", s.duration, duration),
                ("promptproxy_time_to_first_token_seconds", s.ttft, ttft),
                ("promptproxy_answer_tokens", s.answer_tokens, answer),
            ):
                family.add_metric(key, hist.cumulative(), hist.sum)
                family.samples.append(
                    Sample(f"{name}_created", dict(zip(_BASE, key, strict=True)), created)
                )
            tokens.add_metric([*key, "input"], s.input_tokens, created=created)
            tokens.add_metric([*key, "output"], s.output_tokens, created=created)
            for reason, count in s.finish_reasons.items():
                reasons.add_metric([*key, reason], count, created=created)
            _add(costs, (model, slug, version, arm, tier, variant, provider), s.cost, created)
        for labels, (value, created) in errs.items():
            errors.add_metric(list(labels), value, created=created)
        for labels, (value, created) in costs.items():
            cost.add_metric(list(labels), value, created=created)
        return iter((requests, errors, duration, ttft, tokens, reasons, answer, cost))

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "promptproxy_requests",
                "Requests answered by the proxy.",
                labels=(*_BASE, "status_class"),
            ),
            CounterMetricFamily(
                "promptproxy_errors",
                "Requests that failed, by class (upstream status, timeout, interrupted "
                "stream, client disconnect, invalid request...).",
                labels=(
                    "route",
                    "error_class",
                    "slug",
                    "version",
                    "arm",
                    "tier",
                    "variant",
                    "provider",
                ),
            ),
            HistogramMetricFamily(
                "promptproxy_request_duration_seconds",
                "Time from request arrival to the last byte sent to the client.",
                labels=_BASE,
            ),
            HistogramMetricFamily(
                "promptproxy_time_to_first_token_seconds",
                "Streams only: time from request arrival to the first event sent to the client.",
                labels=_BASE,
            ),
            CounterMetricFamily(
                "promptproxy_tokens",
                "Tokens reported by the provider, by direction (input, output).",
                labels=(*_BASE, "direction"),
            ),
            CounterMetricFamily(
                "promptproxy_finish_reasons",
                "Answers by finish reason (stop, length, tool_calls, content_filter, "
                "function_call, other). A rising `length` share means truncated answers.",
                labels=(*_BASE, "finish_reason"),
            ),
            HistogramMetricFamily(
                "promptproxy_answer_tokens",
                "Output tokens per successful answer (the answer length).",
                labels=_BASE,
            ),
            CounterMetricFamily(
                "promptproxy_cost_usd",
                "Estimated cost in US dollars, from the token counts and the configured "
                "price table (models without a price add nothing).",
                labels=("model", "slug", "version", "arm", "tier", "variant", "provider"),
            ),
        )


def _add(
    children: dict[tuple[str, ...], list[float]],
    labels: tuple[str, ...],
    value: float,
    created: float,
) -> None:
    """Add one series' ``value`` to the child of ``labels`` that several series share; that
    child was created when its oldest series was."""
    shared = children.get(labels)
    if shared is None:
        children[labels] = [value, created]
    else:
        shared[0] += value
        shared[1] = min(shared[1], created)
