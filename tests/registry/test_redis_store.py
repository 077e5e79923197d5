"""What only the Redis store has: a shared server, its key layout and its connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, StickyKey, Tenant, VersionDraft
from proxy.registry.redis_store import RedisStore
from tests.redis_server import RedisServer

GREET = PromptKey("greet")


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=2)
    yield client
    await client.aclose()


async def test_every_key_is_under_the_prefix_in_one_cluster_slot(
    redis_server: RedisServer, raw: Redis
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="team-a:")
    neighbour = RedisStore.from_url(redis_server.url, prefix="team-b:")
    try:
        await store.create_version(VersionDraft(key=GREET, template="a"), "x", 1.0)
        await store.create_version(VersionDraft(key=GREET, template="b"), "x", 2.0)
        await store.promote(GREET, 1, "x", "", 3.0)
        await store.promote(GREET, 2, "x", "", 4.0)
        await store.create_version(VersionDraft(key=GREET, template="c"), "x", 5.0)
        await store.start_rollout(
            GREET,
            "r-1",
            3,
            RolloutMode.CANARY,
            100,
            StickyKey.parse("user"),
            "x",
            "",
            6.0,
        )
        await store.put_tenant(Tenant("acme", "pro", ("0" * 64,)), "x", "", 7.0)
        await neighbour.create_version(VersionDraft(key=GREET, template="z"), "y", 1.0)

        keys = [key async for key in raw.scan_iter("team-a:*")]
        assert store.keys.rollout(GREET) in keys
        assert {store.keys.tenants, store.keys.tenant_keys, store.keys.tenant_audits} <= set(keys)
        assert all(key.startswith("team-a:{registry}:") for key in keys)
        assert len({key_slot(key.encode()) for key in keys}) == 1  # one slot: scripts work
        # Two prefixes on one server are two independent registries.
        assert [v.template for v in await neighbour.list_versions(GREET)] == ["z"]
        assert (await neighbour.snapshot()).prod == {}
        assert await neighbour.get_rollout(GREET) is None
        assert await neighbour.list_tenants() == []
    finally:
        await store.close()
        await neighbour.close()


async def test_waiting_for_changes_reuses_its_connections(
    redis_server: RedisServer, raw: Redis
) -> None:
    # The snapshot refresher waits about once a second, forever: no connection churn.
    store = RedisStore.from_url(redis_server.url, prefix=f"churn-{time.monotonic_ns()}:")
    try:
        known = await store.revision()
        await store.wait_for_change(known, 0.1)
        before = int((await raw.info("stats"))["total_connections_received"])
        for _ in range(8):
            assert await store.wait_for_change(known, 0.1) == known
        after = int((await raw.info("stats"))["total_connections_received"])
        assert after - before == 0
    finally:
        await store.close()


def test_a_prefix_that_would_break_the_hash_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="hash tag"):
        RedisStore.from_url("redis://127.0.0.1:1/0", prefix="bad{prefix}:")


async def test_a_write_wakes_waiters_at_once_not_at_the_next_poll(
    redis_server: RedisServer,
) -> None:
    prefix = f"wake-{time.monotonic_ns()}:"
    waiter_store = RedisStore.from_url(redis_server.url, prefix=prefix, poll_interval=0.5)
    writer = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        latencies = []
        for i in range(5):  # the first wait (fresh subscription) included
            known = await waiter_store.revision()
            waiter = asyncio.create_task(waiter_store.wait_for_change(known, 5.0))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await writer.create_version(VersionDraft(key=GREET, template=f"v{i}"), "x", 1.0)
            assert await asyncio.wait_for(waiter, 3.0) == known + 1
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 0.25, latencies  # polling alone would take up to 0.5 s
    finally:
        await waiter_store.close()
        await writer.close()


async def test_a_cancelled_wait_leaves_the_store_usable(redis_server: RedisServer) -> None:
    # The snapshot refresher is cancelled at shutdown or reload, mid-wait.
    prefix = f"cancel-{time.monotonic_ns()}:"
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    writer = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        known = await store.revision()
        waiter = asyncio.create_task(store.wait_for_change(known, 5.0))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

        waiter = asyncio.create_task(store.wait_for_change(known, 5.0))
        await asyncio.sleep(0.1)
        await writer.create_version(VersionDraft(key=GREET, template="a"), "x", 1.0)
        assert await asyncio.wait_for(waiter, 2.0) == known + 1
    finally:
        await store.close()
        await writer.close()


async def test_audit_entries_written_before_details_existed_still_read(
    redis_server: RedisServer, raw: Redis
) -> None:
    # Streams written by an earlier promptproxy have no "detail" field.
    store = RedisStore.from_url(redis_server.url, prefix=f"old-{time.monotonic_ns()}:")
    try:
        await store.create_version(VersionDraft(key=GREET, template="a"), "x", 1.0)
        old = {
            "at": "2.5",
            "actor": "ops",
            "action": "set_status",
            "slug": "greet",
            "version": "1",
            "from_status": "draft",
            "to_status": "candidate",
            "reason": "",
            "previous_prod": "",
        }
        for key in (store.keys.audit, store.keys.key_audit(GREET)):
            await raw.xadd(key, old, id="1000-0")
        newest, create = await store.audit(key=GREET)
        assert (newest.seq, newest.action, newest.detail) == (1000, "set_status", None)
        assert (create.action, create.detail) == ("create", None)
    finally:
        await store.close()
