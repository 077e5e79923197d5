"""Who analyses a rollout: exactly one replica at a time, by lease.

With Redis, the lease is a key holding the replica's id with a short expiry, renewed on
every tick; a replica that stops renewing (killed, partitioned, shut down) loses it after
``lease_seconds`` and another one takes over, reading the analysis state it left in Redis.
With the embedded store there is one process, which always holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # redis is imported only when a Redis store is configured
    from redis.asyncio import Redis


# Take the lease when it is free, renew it when it is ours; one round trip, no race.
_HOLD = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease(Protocol):
    @property
    def replica(self) -> str: ...

    async def hold(self, slug: str) -> bool:
        """Take or renew the slug's lease; True while this replica holds it."""
        ...

    async def holder(self, slug: str) -> str | None: ...

    async def release(self, slug: str) -> None: ...


class LocalLease:
    def __init__(self, replica: str) -> None:
        self._replica = replica
        self._held: set[str] = set()

    @property
    def replica(self) -> str:
        return self._replica

    async def hold(self, slug: str) -> bool:
        self._held.add(slug)
        return True

    async def holder(self, slug: str) -> str | None:
        return self._replica if slug in self._held else None

    async def release(self, slug: str) -> None:
        self._held.discard(slug)


class RedisLease:
    def __init__(self, client: Redis, prefix: str, replica: str, seconds: float) -> None:
        self._redis = client
        self._prefix = prefix + "{analysis}:lease:"
        self._replica = replica
        self._ms = int(seconds * 1000)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    @property
    def replica(self) -> str:
        return self._replica

    async def hold(self, slug: str) -> bool:
        return bool(await self._hold(keys=[self._prefix + slug], args=[self._replica, self._ms]))

    async def holder(self, slug: str) -> str | None:
        value = await self._redis.get(self._prefix + slug)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def release(self, slug: str) -> None:
        await self._release(keys=[self._prefix + slug], args=[self._replica])
