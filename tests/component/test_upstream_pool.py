"""A full upstream pool: bounded wait, then a retryable 503 in the OpenAI shape; the pool's
use and its waiters are visible."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.exchange.upstream import PoolUsage
from proxy.services import Services
from tests.support import make_settings, proxy_clients

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
#: Bound for a request that should be answered; an unbounded wait fails here instead.
ANSWER_WITHIN = 10.0


class Provider:
    """Holds every call until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.release.wait()
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    found = Provider()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", found.chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield found, f"http://127.0.0.1:{server.port}/v1"
    finally:
        found.release.set()
        await server.close()


@asynccontextmanager
async def _pooled_proxy(
    url: str, max_connections: int, pool_wait_seconds: float, **more: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], Services, PoolUsage]]:
    """The proxy in front of ``url`` with that pool: its data client, services and pool."""
    settings = make_settings(
        **{
            "upstream.base_url": url,
            "upstream.max_connections": max_connections,
            "upstream.pool_wait_seconds": pool_wait_seconds,
            **more,
        }
    )
    async with proxy_clients(settings) as (data, _, services):
        pool = services.upstream.pool
        assert pool is not None
        yield data, services, pool


async def _until(check: object, what: str) -> None:
    for _ in range(200):
        if callable(check) and check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_a_full_pool_answers_a_retryable_503_after_the_wait(
    provider: tuple[Provider, str],
) -> None:
    upstream, url = provider
    # The pool wait alone is bounded: not the wait plus a (long) connect timeout.
    more = {"upstream.connect_timeout_seconds": 60}
    async with _pooled_proxy(url, 2, 0.5, **more) as (data, services, pool):
        held = [asyncio.create_task(data.post("/v1/chat/completions", json=CHAT)) for _ in range(2)]
        await _until(lambda: upstream.arrived == 2, "both calls reached the provider")
        assert pool.in_use() == 2

        third = asyncio.create_task(data.post("/v1/chat/completions", json=CHAT))
        await _until(lambda: pool.waiting() == 1, "the third call waits for a connection")
        resp = await asyncio.wait_for(third, ANSWER_WITHIN)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        error = (await resp.json())["error"]
        assert error["code"] == "upstream_pool_exhausted"
        assert error["type"] == "api_error"
        assert set(error) == {"message", "type", "param", "code"}
        assert pool.waiting() == 0
        assert upstream.arrived == 2  # the refused call never reached the provider
        # What PromptUpstreamPoolExhausted alerts on.
        refused = services.metrics.registry.get_sample_value(
            "promptproxy_errors_total",
            {
                "route": "chat.completions",
                "error_class": "upstream_pool_exhausted",
                "slug": "",
                "version": "",
                "arm": "",
                "tier": "",
                "variant": "",
                "provider": "upstream",
            },
        )
        assert refused == 1

        upstream.release.set()
        for task in held:
            assert (await asyncio.wait_for(task, ANSWER_WITHIN)).status == 200
        # With connections free again, the next call goes through.
        assert (await data.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_a_call_that_waits_less_than_the_bound_is_served(
    provider: tuple[Provider, str],
) -> None:
    upstream, url = provider
    async with _pooled_proxy(url, 1, 30) as (data, _, pool):
        first = asyncio.create_task(data.post("/v1/chat/completions", json=CHAT))
        await _until(lambda: upstream.arrived == 1, "the first call reached the provider")
        second = asyncio.create_task(data.post("/v1/chat/completions", json=CHAT))
        await _until(lambda: pool.waiting() == 1, "the second call waits")
        upstream.release.set()
        assert (await asyncio.wait_for(first, ANSWER_WITHIN)).status == 200
        assert (await asyncio.wait_for(second, ANSWER_WITHIN)).status == 200
