"""What only the Redis analysis parts have: their keys, under the deployment's prefix, with
the expiry that cleans up after a rollout (the contract they share with PostgreSQL is in
test_analysis_parts.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from proxy.analysis.pool import RedisStatsPool
from proxy.analysis.state import MAX_VERDICTS, AnalysisState, RedisStateStore
from proxy.prompt_key import PromptKey
from tests.redis_server import RedisServer
from tests.registry.test_analysis_parts import replica_batches, verdict

GREET = PromptKey("greet")


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    opened = Redis.from_url(redis_server.url)
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_pool_keys_honour_the_prefix_and_expire(client: Redis, prefix: str) -> None:
    pool = RedisStatsPool(client, prefix)
    await pool.add(replica_batches(0, int(time.time())), keep_seconds=30)

    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 4 + 1 + 1  # four slots, r-0's slot, r-1's divergence
    for key in keys:
        ttl = await client.ttl(key)
        assert 0 < ttl <= 86_400, key
        if ":w:" in key:
            assert ttl <= 30 + 120  # the window, plus the grace
    assert not [k async for k in client.scan_iter(match="promptproxy:*")]


async def test_state_keys_honour_the_prefix_and_expire(client: Redis, prefix: str) -> None:
    store = RedisStateStore(client, prefix)
    state = AnalysisState("r-1", failures=0, step_started_at=1000.25, next_at=1060.5)
    for n in range(MAX_VERDICTS + 5):
        await store.save(GREET, state, verdict("r-1", n))

    assert await client.llen(f"{prefix}{{analysis}}:verdicts:greet") == MAX_VERDICTS
    for key in (f"{prefix}{{analysis}}:state:greet", f"{prefix}{{analysis}}:verdicts:greet"):
        assert 0 < await client.ttl(key) <= 7 * 86_400
    assert not [k async for k in client.scan_iter(match="promptproxy:*")]
