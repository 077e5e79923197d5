"""ShadowRunner against a real provider on 127.0.0.1: slow, refusing, failing, hanging.

What a user of the proxy would notice: submit never waits, the number of shadow calls in
flight never passes the cap, what does not fit is dropped and counted by reason, failures
are recorded (never raised, never retried), every started shadow ends as one pair, and
shutdown takes at most its grace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import ProxyConfig, ShadowConfig, UpstreamConfig
from proxy.exchange.answer import Answer
from proxy.exchange.outcome import Exchange
from proxy.exchange.upstream import UpstreamClient, UpstreamLimits
from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.pipeline.record import exchange_observers
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ShadowKind, ShadowRequest
from proxy.shadow.pairs import Pair
from proxy.shadow.runner import ShadowRunner
from tests.processes import free_port

SUPPORT = PromptKey("support")

PROVIDER_KEY = "sk-provider-key-123456"


class Provider:
    """An OpenAI-like provider whose behaviour is picked by the path: /v1/<mode>."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.active = 0
        self.peak = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/{mode}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        body = await request.read()
        self.received.append((mode, dict(request.headers), body))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if mode == "slow":
                await asyncio.sleep(10)
            elif mode == "delay":
                await asyncio.sleep(float(request.query["s"]))
            elif mode == "wait":
                await self.release.wait()
            elif mode == "error":
                return web.json_response({"error": {"message": "boom"}}, status=500)
            elif mode == "redirect":
                raise web.HTTPFound("/v1/ok")
            elif mode == "garbage":
                return web.Response(body=b"<html>oops</html>", content_type="application/json")
            elif mode == "hang-mid-stream":
                return await self.stream(request, hang=True)
            if orjson.loads(body).get("stream"):
                return await self.stream(request, first_delay=float(request.query.get("first", 0)))
            return web.json_response(
                {
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "shadow answer"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3},
                }
            )
        finally:
            self.active -= 1

    async def stream(
        self, request: web.Request, first_delay: float = 0.0, hang: bool = False
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({"model": "gpt-4o-mini", "choices": [choice]}) + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(first_delay)
        await response.write(chunk({"content": "shadow "}))
        if hang:
            await asyncio.sleep(60)
        await response.write(chunk({"content": "answer"}))
        await response.write(chunk({}, "stop"))
        usage = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
        await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class ListSink:
    def __init__(self) -> None:
        self.pairs: list[Pair] = []
        self.closed = False

    def add(self, pair: Pair) -> None:
        self.pairs.append(pair)

    async def read(self, key: PromptKey, since: float | None, limit: int) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.pairs][-limit:]

    async def follow(self, key: PromptKey, since: float | None) -> AsyncIterator[dict[str, Any]]:
        for p in self.pairs:
            yield p.to_dict()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    fake = Provider()
    runner = web.AppRunner(fake.app(), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}/v1"
    fake.release.set()
    await runner.cleanup()


class Harness:
    def __init__(self, base_url: str, **config: Any) -> None:
        self.metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
        self.metrics.set_known_keys([SUPPORT])
        self.metrics.set_versions_in_use({SUPPORT: [1, 2]})
        self.config = ShadowConfig.model_validate({"pair_wait_seconds": 5, **config})
        self.sink = ListSink()
        shadow_metrics = ShadowMetrics(
            self.metrics.registry, self.metrics.slug_label, self.metrics.variant_label
        )
        proxy = ProxyConfig(upstream=UpstreamConfig(base_url=base_url), shadow=self.config)
        self.runner = ShadowRunner(
            self.config,
            UpstreamClient(UpstreamLimits.shadow(proxy)),
            self.sink,
            shadow_metrics,
            exchange_observers(self.metrics),
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def dropped(self, reason: str) -> float:
        return self.sample(
            "promptproxy_shadow_dropped_total", slug="support", variant="", reason=reason
        )

    def outcome(self, outcome: str) -> float:
        return self.sample(
            "promptproxy_shadow_requests_total", slug="support", variant="", outcome=outcome
        )


@pytest.fixture
async def harness_factory(
    provider: tuple[Provider, str],
) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(base_url: str | None = None, **config: Any) -> Harness:
        harness = Harness(base_url or provider[1], **config)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.runner.close(0.1)


def shadow_request(tail: str = "/ok", stream: bool = False, **changes: Any) -> ShadowRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    fields: dict[str, Any] = {
        "pair_id": f"pair-{time.monotonic_ns()}",
        "request_id": "req-1",
        "key": SUPPORT,
        "rollout_id": "ro-1",
        "kind": ShadowKind.CANDIDATE,
        "primary_version": 1,
        "shadow_version": 2,
        "route": Route.CHAT,
        "method": "POST",
        "raw_tail": tail,
        # The primary's Content-Length is wrong for the shadow's (re-rendered) body.
        "headers": {
            "Authorization": f"Bearer {PROVIDER_KEY}",
            "Content-Type": "application/json",
            "Content-Length": "3",
        },
        "body": orjson.dumps(body),
        "stream": stream,
        "usage_injected": False,
        "model": "gpt-4o-mini",
        "submitted_at": time.monotonic(),
    }
    fields.update(changes)
    return ShadowRequest(**fields)


def primary_half(text: str = "stable answer", **fields: Any) -> Exchange:
    """The primary's finished exchange, as the pipeline hands it over."""
    answer = Answer(1000)
    answer.add_text(text)
    return Exchange(
        request_id="req-1",
        method="POST",
        route=Route.CHAT,
        started=0.0,
        version="1",
        status=200,
        answer=answer,
        **fields,
    )


def resolved(text: str = "stable answer") -> asyncio.Future[Exchange]:
    future: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
    future.set_result(primary_half(text, duration=0.5))
    return future


def pending() -> asyncio.Future[Exchange]:
    return asyncio.get_running_loop().create_future()


async def eventually(check: Callable[[], bool]) -> None:
    """Poll ``check`` (state owned by other tasks, no event to wait on) for up to 10 s."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


# -- one shadow ---------------------------------------------------------------------------


async def test_a_streamed_shadow_gets_a_ttft_and_is_paired_with_its_primary(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    h = harness_factory()
    primary = pending()
    request = shadow_request("/ok?first=0.1", stream=True)
    assert h.runner.submit(request, primary)
    await eventually(lambda: h.outcome("completed") == 1)
    assert h.sink.pairs == []  # waiting for the primary
    primary.set_result(primary_half(stream=True, ttfb=0.05))
    await eventually(lambda: len(h.sink.pairs) == 1)

    pair = h.sink.pairs[0].to_dict()
    assert pair["pair_id"] == request.pair_id
    assert (pair["primary"]["version"], pair["primary"]["text"]) == (1, "stable answer")
    assert pair["primary"]["ttft_ms"] == 50
    shadow = pair["shadow"]
    assert (shadow["version"], shadow["status"], shadow["text"]) == (2, 200, "shadow answer")
    assert (shadow["finish_reason"], shadow["input_tokens"], shadow["output_tokens"]) == (
        "stop",
        12,
        3,
    )
    # The first content event came 100 ms after the headers: the TTFT is a real one.
    assert 100 <= shadow["ttft_ms"] <= shadow["latency_ms"]
    assert shadow["error_class"] is None

    (mode, headers, body), *_ = fake.received
    assert mode == "ok"
    assert headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert body == request.body  # same bytes, with its own Content-Length
    series = {"route": "chat.completions", "model": "gpt-4o-mini", "slug": "support"}
    shadow_series = {
        **series,
        "version": "2",
        "arm": "shadow",
        "tier": "",
        "variant": "",
        "provider": "",
    }
    assert h.sample("promptproxy_tokens_total", **shadow_series, direction="output") == 3
    assert h.sample("promptproxy_requests_total", **shadow_series, status_class="2xx") == 1
    assert h.sample("promptproxy_time_to_first_token_seconds_count", **shadow_series) == 1
    assert h.outcome("sent") == 1


async def test_a_non_stream_shadow_reads_the_json_answer(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    assert h.runner.submit(shadow_request(), resolved())
    await eventually(lambda: len(h.sink.pairs) == 1)
    shadow = h.sink.pairs[0].to_dict()["shadow"]
    assert (shadow["text"], shadow["ttft_ms"], shadow["input_tokens"]) == (
        "shadow answer",
        None,
        12,
    )


@pytest.mark.parametrize(
    ("tail", "stream", "config", "error_class", "status"),
    [
        ("/error", False, {}, "upstream_5xx", 500),
        ("/slow", False, {"timeout_seconds": 0.3}, "upstream_timeout", 0),
        ("/hang-mid-stream", True, {"timeout_seconds": 0.5}, "upstream_timeout", 200),
        ("/redirect", False, {}, "upstream_redirect", 302),
        ("/garbage", False, {}, "invalid_answer", 200),
    ],
    ids=["500", "slow-10s", "hang-mid-stream", "redirect", "garbage"],
)
async def test_a_failing_shadow_is_a_failed_arm_sent_once(
    provider: tuple[Provider, str],
    harness_factory: Callable[..., Harness],
    tail: str,
    stream: bool,
    config: dict[str, Any],
    error_class: str,
    status: int,
) -> None:
    fake, _ = provider
    h = harness_factory(**config)
    assert h.runner.submit(shadow_request(tail, stream=stream), resolved())
    await eventually(lambda: len(h.sink.pairs) == 1)
    pair = h.sink.pairs[0].to_dict()
    assert (pair["shadow"]["error_class"], pair["shadow"]["status"]) == (error_class, status)
    assert pair["primary"]["text"] == "stable answer"  # the pair is still whole
    assert [mode for mode, _, _ in fake.received] == [tail.strip("/")]  # no retry, no redirect
    assert (h.outcome("failed"), h.outcome("completed")) == (1, 0)
    labels = {
        "route": "chat.completions",
        "slug": "support",
        "version": "2",
        "arm": "shadow",
        "tier": "",
        "variant": "",
        "provider": "",
    }
    assert h.sample("promptproxy_errors_total", **labels, error_class=error_class) == 1
    if tail == "/hang-mid-stream":
        # What arrived before the stall is kept, with its time to first token.
        assert pair["shadow"]["text"] == "shadow "
        assert pair["shadow"]["ttft_ms"] is not None


async def test_a_refused_connection_is_a_failed_arm(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(f"http://127.0.0.1:{free_port()}/v1")
    assert h.runner.submit(shadow_request(), resolved())
    await eventually(lambda: len(h.sink.pairs) == 1)
    shadow = h.sink.pairs[0].to_dict()["shadow"]
    assert (shadow["error_class"], shadow["status"]) == ("upstream_unavailable", 0)
    assert h.outcome("failed") == 1


# -- capacity -----------------------------------------------------------------------------


async def test_submit_never_waits_and_the_cap_holds(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    h = harness_factory(max_in_flight=4, queue_size=8)
    # Plain calls, no await in between: each decision is made on the spot.
    accepted = [h.runner.submit(shadow_request("/wait"), resolved()) for _ in range(100)]
    assert accepted.count(True) == 12
    assert (h.runner.in_flight, h.runner.queued) == (4, 8)
    assert h.dropped("queue_full") == 88
    assert h.sample("promptproxy_shadow_queue_depth") == 8

    await eventually(lambda: fake.active == 4)
    await asyncio.sleep(0.1)
    assert fake.peak == 4  # the queue waits for a slot instead of piling onto the provider
    fake.release.set()
    await eventually(lambda: len(h.sink.pairs) == 12)
    assert fake.peak == 4
    assert len(fake.received) == 12
    assert (h.runner.in_flight, h.runner.queued) == (0, 0)
    assert h.sample("promptproxy_shadow_in_flight") == 0
    assert h.outcome("completed") == 12


async def test_the_queue_is_bounded_in_bytes_too(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    big = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}]}
    )
    h = harness_factory(max_in_flight=1, queue_size=100, queue_max_bytes=3 * len(big))
    accepted = [h.runner.submit(shadow_request("/wait", body=big), resolved()) for _ in range(10)]
    # One runs, three fit the byte budget, the rest are dropped although entries are left.
    assert accepted.count(True) == 4
    assert (h.runner.in_flight, h.runner.queued) == (1, 3)
    assert h.dropped("queue_full") == 6
    fake.release.set()
    await eventually(lambda: len(h.sink.pairs) == 4)
    # The budget is given back as the queue drains.
    assert h.runner.submit(shadow_request("/ok", body=big), resolved())
    await eventually(lambda: len(h.sink.pairs) == 5)


async def test_stale_queued_copies_are_dropped_when_their_turn_comes(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    h = harness_factory(max_in_flight=1, queue_size=5, queue_max_age_seconds=1.0)
    assert h.runner.submit(shadow_request("/delay?s=0.2"), resolved())
    long_ago = time.monotonic() - 30
    for _ in range(3):
        assert h.runner.submit(shadow_request(submitted_at=long_ago), resolved())
    assert h.runner.submit(shadow_request(), resolved())  # fresh: still worth sending
    await eventually(lambda: len(h.sink.pairs) == 2)
    assert h.dropped("stale") == 3
    assert [mode for mode, _, _ in fake.received] == ["delay", "ok"]


async def test_a_finished_shadow_frees_its_slot_before_waiting_for_its_primary(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    h = harness_factory(max_in_flight=1, pair_wait_seconds=0.3)
    never = pending()
    assert h.runner.submit(shadow_request(pair_id="a"), never)
    assert h.runner.submit(shadow_request(pair_id="b"), resolved())
    # b runs although a's primary has not reported.
    await eventually(lambda: len(fake.received) == 2)
    await eventually(lambda: len(h.sink.pairs) == 2)
    pairs = {p.pair_id: p for p in h.sink.pairs}
    assert pairs["a"].primary is None  # gave up after pair_wait_seconds
    assert pairs["a"].shadow["text"] == "shadow answer"
    assert pairs["b"].primary is not None
    assert h.sample("promptproxy_shadow_pairs_total", outcome="unpaired") == 1
    assert not never.done()  # the primary's future is the pipeline's: never touched


async def test_skips_reported_by_the_pipeline_are_counted(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    for reason in ("side_effects", "not_completion", "body_too_large", "body_too_large"):
        h.runner.skip(SUPPORT, reason)
    assert (h.dropped("side_effects"), h.dropped("not_completion")) == (1, 1)
    assert h.dropped("body_too_large") == 2


# -- shutdown -----------------------------------------------------------------------------


async def test_close_waits_its_grace_then_cancels_and_still_writes_every_pair(
    provider: tuple[Provider, str], harness_factory: Callable[..., Harness]
) -> None:
    fake, _ = provider
    h = harness_factory(max_in_flight=3, queue_size=2)
    for tail in ("/slow", "/slow", "/delay?s=0.5"):
        assert h.runner.submit(shadow_request(tail, pair_id=tail), resolved())
    for _ in range(2):
        assert h.runner.submit(shadow_request(), resolved())  # queued
    await eventually(lambda: len(fake.received) == 3)

    async with asyncio.timeout(5):  # far below the 10 s the slow shadows would take
        closing = asyncio.ensure_future(h.runner.close(grace=1.0))
        await asyncio.sleep(0)
        assert not h.runner.submit(shadow_request(), resolved())  # draining: refused
        await closing

    assert h.dropped("draining") == 3  # the two queued and the late one
    by_id = {p.pair_id: p.shadow for p in h.sink.pairs}
    assert by_id["/delay?s=0.5"]["text"] == "shadow answer"  # finished within the grace
    assert by_id["/slow"]["error_class"] == "cancelled"
    assert len(h.sink.pairs) == 3
    assert all(p.primary is not None for p in h.sink.pairs)
    assert h.sink.closed
    assert h.runner.in_flight == 0
