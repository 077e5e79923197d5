"""Canary assignment across three replicas sharing one Redis registry: every replica puts a
caller on the same arm, a restarted replica too; a ramp keeps the cohort; an abort reaches
every replica fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.pipeline.choose import bucket
from proxy.prompt_key import PromptKey
from tests.processes import ProxyProc, admin, arm_of, proxy_with_token
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

USERS = [f"user-{i}" for i in range(300)]


async def arms(replica: ProxyProc, slug: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session:
        return {user: await arm_of(session, replica, slug, user) for user in USERS}


async def until(check: Any, limit: float) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, "not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def seed(replica: ProxyProc, slug: str) -> None:
    for text in ("stable prompt", "candidate prompt"):
        status, _ = await admin(replica, "POST", f"/prompts/{slug}/versions", {"template": text})
        assert status == 201
    status, _ = await admin(replica, "POST", f"/prompts/{slug}/promote", {"version": 1})
    assert status == 200


def expected(slug: str, rollout_id: str, basis_points: int) -> dict[str, str]:
    return {
        u: "canary:2" if bucket(PromptKey(slug), rollout_id, u) < basis_points else "stable:1"
        for u in USERS
    }


async def test_every_replica_and_a_restart_agree_on_every_caller(
    replicas: list[ProxyProc], procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> None:
    await seed(replicas[0], "sticky")
    body = {"candidate": 2, "mode": "canary", "percent": 20, "sticky": "header:x-user-id"}
    status, rollout = await admin(replicas[0], "PUT", "/prompts/sticky/rollout", body)
    assert status == 201, rollout
    want = expected("sticky", rollout["id"], 2000)
    assert 30 < list(want.values()).count("canary:2") < 90

    async def all_serve_canary() -> bool:
        async with aiohttp.ClientSession() as session:
            first = next(u for u, arm in want.items() if arm == "canary:2")
            got = [await arm_of(session, r, "sticky", first) for r in replicas]
            return got == ["canary:2"] * 3

    await until(all_serve_canary, limit=5)
    for replica in replicas:
        assert await arms(replica, "sticky") == want

    # A replica started after the rollout (a restart, a scale-up) agrees too.
    with proxy_with_token(procs_dir, sim_url, store=redis_server.url) as newcomer:
        assert await arms(newcomer, "sticky") == want

    # Ramp 20 % -> 40 % through another replica: everyone on the canary stays there.
    body["percent"] = 40
    status, ramped = await admin(replicas[1], "PUT", "/prompts/sticky/rollout", body)
    assert (status, ramped["id"]) == (200, rollout["id"])
    wider = expected("sticky", rollout["id"], 4000)

    async def ramped_everywhere() -> bool:
        return all([await arms(r, "sticky") == wider for r in replicas])

    await until(ramped_everywhere, limit=10)
    assert {u for u, a in want.items() if a == "canary:2"} < {
        u for u, a in wider.items() if a == "canary:2"
    }


async def test_abort_reaches_every_replica_by_notification(replicas: list[ProxyProc]) -> None:
    await seed(replicas[0], "abort")
    body = {"candidate": 2, "mode": "canary", "percent": 100, "sticky": "none"}
    status, _ = await admin(replicas[0], "PUT", "/prompts/abort/rollout", body)
    assert status == 201

    async def everyone(arm: str) -> bool:
        async with aiohttp.ClientSession() as session:
            return [await arm_of(session, r, "abort", "x") for r in replicas] == [arm] * 3

    await until(lambda: everyone("canary:2"), limit=5)
    status, _ = await admin(replicas[2], "DELETE", "/prompts/abort/rollout", {"reason": "test"})
    assert status == 200
    took = await until(lambda: everyone("stable:1"), limit=5)
    print(f"\nabort propagation to 3 replicas: {round(took * 1000)} ms")
    # The promise is 1 s (35 ms on a quiet machine, by notification). The measurement also
    # counts three requests per poll on a 2-core CI box running the suite, so the bound
    # leaves room for that, and still fails if notifications break (polling takes 5 s).
    assert took < 2.0
