"""Who analyses a rollout: exactly one replica at a time, by lease.

A lease is per prompt key (one version line). With Redis, the lease is a key (named by the
prompt key's text) holding the replica's id with a short expiry, renewed on every tick; a
replica that stops renewing (killed, partitioned, shut down) loses it after
``lease_seconds`` and another one takes over, reading the analysis state it left in Redis.
With the embedded store there is one process, which always holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from proxy.prompt_key import PromptKey

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

    async def hold(self, key: PromptKey) -> bool:
        """Take or renew the key's lease; True while this replica holds it."""
        ...

    async def holder(self, key: PromptKey) -> str | None: ...

    async def release(self, key: PromptKey) -> None: ...


class LocalLease:
    def __init__(self, replica: str) -> None:
        self._replica = replica
        self._held: set[PromptKey] = set()

    @property
    def replica(self) -> str:
        return self._replica

    async def hold(self, key: PromptKey) -> bool:
        self._held.add(key)
        return True

    async def holder(self, key: PromptKey) -> str | None:
        return self._replica if key in self._held else None

    async def release(self, key: PromptKey) -> None:
        self._held.discard(key)


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

    async def hold(self, key: PromptKey) -> bool:
        return bool(
            await self._hold(keys=[self._prefix + key.text], args=[self._replica, self._ms])
        )

    async def holder(self, key: PromptKey) -> str | None:
        value = await self._redis.get(self._prefix + key.text)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def release(self, key: PromptKey) -> None:
        await self._release(keys=[self._prefix + key.text], args=[self._replica])
