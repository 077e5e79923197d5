"""Bad input on raw sockets: an oversized upload is cut off, an absolute-form target cannot
steer the upstream path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import make_settings, proxy_clients

LIMIT = 64 * 1024
CHUNK = 64 * 1024
#: What the client may push at most: the limit plus socket buffers on both sides (Linux
#: autotunes loopback buffers to a few MiB). Reading the whole upload would be all of it.
SLACK = 24 * 1024 * 1024
UPLOAD = 256 * 1024 * 1024
#: Bound on each network step, so an unbounded read or wait fails instead of hanging.
STEP = 10.0


async def _push_chunked(writer: asyncio.StreamWriter, total: int) -> int:
    """Send chunks until ``total`` bytes or until the server stops taking them."""
    sent = 0
    frame = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
    with contextlib.suppress(ConnectionError, TimeoutError):
        while sent < total:
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), STEP)
            sent += CHUNK
    return sent


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), STEP):
            data += chunk
    return data


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_an_oversized_upload_gets_413_and_the_connection_is_closed(framing: str) -> None:
    settings = make_settings(**{"server.max_body_bytes": LIMIT})
    async with proxy_clients(settings) as (data, _, _services):
        assert data.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", data.server.port)
        length = (
            "Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {UPLOAD}"
        )
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + length.encode()
            + b"\r\n\r\n"
        )
        answer = asyncio.create_task(_read_all(reader))
        sent = await _push_chunked(writer, UPLOAD)
        response = await answer
        writer.close()
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b'"code":"request_too_large"' in response
    assert b"Connection: close" in response
    # The server stopped taking bytes soon after the limit instead of reading them all.
    assert sent < LIMIT + SLACK, sent


class RecordingUpstream:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def any(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        return web.json_response({"object": "list", "data": []})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[RecordingUpstream, str]]:
    found = RecordingUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.any)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield found, f"http://127.0.0.1:{server.port}/v1"
    finally:
        await server.close()


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), STEP)
    writer.close()
    return head + body


async def _through_proxy(upstream_url: str, request: bytes) -> bytes:
    """``request`` as raw bytes to a proxy in front of ``upstream_url``; its raw answer."""
    settings: Any = make_settings(**{"upstream.base_url": upstream_url})
    async with proxy_clients(settings) as (data, _, _services):
        assert data.server.port is not None
        return await _raw_exchange(data.server.port, request)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://host.example/v1/models", "/v1/models"),
        ("http://host.example/v1/models?limit=2", "/v1/models?limit=2"),
        ("https://elsewhere.example:8443/v1/models", "/v1/models"),
        ("http://host.example/p/summarize/v1/models", "/v1/models"),
        # Origin form still reaches the provider byte for byte.
        ("/v1/models/ft%3Agpt-4o%2Fx?a=%20b&c=d", "/v1/models/ft%3Agpt-4o%2Fx?a=%20b&c=d"),
    ],
)
async def test_the_upstream_gets_the_parsed_path_of_any_request_target(
    upstream: tuple[RecordingUpstream, str], target: str, expected: str
) -> None:
    recorder, url = upstream
    answer = await _through_proxy(url, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert recorder.paths == [expected]


async def test_a_percent_encoded_v1_prefix_is_refused(
    upstream: tuple[RecordingUpstream, str],
) -> None:
    recorder, url = upstream
    answer = await _through_proxy(url, b"GET /%761/models HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"code":"invalid_path"' in answer
    assert recorder.paths == []
