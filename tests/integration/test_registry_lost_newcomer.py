"""A replica started after Redis lost the registry (FLUSHALL) must not start a new one.

Real processes on a real redis-server: replica A serves several prompts, Redis is flushed,
replica B starts with a bootstrap folder (the shipped config sets one). B must not become
ready nor write a generation (its bootstrap would otherwise stamp a new registry at v1 and
serve only the bootstrap prompts); once an operator restores the store from A, B binds to
the restored registry and serves A's prompts. The fleet view shows the loss meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from tests.processes import ProxyProc, proxy
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"PROMPTPROXY_ADMIN_TOKEN": TOKEN}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
BOARD = "promptproxy:fleet:info"


@pytest.fixture(scope="module")
def redis_server(procs_dir: Path) -> Iterator[RedisServer]:
    workdir = procs_dir / "redis-lost-newcomer"
    workdir.mkdir(exist_ok=True)
    with running_redis(workdir) as server:
        yield server


async def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=ADMIN) as resp,
    ):
        return resp.status, await resp.json()


async def _served(replica: ProxyProc, slug: str) -> str | None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{replica.url.removesuffix('/v1')}/p/{slug}/v1/chat/completions", json=CHAT
        ) as resp,
    ):
        await resp.read()
        return resp.headers.get("x-prompt-version") if resp.status == 200 else None


async def _readyz(replica: ProxyProc) -> tuple[int, Any]:
    return await _call("GET", f"{replica.admin_url}/readyz")


def _board_states(server: RedisServer) -> dict[str, str]:
    client = redis.Redis.from_url(server.url)
    try:
        return {
            name.decode(): orjson.loads(info)["state"]
            for name, info in client.hgetall(BOARD).items()
        }
    finally:
        client.close()


async def _until(check: Any, never: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, never
        await asyncio.sleep(0.05)


async def test_a_replica_started_after_a_flushall_waits_for_the_restore(
    procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> None:
    prompts = procs_dir / "lost-newcomer-prompts"
    prompts.mkdir()
    (prompts / "greet.md").write_text("---\nauthor: test\n---\nSay hello.\n")
    config = f"registry:\n  bootstrap_dir: {prompts}\n"
    store = redis_server.url
    with proxy(procs_dir, sim_url, config, store=store, env=ENV) as a:
        admin = f"{a.admin_url}/admin/v1"
        for slug, texts in (("kept", ("one", "two")), ("other", ("three",))):
            for text in texts:
                status, body = await _call(
                    "POST", f"{admin}/prompts/{slug}/versions", {"template": text}
                )
                assert status == 201, body
        for slug, version in (("kept", 2), ("other", 1)):
            status, body = await _call(
                "POST", f"{admin}/prompts/{slug}/promote", {"version": version}
            )
            assert status == 200, body
        assert await _served(a, "kept") == "2"

        client = redis.Redis.from_url(store)
        try:
            client.flushall()
        finally:
            client.close()

        async def a_reports_the_loss_on_the_board() -> bool:
            # The FLUSHALL emptied the board too; A's next heartbeat writes it again.
            return any(state == "replaced" for state in _board_states(redis_server).values())

        await _until(a_reports_the_loss_on_the_board, "A never reported the loss on the board")
        status, fleet = await _call("GET", f"{admin}/fleet")
        assert status == 200, fleet
        [row] = [r for r in fleet["data"] if r["this"]]
        assert (row["state"], row["healthy"], row["behind"]) == ("replaced", False, None)
        assert fleet["generation"] is None

        with proxy(procs_dir, sim_url, config, store=store, env=ENV, ready=False) as b:

            async def b_sees_the_loss() -> bool:
                status, body = await _readyz(b)
                assert status == 503, body  # never ready: it has nothing to serve
                return bool(body["registry"]["state"] == "replaced")

            await _until(b_sees_the_loss, "B never reported the store lost")
            status, body = await _readyz(b)
            assert (status, body["status"], body["registry"]["prompts"]) == (503, "starting", 0)
            client = redis.Redis.from_url(store)
            try:
                # B's bootstrap was refused: no new generation, no prompt at v1 (only the
                # key schema's version, which a store records on its first command).
                assert client.keys("*{registry}*") == [b"promptproxy:{registry}:schema"]
            finally:
                client.close()
            status, body = await _call(
                "POST", f"{b.admin_url}/admin/v1/prompts/greet/versions", {"template": "new"}
            )
            assert (status, body["error"]["code"]) == (409, "registry_store_replaced"), body

            status, body = await _call(
                "POST", f"{admin}/registry/restore", {"source": "snapshot", "reason": "FLUSHALL"}
            )
            assert status == 200, body
            restored = time.monotonic()

            async def b_ready() -> bool:
                return (await _readyz(b))[0] == 200

            await _until(b_ready, "B never became ready after the restore")
            print(
                f"\nnewcomer ready {round((time.monotonic() - restored) * 1000)} ms after restore"
            )
            status, body = await _readyz(b)
            assert (body["status"], body["registry"]["state"]) == ("ready", "ok")
            assert [await _served(b, slug) for slug in ("kept", "other", "greet")] == [
                "2",
                "1",
                "1",
            ]

            async def a_ready() -> bool:
                return bool((await _readyz(a))[1]["status"] == "ready")

            await _until(a_ready, "A never accepted the restored store")
            status, fleet = await _call("GET", f"{admin}/fleet")
            states = {r["state"] for r in fleet["data"] if r["live"]}
            assert states == {"ok"}, fleet
