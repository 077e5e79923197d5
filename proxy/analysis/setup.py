"""Builds the analysis parts for the configured store: Redis (shared by replicas) or memory
(one process, the embedded store)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.analysis.lease import Lease, LocalLease, RedisLease
from proxy.analysis.pool import MemoryStatsPool, RedisStatsPool, StatsPool
from proxy.analysis.state import MemoryStateStore, RedisStateStore, StateStore
from proxy.config import ProxyConfig

if TYPE_CHECKING:  # redis is imported only when a Redis store is configured
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class AnalysisBackend:
    pool: StatsPool
    lease: Lease
    state: StateStore
    #: The shared Redis client (None with the embedded store): the feedback index uses it.
    redis: Redis | None
    prefix: str


@asynccontextmanager
async def open_backend(
    config: ProxyConfig, replica: str, redis_factory: Callable[[str], Redis] | None = None
) -> AsyncIterator[AnalysisBackend]:
    registry = config.registry
    if not registry.uses_redis:
        yield AnalysisBackend(
            MemoryStatsPool(), LocalLease(replica), MemoryStateStore(), None, registry.redis_prefix
        )
        return
    client = (redis_factory or _client)(registry.store)
    try:
        yield AnalysisBackend(
            RedisStatsPool(client, registry.redis_prefix),
            RedisLease(client, registry.redis_prefix, replica, config.analysis.lease_seconds),
            RedisStateStore(client, registry.redis_prefix),
            client,
            registry.redis_prefix,
        )
    finally:
        await client.aclose()


def _client(url: str) -> Redis:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    # Background work only, but bounded all the same: a frozen Redis must cost a tick, not
    # hang the analyser (reliability guide, Redis client settings).
    return Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        health_check_interval=5,
        client_name="promptproxy-analysis",
    )
