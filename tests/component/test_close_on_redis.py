"""Closing the full services on a Redis registry always finishes, whatever was in flight.

Shutdown cancels the registry refresher (inside a pub/sub wait or a Redis read) and the fleet
heartbeat (often inside a board write, since every applied snapshot triggers one). On Python
3.11 redis-py writes every command through ``asyncio.wait_for``, which swallows a cancel that
lands just as the write finished: the cancelled task then ran on and its close waited for it
forever. Many open/close cycles, some right after a request or an admin write, land cancels
all over those paths; the bound turns a hang into a quick failure instead of the suite timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.redis_server import RedisServer, running_redis
from tests.support import FAKE_UPSTREAM, make_settings, proxy_clients, upstream_mock

ADMIN = {"Authorization": "Bearer admin-secret"}
CYCLES = 15
# Far above a normal close (milliseconds) and below the suite's 60 s timeout: only a close
# that cannot finish reaches it.
CLOSE_BOUND = 10.0
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


async def _request(data: TestClient[Any, Any], admin: TestClient[Any, Any], cycle: int) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {cycle}"}]}
    with upstream_mock() as mocked:
        mocked.post(f"{FAKE_UPSTREAM}/chat/completions", payload=ANSWER)
        resp = await data.post("/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()


async def _admin_write(data: TestClient[Any, Any], admin: TestClient[Any, Any], cycle: int) -> None:
    # Promoting makes every part move at once: the store publishes a change, the refresher
    # loads it, the heartbeat writes the board, and the write waits for the fleet to serve it.
    resp = await admin.post(
        "/admin/v1/prompts/support/versions",
        json={"template": f"Answer briefly ({cycle})."},
        headers=ADMIN,
    )
    assert resp.status in (200, 201), await resp.text()
    version = (await resp.json())["version"]["version"]
    resp = await admin.post(
        "/admin/v1/prompts/support/promote",
        json={"version": version, "reason": "close test"},
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()


async def _nothing(data: TestClient[Any, Any], admin: TestClient[Any, Any], cycle: int) -> None:
    await asyncio.sleep(0)


def _names(tasks: set[asyncio.Task[Any]]) -> list[str]:
    return sorted(f"{t.get_name()} ({t.get_coro()})" for t in tasks)


async def _close_within_bound(
    opened: AbstractAsyncContextManager[Any], before: set[asyncio.Task[Any]], cycle: int
) -> None:
    # What is still running just before the bound fires: the stuck tasks, by name.
    stuck: list[str] = []
    late = asyncio.get_running_loop().call_later(
        CLOSE_BOUND - 0.5, lambda: stuck.extend(_names(asyncio.all_tasks() - before))
    )
    bound = asyncio.timeout(CLOSE_BOUND)
    # The bound's own cancel can be swallowed on the way out too: ask the bound whether it
    # fired, not only whether TimeoutError came out.
    with contextlib.suppress(TimeoutError):
        async with bound:
            await opened.__aexit__(None, None, None)
    late.cancel()
    if bound.expired():
        pytest.fail(f"cycle {cycle}: closing the services hung; tasks left: {stuck}")


@pytest.mark.parametrize("work", [_nothing, _request, _admin_write], ids=lambda f: f.__name__)
async def test_services_on_redis_close_every_time(
    redis_server: RedisServer, tmp_path: Path, work: Any
) -> None:
    prefix = f"close-{uuid.uuid4().hex[:8]}:"
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret"},
        **{"registry.store": redis_server.url, "registry.redis_prefix": prefix},
    )
    before = asyncio.all_tasks()
    for cycle in range(CYCLES):
        opened = proxy_clients(settings)
        data, admin, _ = await opened.__aenter__()
        try:
            await work(data, admin, cycle)
        finally:
            await _close_within_bound(opened, before, cycle)
        # Nothing the services started outlives them: no I/O task left reading a socket.
        left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
        assert not left, f"cycle {cycle}: tasks still running after close: {left}"
