"""Three proxy replicas on one Redis registry: a change through any replica is served by all,
fast; a Redis outage fails no request and heals by itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import redis

from tests.processes import ADMIN_HEADERS, CHAT, ProxyProc, admin
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def served_version(
    session: aiohttp.ClientSession, replica: ProxyProc, slug: str
) -> str | None:
    async with session.post(
        f"{replica.url.removesuffix('/v1')}/p/{slug}/v1/chat/completions", json=CHAT
    ) as resp:
        await resp.read()
        return resp.headers.get("x-prompt-version") if resp.status == 200 else None


async def seed(replica: ProxyProc, slug: str) -> None:
    for text in ("good prompt", "bad prompt"):
        status, _ = await admin(replica, "POST", f"/prompts/{slug}/versions", {"template": text})
        assert status in (200, 201)
    for version in (1, 2):
        status, _ = await admin(replica, "POST", f"/prompts/{slug}/promote", {"version": version})
        assert status == 200


async def until_all_serve(
    replicas: list[ProxyProc], slug: str, version: str, limit: float
) -> list[float]:
    """Seconds until each replica first serves ``version`` (polled every 10 ms)."""
    started = time.monotonic()
    seen: dict[int, float] = {}
    async with aiohttp.ClientSession() as session:
        while len(seen) < len(replicas) and time.monotonic() - started < limit:
            for i, replica in enumerate(replicas):
                if i not in seen and await served_version(session, replica, slug) == version:
                    seen[i] = time.monotonic() - started
            await asyncio.sleep(0.01)
    assert len(seen) == len(replicas), f"only {sorted(seen)} serve v{version} after {limit}s"
    return [seen[i] for i in range(len(replicas))]


async def until_registry_state(replica: ProxyProc, state: str, limit: float) -> Any:
    """The replica's /readyz body once its registry state is ``state`` (polled)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{replica.admin_url}/readyz") as resp:
                assert resp.status == 200
                detail = await resp.json()
            if detail["registry"]["state"] == state or time.monotonic() > deadline:
                assert detail["registry"]["state"] == state, detail
                return detail
            await asyncio.sleep(0.05)


async def test_rollback_through_one_replica_reaches_all_three(replicas: list[ProxyProc]) -> None:
    await seed(replicas[0], "checkout")
    await until_all_serve(replicas, "checkout", "2", limit=5)
    started = time.monotonic()
    status, entry = await admin(
        replicas[1], "POST", "/prompts/checkout/rollback", {"reason": "regression"}
    )
    assert (status, entry["version"]) == (200, 1)
    times = await until_all_serve(replicas, "checkout", "1", limit=5)
    print(
        f"\nrollback propagation (pub/sub): {[round(t * 1000) for t in times]} ms, "
        f"total {round((time.monotonic() - started) * 1000)} ms"
    )
    assert max(times) < 1.0


async def test_rollback_reaches_all_replicas_with_notifications_cut(
    replicas: list[ProxyProc], redis_server: RedisServer
) -> None:
    await seed(replicas[0], "billing")
    await until_all_serve(replicas, "billing", "2", limit=5)
    client = redis.Redis.from_url(redis_server.url)
    stop = asyncio.Event()

    async def keep_cutting_pubsub() -> None:
        while not stop.is_set():
            client.client_kill_filter(_type="pubsub")
            await asyncio.sleep(0.05)

    cutter = asyncio.create_task(keep_cutting_pubsub())
    try:
        await asyncio.sleep(0.2)
        status, _ = await admin(replicas[2], "POST", "/prompts/billing/rollback", {})
        assert status == 200
        times = await until_all_serve(replicas, "billing", "1", limit=8)
    finally:
        stop.set()
        await cutter
        client.close()
    print(f"\nrollback propagation (pub/sub cut, polling): {[round(t * 1000) for t in times]} ms")
    assert max(times) < 5.0


async def test_redis_outage_fails_no_request_and_heals(
    replicas: list[ProxyProc], redis_server: RedisServer
) -> None:
    await seed(replicas[0], "outage")
    await until_all_serve(replicas, "outage", "2", limit=5)
    results: list[str | None] = []
    stop = asyncio.Event()

    async def traffic(replica: ProxyProc) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                results.append(await served_version(session, replica, "outage"))

    workers = [asyncio.create_task(traffic(r)) for r in replicas for _ in range(3)]
    try:
        await asyncio.sleep(0.5)
        redis_server.kill()
        killed = time.monotonic()
        # Polled rather than slept: on a loaded CI machine noticing can take a moment longer,
        # and what matters is that it is reported, and that no request fails meanwhile.
        detail = await until_registry_state(replicas[0], "unavailable", limit=10)
        print(f"\noutage reported after {round((time.monotonic() - killed) * 1000)} ms")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{replicas[0].admin_url}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert detail["status"] == "degraded"
        assert "promptproxy_registry_up 0.0" in metrics
        status, body = await admin(replicas[0], "POST", "/prompts/outage/rollback", {})
        assert status == 503
        assert "unavailable" in body["error"]["message"]
        await asyncio.sleep(0.5)
    finally:
        # Restarted whatever happened above: later tests in this module share the server.
        redis_server.restart()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
    assert len(results) > 100
    assert results.count("2") == len(results), f"failures: {len([r for r in results if r != '2'])}"
    # The server came back empty (no persistence): a lost registry, not an empty one. One
    # restore from a replica's snapshot brings the store, and so every replica, back.
    await until_registry_state(replicas[0], "replaced", limit=10)
    status, body = await admin(replicas[0], "POST", "/registry/restore", {"source": "snapshot"})
    assert status == 200, body
    await seed(replicas[1], "after-outage")
    await until_all_serve(replicas, "after-outage", "2", limit=10)


async def test_registry_reading_empty_keeps_the_last_good_snapshot(
    replicas: list[ProxyProc], redis_server: RedisServer
) -> None:
    await seed(replicas[0], "flush")
    await until_all_serve(replicas, "flush", "2", limit=5)
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        flushed = time.monotonic()
    finally:
        client.close()
    # Every replica reports the loss (readiness degraded but routable, a metric), keeps
    # serving, and refuses changes instead of starting a new registry at v1.
    for replica in replicas:
        detail = await until_registry_state(replica, "replaced", limit=10)
        assert detail["status"] == "degraded"
        assert "emptied or replaced" in detail["registry"]["error"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{replica.admin_url}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert "promptproxy_registry_store_replaced 1.0" in metrics
        assert "promptproxy_registry_up 1.0" in metrics
    print(
        f"\nFLUSHALL reported by all replicas after {round((time.monotonic() - flushed) * 1000)} ms"
    )
    async with aiohttp.ClientSession() as session:
        assert [await served_version(session, r, "flush") for r in replicas] == ["2", "2", "2"]
    status, body = await admin(replicas[1], "POST", "/prompts/flush/versions", {"template": "new"})
    assert (status, body["error"]["code"]) == (409, "registry_store_replaced"), body
    assert "restore" in body["error"]["message"]
    client = redis.Redis.from_url(redis_server.url)
    try:
        # The refused push wrote nothing, not even a generation (other keys: analysis).
        assert client.keys("*{registry}*") == []
    finally:
        client.close()

    status, body = await admin(
        replicas[2], "POST", "/registry/restore", {"source": "snapshot", "reason": "FLUSHALL"}
    )
    assert status == 200, body
    restored = time.monotonic()
    for replica in replicas:
        await until_registry_state(replica, "ok", limit=10)
    print(
        f"restore accepted by all replicas after {round((time.monotonic() - restored) * 1000)} ms"
    )
    status, body = await admin(replicas[0], "POST", "/prompts/flush/versions", {"template": "new"})
    assert (status, body["version"]["version"]) == (201, 3), body  # numbering continues
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{replicas[0].admin_url}/admin/v1/audit?slug=flush", headers=ADMIN_HEADERS
        ) as resp,
    ):
        actions = [entry["action"] for entry in (await resp.json())["data"]]
    assert actions[:2] == ["create", "restore"]


async def test_concurrent_pushes_through_two_replicas(replicas: list[ProxyProc]) -> None:
    pushes = [
        admin(replicas[i % 2], "POST", "/prompts/race/versions", {"template": f"variant {i}"})
        for i in range(40)
    ]
    answers = await asyncio.gather(*pushes)
    numbers = sorted(body["version"]["version"] for status, body in answers if status == 201)
    assert numbers == list(range(1, 41))
