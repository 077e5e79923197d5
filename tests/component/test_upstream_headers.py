"""What reaches a real provider socket: the client's headers, and none aiohttp would invent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.exchange.upstream import UpstreamClient, UpstreamLimits


@pytest.fixture
async def provider() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def _send(base_url: str, headers: dict[str, str]) -> None:
    client = UpstreamClient(UpstreamLimits(base_url, 10, 5.0, 30.0, None))
    try:
        response = await client.open("POST", "/chat/completions", CIMultiDict(headers), b"{}")
        async with response:
            assert response.status == 200
    finally:
        await client.close()


async def test_no_header_is_invented(provider: tuple[str, list[dict[str, str]]]) -> None:
    base_url, seen = provider
    await _send(base_url, {"Authorization": "Bearer sk-test"})
    (headers,) = seen
    for name in ("user-agent", "accept", "content-type"):
        assert name not in headers
    assert headers["authorization"] == "Bearer sk-test"


async def test_the_clients_own_headers_go_as_sent(
    provider: tuple[str, list[dict[str, str]]],
) -> None:
    base_url, seen = provider
    sent = {
        "User-Agent": "AsyncOpenAI/Python 1.54.0",
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-Stainless-Lang": "python",
    }
    await _send(base_url, sent)
    (headers,) = seen
    for name, value in sent.items():
        assert headers[name.lower()] == value
