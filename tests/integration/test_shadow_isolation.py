"""A shadow never hurts the primary: real proxy processes under concurrent load with the
shadow upstream 10 s slow, refusing connections, or answering 500.

Checked here: zero primary errors, primary bodies byte-identical to the same load with
shadow off, shadows in flight never above the cap, what did not fit dropped and counted,
and every finished shadow written as one pair joined to its primary. The latency side
(primary p99 with shadow on vs off) is measured by the benchmark, not asserted here:
``python -m loadtest.bench --shadow-isolation``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.processes import (
    ADMIN_HEADERS,
    ProxyProc,
    admin,
    free_port,
    proxy_with_token,
    simulator,
)

pytestmark = pytest.mark.integration

CAP = 4
QUEUE = 8
REQUESTS = 240
CONCURRENCY = 16


@pytest.fixture(scope="module")
def slow_sim(procs_dir: Path) -> Iterator[str]:
    with simulator(procs_dir, "--first-byte-ms", "10000") as (url, _):
        yield url


def config(shadow_url: str, sink_dir: Path) -> str:
    return (
        "shadow:\n"
        f"  base_url: {shadow_url}\n"
        f"  max_in_flight: {CAP}\n"
        f"  queue_size: {QUEUE}\n"
        "  timeout_seconds: 30\n"
        # One shadow per request, so every shadow is accounted for (noise re-runs are
        # shadows like any other; test_shadow_admin covers them).
        "  noise_share: 0\n"
        "  sink:\n"
        f"    dir: {sink_dir}\n"
    )


async def metric(replica: ProxyProc, name: str, labels: str = "") -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{replica.admin_url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for match in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def request_body(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "stream": i % 3 == 0,
    }


async def load(replica: ProxyProc) -> list[tuple[int, bytes]]:
    """REQUESTS chat calls, CONCURRENCY at a time; (status, body) in request order."""
    results: list[tuple[int, bytes]] = [(0, b"")] * REQUESTS
    queue = list(range(REQUESTS))
    base = replica.url.removesuffix("/v1")

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.pop()
            async with session.post(
                f"{base}/p/support/v1/chat/completions", json=request_body(i)
            ) as resp:
                results[i] = (resp.status, await resp.read())

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return results


async def in_flight_peak(replica: ProxyProc, stop: asyncio.Event) -> float:
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, await metric(replica, "promptproxy_shadow_in_flight"))
        await asyncio.sleep(0.02)
    return peak


async def revision(replica: ProxyProc) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{replica.admin_url}/readyz") as r:
        return int((await r.json())["registry"]["revision"])


async def until_served(replica: ProxyProc, wanted: int) -> None:
    """Wait until the replica's snapshot has reached registry revision ``wanted``."""
    for _ in range(250):
        if await revision(replica) >= wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"revision {wanted} never reached the snapshot")


async def seed(replica: ProxyProc, candidate_model: str | None) -> None:
    for body in (
        {"template": "You are the stable support prompt."},
        {"template": "You are the candidate support prompt.", "model": candidate_model},
    ):
        status, answer = await admin(replica, "POST", "/prompts/support/versions", body)
        assert status == 201, answer
    status, _ = await admin(replica, "POST", "/prompts/support/promote", {"version": 1})
    assert status == 200
    await until_served(replica, 3)


async def run_scenario(replica: ProxyProc) -> tuple[list[tuple[int, bytes]], float]:
    """Load with shadow off, then the same load with a 100 % shadow rollout."""
    baseline = await load(replica)
    rollout = {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"}
    status, answer = await admin(replica, "PUT", "/prompts/support/rollout", rollout)
    assert status == 201, answer
    await until_served(replica, 4)
    stop = asyncio.Event()
    watcher = asyncio.create_task(in_flight_peak(replica, stop))
    shadowed = await load(replica)
    stop.set()
    peak = await watcher
    assert [s for s, _ in baseline] == [200] * REQUESTS
    assert [s for s, _ in shadowed] == [200] * REQUESTS, "a primary failed"
    assert shadowed == baseline, "shadowing changed what a caller received"
    assert await metric(replica, "promptproxy_shadow_requests_total", 'outcome="sent"') > 0
    return shadowed, peak


@pytest.mark.parametrize("fault", ["slow", "refused", "error_500"])
async def test_a_faulty_shadow_upstream_never_reaches_the_primary(
    fault: str, procs_dir: Path, sim_url: str, slow_sim: str, tmp_path: Path
) -> None:
    shadow_url = {
        "slow": slow_sim,
        "refused": f"http://127.0.0.1:{free_port()}/v1",
        "error_500": sim_url,
    }[fault]
    # The simulator answers 500 to this model: only the candidate (the shadow) pins it.
    candidate_model = "sim-status-500" if fault == "error_500" else None
    with proxy_with_token(procs_dir, sim_url, config(shadow_url, tmp_path / "pairs")) as replica:
        await seed(replica, candidate_model)
        _, peak = await run_scenario(replica)
        assert peak <= CAP
        if fault == "slow":
            assert peak == CAP  # the cap was reached, and held
            dropped = await metric(replica, "promptproxy_shadow_dropped_total", "queue_full")
            assert dropped >= REQUESTS - CAP - QUEUE - 10
        else:
            for _ in range(100):  # the last shadows may still be finishing
                failed = await metric(
                    replica, "promptproxy_shadow_requests_total", 'outcome="failed"'
                )
                dropped = await metric(replica, "promptproxy_shadow_dropped_total")
                if failed + dropped >= REQUESTS:
                    break
                await asyncio.sleep(0.05)
            assert failed + dropped == REQUESTS
            assert failed > 0


async def test_every_finished_shadow_is_paired_with_its_primary(
    procs_dir: Path, sim_url: str, tmp_path: Path
) -> None:
    with proxy_with_token(
        procs_dir,
        sim_url,
        config(sim_url, tmp_path / "pairs")
        .replace(f"max_in_flight: {CAP}", "max_in_flight: 64")
        .replace(f"queue_size: {QUEUE}", "queue_size: 1024"),
    ) as replica:
        await seed(replica, None)
        await run_scenario(replica)

        async def finished() -> float:
            return await metric(replica, "promptproxy_shadow_requests_total", 'outcome="completed"')

        for _ in range(100):
            if (
                await finished()
                + await metric(replica, "promptproxy_shadow_requests_total", 'outcome="failed"')
                >= REQUESTS
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the sink writes in the background
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{replica.admin_url}/admin/v1/prompts/support/shadow/pairs",
                params={"since": "10m", "limit": "10000"},
                headers=ADMIN_HEADERS,
            ) as resp,
        ):
            assert resp.status == 200
            pairs = [orjson.loads(line) for line in (await resp.read()).splitlines() if line]
        completed = await finished()
        joined = [p for p in pairs if p["primary"] is not None and p["shadow"] is not None]
        print(f"\npairing: {len(joined)} joined of {completed:.0f} completed shadows")
        assert completed == REQUESTS
        assert len(joined) >= 0.999 * completed
        sample = joined[0]
        assert (sample["primary"]["version"], sample["shadow"]["version"]) == (1, 2)
        assert sample["primary"]["text"]
        assert sample["shadow"]["text"]
        streamed = [p for p in joined if p["stream"]]
        assert streamed
        assert all(p["shadow"]["ttft_ms"] is not None for p in streamed)
