"""The proxy as a real process in front of a real simulator process, over real sockets."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from tests.processes import ProxyProc, proxy, simulator

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


async def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None, limit_s: float = 10
) -> tuple[int, dict[str, str], bytes]:
    timeout = aiohttp.ClientTimeout(total=limit_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=body, headers=headers or {}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


async def test_stream_is_relayed_as_it_arrives(proxy_proc: ProxyProc) -> None:
    """With 6 chunks 150 ms apart, the first event reaches the client long before the last."""
    headers = {"x-sim-chunks": "6", "x-sim-chunk-delay-ms": "150"}
    arrivals: list[float] = []
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy_proc.url}/chat/completions", json={**CHAT, "stream": True}, headers=headers
        ) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for _ in resp.content.iter_any():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 4  # not one buffered blob
    assert arrivals[-1] - arrivals[0] > 0.5


async def test_stream_bytes_equal_direct_bytes(proxy_proc: ProxyProc, sim_url: str) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    direct = await post(f"{sim_url}/chat/completions", body)
    proxied = await post(f"{proxy_proc.url}/chat/completions", body)
    assert proxied[2] == direct[2]
    # Without include_usage, the proxy asks for it but the client sees what it asked for.
    plain = {**CHAT, "stream": True}
    direct = await post(f"{sim_url}/chat/completions", plain)
    proxied = await post(f"{proxy_proc.url}/chat/completions", plain)
    assert [d for d in sse_data(proxied[2]) if b'"usage":{' in d] == []
    assert [orjson.loads(d)["choices"] for d in sse_data(proxied[2])[:-1]] == [
        orjson.loads(d)["choices"] for d in sse_data(direct[2])[:-1]
    ]
    assert sse_data(proxied[2])[-1] == b"[DONE]"


async def test_mid_stream_drop_ends_with_one_error_event_and_no_done(proxy_proc: ProxyProc) -> None:
    status, _, body = await post(
        f"{proxy_proc.url}/chat/completions", {**CHAT, "stream": True}, {"x-sim-fault": "drop"}
    )
    assert status == 200
    events = sse_data(body)
    assert b"[DONE]" not in events
    errors = [orjson.loads(e) for e in events if b'"error"' in e]
    assert len(errors) == 1
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert events[-1] == orjson.dumps(errors[0])


async def test_stall_mid_stream_hits_the_read_timeout(proxy_proc: ProxyProc) -> None:
    status, _, body = await post(
        f"{proxy_proc.url}/chat/completions",
        {**CHAT, "stream": True},
        {"x-sim-fault": "hang-mid-stream"},
    )
    assert status == 200
    last = orjson.loads(sse_data(body)[-1])
    assert last["error"]["code"] == "upstream_timeout"


async def test_hang_before_headers_is_a_504(proxy_proc: ProxyProc) -> None:
    status, headers, body = await post(
        f"{proxy_proc.url}/chat/completions", CHAT, {"x-sim-fault": "hang"}
    )
    assert status == 504
    assert orjson.loads(body)["error"]["type"] == "api_error"
    assert headers["x-promptproxy-request-id"]


def _upstream_connections(pid: int, upstream_port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == upstream_port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_client_disconnect_closes_the_upstream_within_a_second(
    procs_dir: Path,
) -> None:
    with simulator(procs_dir) as (sim, _), proxy(procs_dir, sim) as proc:
        sim_port = port_of(sim)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proc.url))
        body = orjson.dumps({**CHAT, "stream": True})
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"x-sim-fault: hang-mid-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        assert _upstream_connections(proc.pid, sim_port) == 1
        writer.close()
        closed_at = time.monotonic()
        # Polling another process's sockets: there is no event to wait on.
        while _upstream_connections(proc.pid, sim_port) and time.monotonic() - closed_at < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert _upstream_connections(proc.pid, sim_port) == 0
        assert time.monotonic() - closed_at < 1.0
        await asyncio.sleep(0.3)
        (line,) = proc.access_lines()
        assert line["error_class"] == "client_disconnected"


async def test_hop_by_hop_headers_never_reach_the_provider(
    proxy_proc: ProxyProc, sim_url: str
) -> None:
    port = port_of(proxy_proc.url)
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\n"
        b"Connection: keep-alive, X-Foo\r\nX-Foo: secret-hop\r\nTE: trailers\r\n"
        b"Upgrade: h2c\r\nProxy-Authorization: Basic abc\r\nKeep-Alive: timeout=5\r\n"
        b"X-Forwarded-Host: 169.254.169.254\r\nX-Keep: yes\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    (seen,) = await get_json(f"{sim_url.removesuffix('/v1')}/_sim/requests?limit=1")
    headers = seen["headers"]
    for name in ("x-foo", "te", "upgrade", "proxy-authorization", "keep-alive"):
        assert name not in headers
    assert headers["x-keep"] == "yes"
    assert headers["host"].startswith("127.0.0.1")
    assert seen["body"] == CHAT


async def test_smuggling_attempt_is_refused_before_the_provider(
    proxy_proc: ProxyProc, sim_url: str
) -> None:
    port = port_of(proxy_proc.url)
    async with aiohttp.ClientSession() as session:
        await session.delete(f"{sim_url.removesuffix('/v1')}/_sim/requests")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    # aiohttp's strict parser answers at the protocol level, before any handler runs.
    assert head.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert await get_json(f"{sim_url.removesuffix('/v1')}/_sim/requests") == []


async def test_unreachable_upstream_is_a_502(procs_dir: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        # An upstream that is down at start stops the start by default (tests/integration/
        # test_startup_errors.py); `warn` starts anyway, as for a remote provider's blip.
        with proxy(procs_dir, dead, "upstream:\n  check_at_start: warn\n") as proc:
            status, _, body = await post(f"{proc.url}/chat/completions", CHAT)
            assert any("serving anyway" in str(line.get("msg")) for line in proc.log_lines())
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unavailable"


async def test_sigterm_drains_open_streams(procs_dir: Path, sim_url: str) -> None:
    with proxy(procs_dir, sim_url) as proc:
        stream = asyncio.create_task(
            post(
                f"{proc.url}/chat/completions",
                {**CHAT, "stream": True},
                {"x-sim-chunks": "10", "x-sim-chunk-delay-ms": "100"},
            )
        )
        await asyncio.sleep(0.3)
        proc.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session, session.get(f"{proc.admin_url}/readyz") as r:
            assert r.status == 503
        status, _, body = await stream
        assert status == 200
        assert sse_data(body)[-1] == b"[DONE]"
        assert proc.popen.wait(10) == 0
