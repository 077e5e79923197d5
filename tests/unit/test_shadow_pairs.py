"""Pair records (redaction), sink choice, and the bounded shadow metric labels."""

from __future__ import annotations

import time

import orjson
from prometheus_client import CollectorRegistry

from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind, ShadowRequest, ToolCall
from proxy.shadow.pairs import Pair

SUPPORT = PromptKey("support")

SECRET = "sk-CANARYabcdef1234567890"


def shadow_request(**changes: object) -> ShadowRequest:
    fields: dict[str, object] = {
        "pair_id": "pair-1",
        "request_id": "req-1",
        "key": SUPPORT,
        "rollout_id": "ro-1",
        "kind": ShadowKind.CANDIDATE,
        "primary_version": 1,
        "shadow_version": 2,
        "route": Route.CHAT,
        "method": "POST",
        "raw_tail": "/chat/completions",
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "body": b'{"model":"gpt-4o-mini"}',
        "stream": True,
        "usage_injected": True,
        "model": "gpt-4o-mini",
        "submitted_at": time.monotonic(),
    }
    fields.update(changes)
    return ShadowRequest(**fields)  # type: ignore[arg-type]


def test_pair_is_one_record_with_both_halves_and_the_join_keys() -> None:
    primary = ArmResult(version=1, status=200, text="stable", latency=0.5, ttft=0.1)
    shadow = ArmResult(version=2, status=200, text="candidate", latency=0.25)
    record = orjson.loads(Pair.build(shadow_request(), primary, shadow, 1700000000.5).to_json())
    assert {k: record[k] for k in ("pair_id", "request_id", "slug", "rollout_id", "kind")} == {
        "pair_id": "pair-1",
        "request_id": "req-1",
        "slug": "support",
        "rollout_id": "ro-1",
        "kind": "candidate",
    }
    assert (record["ts"], record["route"], record["stream"]) == (
        1700000000.5,
        "chat.completions",
        True,
    )
    assert (record["primary"]["text"], record["primary"]["ttft_ms"]) == ("stable", 100.0)
    assert (record["shadow"]["text"], record["shadow"]["latency_ms"]) == ("candidate", 250.0)


def test_secrets_in_outputs_never_reach_the_record() -> None:
    leaky = ArmResult(
        version=2,
        text=f"Your key is {SECRET}, use Authorization: Bearer {SECRET}",
        tool_calls=[
            ToolCall("call_api", f'{{"api_key": "{SECRET}", "url": "https://x/?key=abc"}}')
        ],
    )
    primary = ArmResult(version=1, text=f"echo {SECRET}")
    encoded = Pair.build(shadow_request(), primary, leaky, time.time()).to_json()
    assert b"CANARY" not in encoded
    assert b"abc" not in encoded
    record = orjson.loads(encoded)
    assert "sk-[REDACTED]" in record["shadow"]["text"]
    assert "[REDACTED]" in record["shadow"]["tool_calls"][0]["arguments"]


def test_a_pair_without_its_primary_says_so() -> None:
    pair = Pair.build(shadow_request(), None, ArmResult(version=2), time.time())
    assert not pair.paired
    assert orjson.loads(pair.to_json())["primary"] is None


def test_metric_labels_stay_bounded() -> None:
    proxy_metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
    claude = PromptKey(SUPPORT.slug, variant="claude")
    proxy_metrics.set_known_keys([SUPPORT, claude])
    proxy_metrics.set_versions_in_use({SUPPORT: [1, 2], claude: [1]})
    metrics = ShadowMetrics(
        proxy_metrics.registry, proxy_metrics.slug_label, proxy_metrics.variant_label
    )
    metrics.drop(SUPPORT, "queue_full")
    metrics.drop(PromptKey("made-up-slug-123"), "side_effects")
    metrics.drop(SUPPORT, "some new reason")
    metrics.drop(claude, "queue_full")
    metrics.drop(PromptKey(SUPPORT.slug, variant="made-up-variant"), "queue_full")
    sample = proxy_metrics.registry.get_sample_value
    dropped = "promptproxy_shadow_dropped_total"
    support = {"slug": "support", "variant": ""}
    assert sample(dropped, {**support, "reason": "queue_full"}) == 1
    assert sample(dropped, {"slug": "other", "variant": "", "reason": "side_effects"})
    assert sample(dropped, {**support, "reason": "other"})
    # A variant's shadows are its rollout's, counted apart from the default variant's.
    assert sample(dropped, {"slug": "support", "variant": "claude", "reason": "queue_full"})
    assert sample(dropped, {"slug": "other", "variant": "other", "reason": "queue_full"})
    # Pair outcomes exist from the start, so a dashboard's rate() works before the first pair.
    for outcome in ("written", "unpaired", "sink_dropped"):
        assert sample("promptproxy_shadow_pairs_total", {"outcome": outcome}) == 0.0
