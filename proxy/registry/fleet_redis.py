"""The fleet board in Redis: two hashes keyed by replica id, ``fleet:info`` (its report) and
``fleet:beat`` (the Redis server's time of its last heartbeat, in ms).

Heartbeats are stamped by the server's clock (``TIME`` inside the script), so ages compare
across machines whatever their clocks say. Each heartbeat also drops the entries of replicas
gone for ``forget_seconds`` (Redis 7.0 has no per-field expiry), and both keys expire after
that long if every replica stops.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from proxy.registry.fleet import BoardRead, FleetError, ReplicaBeat
from proxy.tasks import interruptible

if TYPE_CHECKING:
    from redis.asyncio import Redis

_PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local forget = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
local beats = redis.call('HGETALL', KEYS[2])
for i = 1, #beats, 2 do
  if now - tonumber(beats[i + 1]) > forget then
    redis.call('HDEL', KEYS[1], beats[i])
    redis.call('HDEL', KEYS[2], beats[i])
  end
end
redis.call('PEXPIRE', KEYS[1], forget)
redis.call('PEXPIRE', KEYS[2], forget)
return now
"""

_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
"""


def _failure_types() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


class RedisFleetBoard:
    def __init__(
        self, client: Redis, prefix: str, forget_seconds: float, op_timeout: float = 1.5
    ) -> None:
        self._client = client
        self._op_timeout = op_timeout
        self._keys = [f"{prefix}fleet:info", f"{prefix}fleet:beat"]
        self._forget_ms = int(forget_seconds * 1000)
        self._publish = client.register_script(_PUBLISH)
        self._read = client.register_script(_READ)
        self._remove = client.register_script(_REMOVE)
        self._failures = _failure_types()

    async def _call(self, script: Any, args: list[Any]) -> Any:
        """Bounded (a shutdown's last ``remove`` must not wait out a frozen Redis), and in a
        task of its own: redis-py can swallow a cancel (see ``proxy.tasks``), and the
        heartbeat cancelled mid-write would then beat on and hold the shutdown."""
        try:
            async with asyncio.timeout(self._op_timeout):
                return await interruptible(
                    script(keys=self._keys, args=args), grace=self._op_timeout
                )
        except self._failures as exc:
            raise FleetError(str(exc) or type(exc).__name__) from None

    async def publish(self, beat: ReplicaBeat) -> None:
        await self._call(self._publish, [beat.replica, beat.to_json(), self._forget_ms])

    async def read(self) -> BoardRead:
        now_ms, info, beats = await self._call(self._read, [])
        at = _pairs(beats)
        entries = []
        for name, raw in _pairs(info).items():
            beat = ReplicaBeat.from_json(raw)
            if beat is not None and name in at:
                entries.append((beat, int(at[name]) / 1000))
        return BoardRead(int(now_ms) / 1000, entries)

    async def remove(self, replica: str) -> None:
        await self._call(self._remove, [replica])

    async def close(self) -> None:
        """The client belongs to whoever made it."""


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in zip(flat[::2], flat[1::2], strict=True)
    }
