"""Per-version metrics: what an operator reads off /metrics, and that labels stay bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from proxy.exchange.outcome import Exchange
from proxy.exchange.recorders import RecordMetrics
from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.prompt_key import Layer, PromptKey
from proxy.registry.models import RegistrySnapshot

SUPPORT = PromptKey("support")
CLAUDE = PromptKey("support", variant="claude")


def _snapshot(prod: dict[str, int], rollouts: dict | None = None) -> RegistrySnapshot:
    return RegistrySnapshot(
        revision=1,
        versions={key: {} for key in prod},
        prod=prod,
        rollouts=rollouts or {},
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _answer(metrics: ProxyMetrics, slug: str, version: str, **kw: object) -> None:
    key = PromptKey(slug)
    args: dict[str, object] = {
        "status_class": "2xx",
        "duration": 0.1,
        "ttft": None,
        "input_tokens": 100,
        "output_tokens": 50,
        "error_class": None,
        "finish_reason": "stop",
        "price": None,
    }
    args.update(kw)
    metrics.series("chat.completions", "gpt-4o-mini", key, version, "stable").observe(
        **args  # type: ignore[arg-type]
    )


def test_finish_reasons_answer_tokens_and_cost_are_counted_per_version() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini"])
    metrics.set_registry(_snapshot({PromptKey("support"): 3}))
    _answer(metrics, "support", "3", price=(0.15, 0.60))
    _answer(metrics, "support", "3", finish_reason="length", output_tokens=4000)
    _answer(metrics, "support", "3", finish_reason="max_output_tokens")  # Responses spelling
    labels = {
        "route": "chat.completions",
        "model": "gpt-4o-mini",
        "slug": "support",
        "version": "3",
        "arm": "stable",
        "tier": "",
        "variant": "",
        "provider": "",
    }
    finish = "promptproxy_finish_reasons_total"
    assert _value(registry, finish, **labels, finish_reason="length") == 2
    assert _value(registry, finish, **labels, finish_reason="stop") == 1
    assert _value(registry, "promptproxy_answer_tokens_count", **labels) == 3
    assert _value(registry, "promptproxy_answer_tokens_bucket", **labels, le="64.0") == 2
    cost = _value(
        registry,
        "promptproxy_cost_usd_total",
        model="gpt-4o-mini",
        slug="support",
        version="3",
        arm="stable",
        tier="",
        variant="",
        provider="",
    )
    assert cost is not None
    assert abs(cost - (100 * 0.15 + 50 * 0.60) / 1e6) < 1e-12


def test_only_versions_in_use_keep_their_series() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini"])
    metrics.set_registry(_snapshot({PromptKey("support"): 3}))
    _answer(metrics, "support", "3")
    _answer(metrics, "support", "1")  # an old version, pinned by some caller
    text = generate_latest(registry).decode()
    assert 'version="3"' in text
    assert 'version="1"' not in text
    assert 'version="other"' in text

    # v4 becomes prod: v3's series go away, so a slug never accumulates one per version.
    metrics.set_registry(_snapshot({PromptKey("support"): 4}))
    _answer(metrics, "support", "4")
    text = generate_latest(registry).decode()
    assert 'version="3"' not in text
    assert 'version="4"' in text


def test_ten_thousand_models_and_slugs_keep_the_series_count_bounded() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini"])
    metrics.set_registry(_snapshot({PromptKey("support"): 3}))

    def series_count() -> int:
        return sum(len(family.samples) for family in registry.collect())

    _answer(metrics, "support", "3")
    for i in range(10_000):
        model = metrics.model_label(f"made-up-model-{i}")
        metrics.series(
            "chat.completions", model, PromptKey(f"bad-slug-{i}"), "1", "stable"
        ).observe("4xx", 0.01, None, None, None, "invalid_request")
        metrics.series("chat.completions", model, None, "", "").observe(
            "2xx", 0.01, None, 10, 10, None, "stop"
        )
    bounded = series_count()
    for i in range(10_000, 12_000):
        model = metrics.model_label(f"made-up-model-{i}")
        metrics.series(
            "chat.completions", model, PromptKey(f"bad-slug-{i}"), "7", "canary"
        ).observe("5xx", 0.01, None, None, None, "upstream_5xx")
    assert series_count() <= bounded + 60  # one new arm's children, not one per request
    assert "made-up-model" not in generate_latest(registry).decode()
    assert "bad-slug" not in generate_latest(registry).decode()


def test_errors_of_two_models_with_the_same_labels_are_one_sample() -> None:
    """``errors_total`` has no model label: two models failing alike add to one child,
    as ``cost_usd_total`` does, never two samples with identical labels."""
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o-mini", "gpt-4o"])
    metrics.set_registry(_snapshot({PromptKey("support"): 3}))
    for model, failures in (("gpt-4o-mini", 2), ("gpt-4o", 3)):
        for _ in range(failures):
            metrics.series("chat.completions", model, PromptKey("support"), "3", "stable").observe(
                "5xx", 0.1, None, None, None, "upstream_5xx"
            )
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("promptproxy_errors_total{")
    ]
    assert lines == [
        'promptproxy_errors_total{arm="stable",error_class="upstream_5xx",provider="",'
        'route="chat.completions",slug="support",tier="",variant="",version="3"} 5.0'
    ]


def _served(metrics: ProxyMetrics, key: PromptKey, version: str, model: str = "gpt-4o") -> None:
    """One answer recorded as the request path records it: by its exchange."""
    RecordMetrics(metrics).finished(
        Exchange(
            request_id="r",
            method="POST",
            route=Route.CHAT,
            started=0.0,
            key=key,
            version=version,
            arm="stable",
            model_requested=model,
            status=200,
            duration=0.1,
            output_tokens=5,
            finish_reason="stop",
        )
    )


def _requests(registry: CollectorRegistry, version: str, variant: str) -> float | None:
    labels = {
        "route": "chat.completions",
        "model": "gpt-4o",
        "slug": "support",
        "version": version,
        "arm": "stable",
        "tier": "",
        "variant": variant,
        "provider": "",
        "status_class": "2xx",
    }
    return _value(registry, "promptproxy_requests_total", **labels)


def test_a_variant_is_counted_under_its_own_label_with_its_own_versions() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o"])
    metrics.set_registry(_snapshot({SUPPORT: 3, CLAUDE: 1}))
    _served(metrics, CLAUDE, "1")
    _served(metrics, CLAUDE, "1")
    _served(metrics, SUPPORT, "3")
    assert _requests(registry, "1", "claude") == 2
    assert _requests(registry, "3", "") == 1
    # Each variant's version is its own: the default's prod number is no version of
    # claude's in use, and claude's none of the default's.
    _served(metrics, CLAUDE, "3")
    _served(metrics, SUPPORT, "1")
    assert _requests(registry, "other", "claude") == 1
    assert _requests(registry, "other", "") == 1
    assert _requests(registry, "3", "claude") is None
    assert _requests(registry, "1", "") is None


def test_a_variant_version_leaving_use_removes_only_that_variants_series() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o"])
    metrics.set_registry(_snapshot({SUPPORT: 2, CLAUDE: 2}))
    _served(metrics, SUPPORT, "2")
    _served(metrics, CLAUDE, "2")
    # claude moves to v3; the default keeps v2, the same number.
    metrics.set_registry(_snapshot({SUPPORT: 2, CLAUDE: 3}))
    assert _requests(registry, "2", "") == 1
    assert _requests(registry, "2", "claude") is None
    _served(metrics, CLAUDE, "3")
    assert _requests(registry, "3", "claude") == 1


def test_variant_labels_are_the_registrys_and_a_layer_is_never_one() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, ["gpt-4o"])
    acme = PromptKey("support", Layer("tenant", "acme"), "claude")
    metrics.set_registry(_snapshot({SUPPORT: 3, CLAUDE: 1, acme: 1}))
    for i in range(1_000):
        _served(metrics, PromptKey("support", variant=f"made-up-{i}"), "1")
    _served(metrics, acme, "1")
    text = generate_latest(registry).decode()
    assert "made-up" not in text
    assert "acme" not in text
    assert (
        _value(
            registry,
            "promptproxy_requests_total",
            route="chat.completions",
            model="gpt-4o",
            slug="other",
            version="other",
            arm="stable",
            tier="",
            variant="other",
            provider="",
            status_class="2xx",
        )
        == 1_000
    )
    # An override's versions are its own line's: under the base's series they would read
    # as claude's v1.
    assert _requests(registry, "other", "claude") == 1
    assert _requests(registry, "1", "claude") is None
    assert metrics.prompt_labels(None, "") == ("", "", "")
    assert metrics.variant_label(SUPPORT) == ""
    assert metrics.variant_label(CLAUDE) == "claude"
