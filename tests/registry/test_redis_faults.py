"""RedisStore under failure, each test with its own redis-server (killed, paused, restarted).

A replica must learn fast that Redis is gone (``StoreUnavailable`` in well under the time
a human would notice), recover by itself when Redis is back, and keep noticing changes when
pub/sub silently breaks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, Status, StickyKey, VersionDraft
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import StoreReplaced, StoreUnavailable
from tests.redis_server import RedisServer

GREET = PromptKey("greet")

PREFIX = "faults:"


@pytest.fixture
async def server(fresh_redis_server: RedisServer) -> RedisServer:
    return fresh_redis_server


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(server.url, prefix=PREFIX)
    yield store
    await store.close()


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url, decode_responses=True, socket_timeout=2)
    yield client
    await client.aclose()


def draft(template: str) -> VersionDraft:
    return VersionDraft(key=GREET, template=template)


async def time_failure(operation: Callable[[], Awaitable[Any]]) -> float:
    """Seconds until ``operation`` raises StoreUnavailable (it must not succeed or hang)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="redis"):
        async with asyncio.timeout(10):
            await operation()
    return time.monotonic() - started


async def time_failures(ops: dict[str, Callable[[], Awaitable[Any]]]) -> dict[str, float]:
    """Run every operation at once (as a busy replica would), each timed on its own."""
    times = await asyncio.gather(*(time_failure(op) for op in ops.values()))
    return dict(zip(ops, times, strict=True))


def operations(store: RedisStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "revision": store.revision,
        "get_version": lambda: store.get_version(GREET, 1),
        "snapshot": store.snapshot,
        "audit": store.audit,
        "create_version": lambda: store.create_version(draft("new"), "alice", time.time()),
        "promote": lambda: store.promote(GREET, 1, "alice", "", time.time()),
        "rollback": lambda: store.rollback(GREET, "alice", "", time.time()),
        "set_status": lambda: store.set_status(
            GREET, 1, Status.CANDIDATE, "alice", "", time.time()
        ),
        "wait_for_change": lambda: store.wait_for_change(-1, 5.0),
        "get_rollout": lambda: store.get_rollout(GREET),
        "start_rollout": lambda: store.start_rollout(
            GREET,
            "r-1",
            1,
            RolloutMode.CANARY,
            100,
            StickyKey.parse("none"),
            "a",
            "",
            1.0,
        ),
        "update_rollout": lambda: store.update_rollout(GREET, "r-1", 200, "a", "", 1.0),
        "abort_rollout": lambda: store.abort_rollout(GREET, "a", "", 1.0),
        "promote_rollout": lambda: store.promote_rollout(GREET, "a", "", 1.0),
    }


async def test_killed_redis_fails_fast_and_the_same_store_recovers(
    server: RedisServer, store: RedisStore
) -> None:
    await store.create_version(draft("a"), "alice", time.time())

    server.kill()
    times = await time_failures(operations(store))
    print("killed redis, seconds to StoreUnavailable:", times)
    assert max(times.values()) < 1.0, times

    server.restart()  # same port, empty (no persistence)
    # No new store, no reconnect call: the pool reconnects, the scripts are reloaded. The
    # restarted server lost the registry, so the store refuses to write into it (identity)
    # rather than start numbering again from 1.
    async with asyncio.timeout(3):
        assert await store.revision() == 0
        with pytest.raises(StoreReplaced):
            await store.create_version(draft("b"), "alice", time.time())
    fresh = RedisStore.from_url(server.url, prefix=PREFIX)  # a process that never saw it
    try:
        async with asyncio.timeout(3):
            version, created = await fresh.create_version(draft("b"), "alice", time.time())
        assert (version.version, created) == (1, True)
        await fresh.promote(GREET, 1, "alice", "", time.time())
        assert (await fresh.snapshot()).prod == {GREET: 1}
    finally:
        await fresh.close()


async def test_paused_redis_fails_fast_instead_of_hanging(
    server: RedisServer, store: RedisStore
) -> None:
    await store.create_version(draft("a"), "alice", time.time())
    fresh = RedisStore.from_url(server.url, prefix=PREFIX)  # no pooled connection yet
    try:
        server.pause()
        times = await time_failures({**operations(store), "revision (new client)": fresh.revision})
        print("paused redis, seconds to StoreUnavailable:", times)
        assert max(times.values()) < 2.0, times
    finally:
        server.resume()
        await fresh.close()

    async with asyncio.timeout(3):
        assert (await store.get_version(GREET, 1)).template == "a"


async def test_wait_for_change_survives_a_killed_pubsub_connection(
    store: RedisStore, server: RedisServer, raw: Redis
) -> None:
    writer = RedisStore.from_url(server.url, prefix=PREFIX)
    try:
        for round_ in range(2):  # and again: the replacement subscription works too
            known = await store.revision()
            waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
            await asyncio.sleep(0.3)
            killed = await raw.client_kill_filter(_type="pubsub")
            assert killed >= 1
            started = time.monotonic()
            await writer.create_version(draft(f"v{round_}"), "bob", time.time())
            revision = await asyncio.wait_for(waiter, timeout=5.0)
            elapsed = time.monotonic() - started
            print(f"round {round_}: change noticed {elapsed:.2f}s after pub/sub was killed")
            assert revision == known + 1
            assert elapsed < 2.0
    finally:
        await writer.close()


async def test_a_lost_notification_is_caught_by_polling(store: RedisStore, raw: Redis) -> None:
    known = await store.revision()
    waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    # A revision bump whose PUBLISH never arrived (e.g. sent while pub/sub reconnected).
    await raw.incr(store.keys.revision)
    revision = await asyncio.wait_for(waiter, timeout=5.0)
    elapsed = time.monotonic() - started
    assert revision == known + 1
    assert elapsed < 1.5, f"noticed after {elapsed:.2f}s"


async def test_close_releases_every_connection(
    server: RedisServer, raw: Redis, store: RedisStore
) -> None:
    await store.create_version(draft("a"), "alice", time.time())
    waiter = asyncio.create_task(store.wait_for_change(await store.revision(), 10.0))
    await asyncio.sleep(0.2)

    async def ours() -> list[dict[str, Any]]:
        clients = await raw.client_list()
        return [c for c in clients if c.get("name") == "promptproxy-registry"]

    assert len(await ours()) >= 2  # commands + pub/sub
    await store.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(waiter, timeout=3.0)
    for _ in range(60):  # the server notices closed sockets asynchronously
        if not await ours():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"connections left open after close(): {await ours()}")
