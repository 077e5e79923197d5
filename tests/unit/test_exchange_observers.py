"""The one ordered list of what sees an exchange finish (``pipeline/record.py``), given a
shadowed primary and its shadow call: each observer counts each arm as it should."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from proxy.analysis.window import WindowRecorder
from proxy.config import FeedbackConfig
from proxy.exchange.answer import Answer
from proxy.exchange.outcome import Exchange
from proxy.feedback import FeedbackService, MemoryRequestIndex
from proxy.log import ACCESS_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.pipeline.record import exchange_observers, settle
from proxy.prompt_key import PromptKey
from proxy.shadow.models import ArmResult

NOW = 1_000.0


def primary(pair: asyncio.Future[Exchange] | None = None) -> Exchange:
    answer = Answer(100)
    answer.add_text("stable answer")
    ex = Exchange(
        request_id="req-1",
        method="POST",
        route=Route.CHAT,
        started=0.0,
        key=PromptKey("support"),
        version="1",
        arm="stable",
        model_requested="gpt-4o-mini",
        status=200,
        duration=0.25,
        output_tokens=3,
        finish_reason="stop",
        rollout_id="ro-1",
        answer=answer,
        pair=pair,
    )
    settle(ex)
    return ex


def shadow(kind: str = "candidate", error_class: str | None = None) -> Exchange:
    return Exchange(
        request_id="req-1",
        method="POST",
        route=Route.CHAT,
        started=0.0,
        key=PromptKey("support"),
        version="2",
        arm="shadow",
        model_sent="gpt-4o-mini",
        status=200 if error_class is None else 0,
        duration=0.5,
        output_tokens=7,
        finish_reason="stop",
        error_class=error_class,
        rollout_id="ro-1",
        pair_id="req-1",
        shadow_kind=kind,
    )


class Process:
    def __init__(self) -> None:
        self.metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
        self.metrics.set_known_keys([PromptKey("support")])
        self.metrics.set_versions_in_use({PromptKey("support"): [1, 2]})
        self.window = WindowRecorder(lambda: NOW)
        self.index = MemoryRequestIndex(3600, 100, clock=lambda: NOW)
        feedback = FeedbackService(FeedbackConfig(), self.index, self.metrics, self.window)
        self.finished = exchange_observers(self.metrics, self.window, feedback.remember)

    def requests(self, version: str, arm: str) -> float:
        labels = {
            "route": "chat.completions",
            "model": "gpt-4o-mini",
            "slug": "support",
            "version": version,
            "arm": arm,
            "tier": "",
            "variant": "",
            "provider": "",
            "status_class": "2xx",
        }
        return self.metrics.registry.get_sample_value("promptproxy_requests_total", labels) or 0


async def test_a_primary_and_its_shadow_go_through_the_same_observers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = Process()
    half: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
    first = primary(half)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    process.finished.finished(first)
    process.finished.finished(shadow())
    process.finished.finished(shadow("stable"))

    # Metrics: each arm its own series.
    assert (process.requests("1", "stable"), process.requests("2", "shadow")) == (1, 2)
    # Analysis: the served arm, the shadow and the rerun of stable.
    (batch,) = process.window.drain().values()
    (arms,) = batch.slots.values()
    assert {arm: stats.requests for arm, stats in arms.items()} == {
        "stable": 1,
        "shadow": 1,
        "rerun": 1,
    }
    # Feedback: the answer the caller got, never the shadow's (same request id).
    answered = await process.index.lookup("req-1")
    assert answered is not None
    assert (answered.version, answered.arm) == ("1", "stable")
    # Access log: one line per exchange, each in its own shape.
    lines = [record.msg for record in caplog.records if record.name == ACCESS_LOGGER]
    assert [line["event"] for line in lines] == ["request", "shadow", "shadow"]
    assert lines[1]["kind"] == "candidate"
    # Pair half: the waiting shadow gets the primary's exchange, text and all.
    assert half.done()
    assert half.result() is first
    assert ArmResult.of(half.result()).text == "stable answer"


def test_what_says_nothing_about_the_prompt_is_left_out_of_the_analysis() -> None:
    process = Process()
    gone = primary()
    gone.error_class = "client_disconnected"
    pinned = primary()
    pinned.arm = "pinned"
    for exchange in (gone, pinned, shadow(error_class="cancelled")):
        process.finished.finished(exchange)
    assert process.window.drain() == {}
    assert process.requests("1", "pinned") == 1  # still counted in the metrics
