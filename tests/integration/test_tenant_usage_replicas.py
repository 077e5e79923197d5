"""Per-tenant usage from every replica: two proxy processes on one shared store (Redis, then
PostgreSQL) serve one tenant; the usage query through either replica sums both, and a
request's unknown tenant header adds nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.processes import ProxyProc, admin, proxy_with_token
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

postgres_server = postgres_server_fixture("module")
#: Short, so the test waits on flushes for under a second.
CONFIG = (
    "usage:\n  flush_seconds: 0.3\n"
    "metrics:\n  prices:\n    gpt-4o-mini: {input: 0.15, output: 0.6}\n"
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module", params=["redis", "postgresql"])
def pair_of_replicas(
    request: pytest.FixtureRequest, procs_dir: Path, sim_url: str
) -> Iterator[list[ProxyProc]]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = server.url
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        store = pg.new_database()
    with ExitStack() as stack:
        yield [
            stack.enter_context(proxy_with_token(procs_dir, sim_url, CONFIG, store=store))
            for _ in range(2)
        ]


async def ask(session: aiohttp.ClientSession, replica: ProxyProc, tenant: str) -> None:
    async with session.post(
        f"{replica.url.removesuffix('/v1')}/p/usage-demo/v1/chat/completions",
        json=CHAT,
        headers={"X-Tenant-Id": tenant},
    ) as resp:
        await resp.read()
        assert resp.status == 200


async def usage_of(replica: ProxyProc, tenant: str) -> Any:
    status, body = await admin(replica, "GET", f"/tenants/{tenant}/usage?since=10m")
    assert status == 200, body
    return body


async def test_the_usage_query_sums_every_replica(pair_of_replicas: list[ProxyProc]) -> None:
    one, two = pair_of_replicas
    status, _ = await admin(one, "POST", "/prompts/usage-demo/versions", {"template": "Be brief."})
    assert status in (200, 201)
    status, _ = await admin(one, "POST", "/prompts/usage-demo/promote?wait=5", {"version": 1})
    assert status == 200
    status, _ = await admin(one, "PUT", "/tenants/umbrella?wait=5", {"tier": "pro"})
    assert status == 200
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            await ask(session, one, "umbrella")
        for _ in range(7):
            await ask(session, two, "umbrella")
        await ask(session, two, "stranger")  # not a tenant: counted nowhere

    # Each replica flushes every 0.3 s; asked through either, the sum covers both.
    deadline = time.monotonic() + 10
    while True:
        found = [await usage_of(replica, "umbrella") for replica in (one, two)]
        if all(f["total"]["requests"] == 12 for f in found) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for f in found:
        assert (f["known"], f["tier"], f["total"]["requests"]) == (True, "pro", 12)
        assert [(p["slug"], p["variant"]) for p in f["prompts"]] == [("usage-demo", None)]
        assert f["total"]["input_tokens"] > 0
        assert f["total"]["output_tokens"] > 0
        assert f["total"]["cost_usd"] > 0
    stranger = await usage_of(two, "stranger")
    assert (stranger["known"], stranger["total"]["requests"]) == (False, 0)
