"""Slowloris protection on raw sockets: header-read deadline and idle keep-alive timeout.

The listener is the real ``GuardedSite`` with the app's real error middleware; the handlers
are stand-ins so the deadlines can be seen apart from any upstream. Each test runs with
aiohttp's C parser (llhttp, what production loads) and with its pure-Python parser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import http_parser, web, web_protocol

from proxy.pipeline.run import read_body
from proxy.web.conn_guard import ConnectionLimits, GuardedSite
from proxy.web.middlewares import error_middleware

# Far enough apart that a loaded machine's scheduling delays cannot reorder them.
HEADER_TIMEOUT = 0.5
KEEPALIVE = 3.0
BODY_TIMEOUT = 1.5
#: Upper bound for "the server closed it": far below aiohttp's own 3,630 s keep-alive.
CLOSE_WITHIN = 10.0
HEAD = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"


class Listener:
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.port = 0


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _slow(request: web.Request) -> web.Response:
    # Well past the header deadline armed at accept: a running request is never cut by it.
    await asyncio.sleep(HEADER_TIMEOUT * 3)
    return web.Response(text="slow")


async def _upload(request: web.Request) -> web.Response:
    body = await read_body(request, 1024 * 1024)
    return web.Response(text=f"got {len(body)}")


@pytest.fixture(params=["c", "python"])
async def listener(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Listener]:
    if request.param == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    else:
        c_parser = getattr(http_parser, "HttpRequestParserC", None)
        if c_parser is None:
            pytest.skip("aiohttp's C extensions are not built here")
        monkeypatch.setattr(web_protocol, "HttpRequestParser", c_parser)
    app = web.Application(middlewares=[error_middleware()])
    app.router.add_get("/ok", _ok)
    app.router.add_get("/slow", _slow)
    app.router.add_post("/upload", _upload)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    found = Listener()
    site = GuardedSite(
        runner,
        "127.0.0.1",
        0,
        limits=ConnectionLimits(
            header_timeout=HEADER_TIMEOUT, keepalive_timeout=KEEPALIVE, body_timeout=BODY_TIMEOUT
        ),
        on_close=found.closed.append,
    )
    await site.start()
    found.port = site.port
    try:
        yield found
    finally:
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    return await asyncio.wait_for(reader.read(), CLOSE_WITHIN)


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WITHIN)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def _kept_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has been answered once and is kept alive for the next request."""
    reader, writer = await _connect(port)
    writer.write(HEAD)
    assert (await _response(reader)).endswith(b"ok")
    return reader, writer


@contextlib.asynccontextmanager
async def _trickling(
    writer: asyncio.StreamWriter, chunk: bytes, every: float
) -> AsyncIterator[None]:
    """Sends ``chunk`` every ``every`` seconds while the block runs (or until the server
    closes the connection)."""

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(every)

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()


async def test_a_silent_connection_is_closed_at_the_header_deadline(listener: Listener) -> None:
    reader, writer = await _connect(listener.port)
    assert await _closed_by_server(reader) == b""
    assert listener.closed == ["header_timeout"]
    writer.close()


async def test_trickling_header_bytes_does_not_extend_the_deadline(listener: Listener) -> None:
    reader, writer = await _connect(listener.port)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
    async with _trickling(writer, b"X-Slow: 1\r\n", HEADER_TIMEOUT / 5):
        assert await _closed_by_server(reader) == b""
    assert listener.closed == ["header_timeout"]
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    listener: Listener,
) -> None:
    reader, writer = await _kept_connection(listener.port)
    # Idle for longer than the header deadline but within keep-alive: still usable.
    await asyncio.sleep(HEADER_TIMEOUT * 1.5)
    writer.write(HEAD)
    assert (await _response(reader)).endswith(b"ok")
    assert await _closed_by_server(reader) == b""
    assert listener.closed == ["idle"]
    writer.close()


async def test_the_next_request_head_on_a_kept_connection_has_a_deadline(
    listener: Listener,
) -> None:
    reader, writer = await _kept_connection(listener.port)
    writer.write(b"GET /ok HTTP/1.1\r\n")  # and never the rest
    assert await _closed_by_server(reader) == b""
    assert listener.closed == ["header_timeout"]
    writer.close()


async def test_a_request_running_past_the_header_deadline_is_answered(listener: Listener) -> None:
    reader, writer = await _connect(listener.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await _response(reader)).endswith(b"slow")
    assert listener.closed == []
    writer.close()


async def test_a_trickled_body_gets_408_at_the_body_deadline_and_is_closed(
    listener: Listener,
) -> None:
    reader, writer = await _connect(listener.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    async with _trickling(writer, b"a", BODY_TIMEOUT / 5):
        answer = await _closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"request_timeout"' in answer
    assert b"Connection: close" in answer
    assert listener.closed == ["body_timeout"]
    writer.close()


async def test_a_body_that_arrives_within_the_deadline_is_served(listener: Listener) -> None:
    reader, writer = await _connect(listener.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
    await asyncio.sleep(BODY_TIMEOUT / 3)
    writer.write(b"def")
    assert (await _response(reader)).endswith(b"got 6")
    # Past the body deadline now: a finished body is not cut afterwards.
    await asyncio.sleep(BODY_TIMEOUT)
    writer.write(HEAD)
    assert (await _response(reader)).endswith(b"ok")
    assert listener.closed == []
    writer.close()


async def test_a_refused_upload_gets_its_413_although_the_client_is_still_sending(
    listener: Listener,
) -> None:
    """Closing a socket with unread data makes the kernel send a reset, which can overtake
    the 413 ("connection reset by peer" instead of the answer): the server lingers briefly,
    dropping what still arrives, so every client reads its 413."""

    async def upload() -> bytes:
        reader, writer = await _connect(listener.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n")
        async with _trickling(writer, b"x" * 65536, 0.0):
            answer = await _closed_by_server(reader)
        writer.close()
        return answer

    answers = await asyncio.gather(*(upload() for _ in range(20)))
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [
        b"HTTP/1.1 413 Request Entity Too Large"
    ] * 20
