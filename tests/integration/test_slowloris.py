"""X5, slowloris: hundreds of sockets trickling header bytes, silent sockets and idle
keep-alive sockets beside normal traffic, against a real proxy process in front of a real
simulator. Every hostile socket is closed at its deadline, its file descriptor released,
and every normal request is answered."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.processes import proxy, simulator

pytestmark = pytest.mark.integration

TRICKLING = 300
SILENT = 50
KEPT_ALIVE = 50
HEADER_TIMEOUT = 2.0
KEEPALIVE = 3.0
CONFIG = f"""
server:
  header_timeout_seconds: {HEADER_TIMEOUT}
  keepalive_timeout_seconds: {KEEPALIVE}
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
#: Bound for "closed by the server": far below aiohttp's own 3,630 s keep-alive, and the
#: whole test stays well under 30 s.
CLOSE_WITHIN = 12.0


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def _trickle(port: int, stop: asyncio.Event) -> bool:
    """Send a request head one header line at a time, never finishing it. True once the
    server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
    try:
        read = asyncio.ensure_future(reader.read())
        while not read.done() and not stop.is_set():
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-a: b\r\n")
            await asyncio.wait({read}, timeout=0.25)
        return read.done() and read.exception() is None and read.result() == b""
    finally:
        writer.close()


async def _silent(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await reader.read() == b""
    finally:
        writer.close()


async def _kept_alive(port: int) -> bool:
    """One complete request, then idle on the kept-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        found = re.search(rb"(?i)content-length: (\d+)", head)
        assert found is not None, head
        length = int(found.group(1))
        await reader.readexactly(length)
        return await reader.read() == b""
    finally:
        writer.close()


async def _normal_traffic(url: str, stop: asyncio.Event) -> list[int]:
    statuses: list[int] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while not stop.is_set():
                async with session.post(f"{url}/chat/completions", json=CHAT) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(client() for _ in range(8)))
    return statuses


def _client_connections(process: psutil.Process, port: int) -> int:
    return sum(1 for c in process.net_connections("tcp") if c.laddr.port == port and c.raddr)


def _upstream_connections(process: psutil.Process, upstream_port: int) -> int:
    return sum(
        1 for c in process.net_connections("tcp") if c.raddr and c.raddr.port == upstream_port
    )


async def _metric(admin_url: str, name: str, labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_slowloris_sockets_are_closed_at_their_deadlines_beside_normal_load(
    tmp_path: Path,
) -> None:
    with simulator(tmp_path) as (sim_url, _), proxy(tmp_path, sim_url, CONFIG) as proc:
        port = _port(proc.url)
        process = psutil.Process(proc.pid)
        fds_before = process.num_fds()

        stop_traffic, stop_trickle = asyncio.Event(), asyncio.Event()
        traffic = asyncio.create_task(_normal_traffic(proc.url, stop_traffic))
        hostile = [asyncio.create_task(_trickle(port, stop_trickle)) for _ in range(TRICKLING)]
        hostile += [asyncio.create_task(_silent(port)) for _ in range(SILENT)]
        hostile += [asyncio.create_task(_kept_alive(port)) for _ in range(KEPT_ALIVE)]
        await asyncio.sleep(HEADER_TIMEOUT / 2)
        fds_during = process.num_fds()

        try:
            closed = await asyncio.wait_for(asyncio.gather(*hostile), CLOSE_WITHIN)
        finally:
            stop_trickle.set()
            stop_traffic.set()
        statuses = await asyncio.wait_for(traffic, 15)
        # The normal clients just hung up too; give the proxy a moment to see their FINs.
        for _ in range(100):
            if not _client_connections(process, port):
                break
            await asyncio.sleep(0.05)
        fds_after = process.num_fds()

        assert closed == [True] * len(hostile)
        assert statuses
        assert set(statuses) == {200}, sorted(set(statuses))
        # The hostile sockets each held a descriptor, and gave it back.
        assert fds_during >= fds_before + TRICKLING
        assert _client_connections(process, port) == 0
        # Pooled upstream connections stay open for reuse; nothing else may be left.
        pooled = _upstream_connections(process, _port(sim_url))
        assert fds_after - pooled <= fds_before + 10, (fds_before, fds_during, fds_after, pooled)
        header = 'port="data",reason="header_timeout"'
        idle = 'port="data",reason="idle"'
        metric = "promptproxy_connections_closed_total"
        assert await _metric(proc.admin_url, metric, header) >= TRICKLING + SILENT
        assert await _metric(proc.admin_url, metric, idle) >= KEPT_ALIVE
