"""What a served request leaves behind for the garbage collector.

``proxy.server`` freezes the startup heap so that a full collection walks only what serving
added since. That keeps full collections short only if a finished request leaves no
GC-tracked object behind: anything kept per request (an index entry, a cache line, a metric
child) is walked by every full collection, with the event loop stopped, and the walk grows
with the structure. Measured with /p/bench/v1 at full load, the proxy pinned to one core of a
2-vCPU VM shared with other work: the in-memory feedback index kept two tracked objects per
answered request (``Answered`` and its ``PromptKey``), and each full collection's CPU time
grew with it, 1.4 ms at 2k requests, 44 ms at 29k, 142 ms at 93k; those pauses were the
swap-in p99 spikes. With the entries kept as untracked objects (bytes in that experiment;
``MemoryRequestIndex`` now keeps a number per answer), full collections stayed at 0.4-0.7 ms
over 110k requests.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from proxy.services import Services
from proxy.simulator import SimulatorSettings, start_simulator
from tests.support import make_settings, proxy_clients

ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "replaced by the prompt"},
        {"role": "user", "content": "Which novel for a long train journey?"},
    ],
}
#: Caches, metric children, pools and background tasks fill on the first requests; that
#: is not growth.
WARM_UP = 300
MEASURED = 400
#: What stays around for a while without growing with the requests (asyncio keeps up to
#: ~100 cancelled timer handles, each with its context): measured at ~100 objects. A
#: structure that keeps one tracked object per request (800 here for the feedback index's
#: two) is well above it.
SLACK = MEASURED // 2

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    # The simulator's own request log would be growth of the test's making.
    runner, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(record_requests=0))
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret"},
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "upstream.base_url": f"http://127.0.0.1:{port}/v1",
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
        },
    )
    try:
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await runner.cleanup()


async def _serve(session: aiohttp.ClientSession, url: str, count: int) -> None:
    for _ in range(count):
        async with session.post(url, json=CHAT) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        # The feedback index keeps each answer as untracked numbers; it once kept an
        # Answered and a PromptKey per answer, which every full collection walked.
        "/p/bench/v1/chat/completions",
    ],
    ids=["plain", "swap-in"],
)
async def test_a_served_request_leaves_no_tracked_object_behind(
    clients: Clients, path: str
) -> None:
    data, admin, _ = clients
    resp = await admin.post(
        "/admin/v1/prompts/bench/versions", json={"template": "You are concise."}, headers=ADMIN
    )
    assert resp.status == 201, await resp.text()
    resp = await admin.post("/admin/v1/prompts/bench/promote", json={"version": 1}, headers=ADMIN)
    assert resp.status == 200, await resp.text()

    # Not the test client: it keeps every response it returned, to close them at the end.
    url = str(data.make_url(path))
    async with aiohttp.ClientSession() as session:
        await _serve(session, url, WARM_UP)
        before = _tracked()
        await _serve(session, url, MEASURED)
        grown = _tracked() - before

    assert grown < SLACK, f"{grown} tracked objects more after {MEASURED} requests"
