"""The Redis backend (`redis://`, `rediss://`, `unix://`): every part in one Redis, shared by
every replica pointed at it, under `registry.redis_prefix`.

Connections, as before this seam: the registry store has its own client (string replies,
its pub/sub change hints), the pair sink its writer and reader clients (an admin `tail`
must never hold up the writer), and the fleet board, analysis pool, lease and state, the
feedback request index, the usage ledger, the eval runs and the captured calls share one
client, closed after all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from proxy.analysis.lease import RedisLease
from proxy.analysis.pool import RedisStatsPool
from proxy.analysis.state import RedisStateStore
from proxy.backends.base import Backend, BackendContext
from proxy.capture.captures_redis import RedisCaptureStore
from proxy.config import Settings
from proxy.evals.runs_redis import RedisEvalRunStore
from proxy.feedback import RedisRequestIndex
from proxy.registry.fleet_redis import RedisFleetBoard
from proxy.registry.redis_store import RedisStore
from proxy.shadow.sink_redis import RedisPairSink
from proxy.tasks import interruptible
from proxy.usage.usage_redis import RedisUsageLedger

#: Closing the shared client waits this long at most: a frozen Redis must not hold up exit.
_CLOSE_GRACE = 1.0


def shared_client(url: str) -> Redis:
    """The client the background parts share. Background work only, but bounded all the
    same: a frozen Redis must cost a tick, not hang the analyser (reliability guide, Redis
    client settings)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        health_check_interval=5,
        client_name="promptproxy-analysis",
    )


async def _close_client(client: Redis) -> None:
    # Bounded like the registry store's close: shutdown must finish whatever Redis does.
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(_CLOSE_GRACE):
            await interruptible(client.aclose(close_connection_pool=True), grace=0.0)


async def open_backend(settings: Settings, context: BackendContext) -> Backend:
    """No I/O here: every client connects on first use, so a Redis that is down at start
    is the registry's start-up wait, not a failure to open."""
    config = settings.config
    registry = config.registry
    kind = registry.backend
    assert kind.name == "redis", "a store of another backend"
    url, prefix = registry.store, registry.redis_prefix
    async with AsyncExitStack() as stack:
        client = shared_client(url)
        stack.push_async_callback(_close_client, client)
        store = RedisStore.from_url(url, prefix=prefix)
        stack.push_async_callback(store.close)
        board = RedisFleetBoard(client, prefix, config.fleet.forget_seconds)
        stack.push_async_callback(board.close)
        pool = RedisStatsPool(client, prefix)
        stack.push_async_callback(pool.close)
        index = RedisRequestIndex(client, prefix, config.feedback.ttl_seconds, context.on_error)
        index.start()
        stack.push_async_callback(index.close)
        pairs = RedisPairSink(url, prefix, config.shadow.sink, context.pair_metrics)
        stack.push_async_callback(pairs.close)
        usage = RedisUsageLedger(client, prefix, keep_days=config.usage.keep_days)
        stack.push_async_callback(usage.close)
        evals = RedisEvalRunStore(
            client,
            prefix,
            keep_runs=config.evals.keep_runs,
            max_detail_bytes=config.evals.max_detail_bytes,
        )
        stack.push_async_callback(evals.close)
        captures = RedisCaptureStore(
            client,
            prefix,
            keep_per_slug=config.capture.keep_per_slug,
            keep_hours=config.capture.keep_hours,
            max_bytes=config.capture.max_bytes,
        )
        stack.push_async_callback(captures.close)
        closer = stack.pop_all()
    return Backend(
        kind=kind,
        store_url=url,
        store=store,
        board=board,
        pool=pool,
        lease=RedisLease(client, prefix, context.replica, config.analysis.lease_seconds),
        state=RedisStateStore(client, prefix),
        index=index,
        pairs=pairs,
        usage=usage,
        evals=evals,
        captures=captures,
        closer=closer.aclose,
    )
