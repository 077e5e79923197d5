"""Large answers through the proxy, from a real in-process upstream server (aioresponses
cannot deliver bodies in chunks)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import make_settings, proxy_clients

BLOB = os.urandom(3 * 1024 * 1024)
LONG_EVENT = b"data: " + b"x" * (3 * 1024 * 1024) + b"\n\ndata: [DONE]\n\n"


FIRST = 256 * 1024
GO_ON = web.AppKey("go_on", asyncio.Event)


async def file_content(request: web.Request) -> web.StreamResponse:
    """Sends the first 256 KiB, then waits until the client got them: a proxy that holds the
    body until the end never lets the client see anything."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(BLOB)
    await response.prepare(request)
    await response.write(BLOB[:FIRST])
    try:
        await asyncio.wait_for(request.app[GO_ON].wait(), 6)
    except TimeoutError:
        return response  # the test has failed already; do not hang its teardown
    await response.write(BLOB[FIRST:])
    return response


async def endless_event(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for start in range(0, len(LONG_EVENT), 64 * 1024):
        await response.write(LONG_EVENT[start : start + 64 * 1024])
    return response


@pytest.fixture
async def provider_app() -> web.Application:
    app = web.Application()
    app[GO_ON] = asyncio.Event()
    return app


@pytest.fixture
async def provider(provider_app: web.Application) -> AsyncIterator[str]:
    app = provider_app
    app.router.add_get("/v1/files/f1/content", file_content)
    app.router.add_post("/v1/chat/completions", endless_event)
    async with TestServer(app) as server:
        yield str(server.make_url("/v1"))


async def test_file_download_streams_with_its_length(
    provider: str, provider_app: web.Application
) -> None:
    async with proxy_clients(make_settings(**{"upstream.base_url": provider})) as (client, _, _):
        resp = await client.get("/v1/files/f1/content")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(BLOB))
        assert "Transfer-Encoding" not in resp.headers
        assert "Cache-Control" not in resp.headers  # only event streams get no-cache
        head = await asyncio.wait_for(resp.content.readexactly(FIRST), 5)
        provider_app[GO_ON].set()
        assert head + await resp.read() == BLOB


async def test_an_event_without_boundary_for_megabytes_is_relayed_intact(provider: str) -> None:
    settings = make_settings(**{"upstream.base_url": provider})
    async with proxy_clients(settings) as (client, _, _):
        resp: Any = await client.post("/v1/chat/completions", json={"model": "m", "stream": True})
        assert await resp.read() == LONG_EVENT
