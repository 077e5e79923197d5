"""``RedisCaptureStore``: captured calls in the shared Redis.

Key schema (P = the store's prefix; ``{captures}`` is a hash tag, so a Redis Cluster keeps
every key in one slot and one script may touch them all, whatever slugs a batch holds):

=================================  ======  ==============================================
``P{captures}:cap:<id>``           string  the capture as JSON; expires ``keep_hours``
                                           after its ``at``
``P{captures}:slug:<slug>``        zset    the slug's capture ids, scored by ``at``;
                                           expires with its newest capture
=================================  ======  ==============================================

``<slug>`` is the prompt key's text, as given; ids are ``[A-Za-z0-9._-]``. A sorted set
orders equal scores by member, so ``ZRANGEBYSCORE`` reads oldest first by ``at`` then
``id``, the order every store keeps.

An add is one Lua script for the whole batch, which Redis runs whole (so a batch is written
entirely or not at all): each capture not stored yet (idempotent on id, so the client's own
retry of a script whose answer was lost applies nothing twice) gets its string, with its
expiry, and its id in its slug's set; then, for each slug of the batch, the ids past
``keep_hours`` and the oldest past ``keep_per_slug`` are removed with their strings.

Expiry is reckoned on this process's clock: a capture's string is given the milliseconds it
has left, and a read's lower bound is never before ``keep_hours`` ago, so a read or count
skips an expired capture at once, though its id may wait in the set until the next add of
its slug (or the set's own expiry).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from proxy.capture.records import (
    DEFAULT_KEEP_HOURS,
    DEFAULT_KEEP_PER_SLUG,
    DEFAULT_MAX_BYTES,
    Capture,
    CaptureList,
    CapturesUnavailable,
    check_read,
    check_store_options,
    decode,
    encode_batch,
    expired_before,
)
from proxy.tasks import interruptible

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

#: What one call may take: an add sends up to a few MiB.
DEFAULT_TIMEOUT = 5.0

#: KEYS: for each capture, its string then its slug's set. ARGV: the oldest ``at`` kept
#: (``expired_before``), keep_per_slug, the key prefix (``P{captures}:``), then for each
#: capture: id, score, JSON, milliseconds to live. Returns how many were written.
_ADD = """
local oldest, keep, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local written, slugs, seen = 0, {}, {}
for i = 1, #KEYS / 2 do
  local key, zkey, arg = KEYS[2 * i - 1], KEYS[2 * i], 3 + 4 * (i - 1)
  if redis.call('EXISTS', key) == 0 and not redis.call('ZSCORE', zkey, ARGV[arg + 1]) then
    redis.call('SET', key, ARGV[arg + 3], 'PX', ARGV[arg + 4])
    redis.call('ZADD', zkey, ARGV[arg + 2], ARGV[arg + 1])
    written = written + 1
  end
  if not seen[zkey] then
    seen[zkey] = true
    slugs[#slugs + 1] = zkey
  end
end
for _, zkey in ipairs(slugs) do
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. oldest)
  local over = redis.call('ZCARD', zkey) - #gone - keep
  if over > 0 then
    local old = redis.call('ZRANGE', zkey, #gone, #gone + over - 1)
    for _, id in ipairs(old) do gone[#gone + 1] = id end
  end
  for _, id in ipairs(gone) do redis.call('DEL', prefix .. 'cap:' .. id) end
  if #gone > 0 then redis.call('ZREMRANGEBYRANK', zkey, 0, #gone - 1) end
  local newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  if newest[2] then
    local ms = math.ceil((tonumber(newest[2]) - tonumber(oldest)) * 1000)
    if ms > 0 then redis.call('PEXPIRE', zkey, string.format('%d', ms)) end
  end
end
return written
"""

#: KEYS[1]: a slug's set. ARGV: the least score, the bound above (exclusive), the limit,
#: the key prefix. Returns the captures' JSON, oldest first (an id whose string has expired
#: is skipped, and the read goes on past it to fill the limit).
_READ = """
local limit, out, offset = tonumber(ARGV[3]), {}, 0
while #out < limit do
  local ids = redis.call(
    'ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', offset, limit - #out)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local data = redis.call('GET', ARGV[4] .. 'cap:' .. id)
    if data then out[#out + 1] = data end
  end
  offset = offset + #ids
end
return out
"""


def _score(value: float) -> str:
    # repr: the shortest text that reads back as the same float.
    return repr(float(value))


class RedisCaptureStore:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        keep_per_slug: int = DEFAULT_KEEP_PER_SLUG,
        keep_hours: float = DEFAULT_KEEP_HOURS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        op_timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``client`` is shared with the other Redis parts; its owner closes it. ``clock``
        is what retention by age reads (tests pass their own)."""
        check_store_options(keep_per_slug, keep_hours, max_bytes)
        self._redis = client
        self._prefix = prefix + "{captures}:"
        self._keep_per_slug = keep_per_slug
        self._keep_hours = keep_hours
        self._max_bytes = max_bytes
        self._op_timeout = op_timeout
        self._clock = clock
        self._add_script = client.register_script(_ADD)
        self._read_script = client.register_script(_READ)
        self._closed = False

    def _capture_key(self, capture_id: str) -> str:
        return f"{self._prefix}cap:{capture_id}"

    def _slug_key(self, slug: str) -> str:
        return f"{self._prefix}slug:{slug}"

    def _check_open(self) -> None:
        if self._closed:
            raise CapturesUnavailable("the captures store is closed")

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        self._check_open()
        try:
            async with asyncio.timeout(self._op_timeout):
                # In a task of its own: redis-py can swallow a cancel (see ``proxy.tasks``).
                return await interruptible(call(), grace=self._op_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            raise CapturesUnavailable(
                f"redis unavailable for captures: {type(exc).__name__}: {exc}"
            ) from exc

    async def add(self, captures: Sequence[Capture]) -> None:
        encoded = encode_batch(captures, max_bytes=self._max_bytes)
        self._check_open()
        if not encoded:
            return
        oldest = expired_before(self._clock(), self._keep_hours)
        keys: list[str] = []
        args: list[Any] = [_score(oldest), self._keep_per_slug, self._prefix]
        for e in encoded:
            if e.capture.at < oldest:
                continue  # already past keep_hours: not written
            ttl_ms = max(1, math.ceil((e.capture.at - oldest) * 1000))
            keys += [self._capture_key(e.capture.id), self._slug_key(e.capture.slug)]
            args += [e.capture.id, _score(e.capture.at), e.data, ttl_ms]
        if not keys:
            return

        async def add() -> Any:
            return await self._add_script(keys=keys, args=args)

        await self._call(add)

    async def read(
        self, slug: str, *, since: float, until: float | None = None, limit: int = 1000
    ) -> CaptureList:
        check_read(since, until, limit)
        least = _score(max(since, expired_before(self._clock(), self._keep_hours)))
        above = "+inf" if until is None or until == math.inf else "(" + _score(until)
        args: list[Any] = [least, above, limit, self._prefix]

        async def read() -> list[Any]:
            return await self._read_script(keys=[self._slug_key(slug)], args=args)  # type: ignore[no-any-return]

        return [decode(data) for data in await self._call(read)]

    async def count(self, slug: str, *, since: float) -> int:
        check_read(since, None, 1)
        least = _score(max(since, expired_before(self._clock(), self._keep_hours)))

        async def count() -> int:
            return await self._redis.zcount(self._slug_key(slug), least, "+inf")

        return await self._call(count)

    async def close(self) -> None:
        self._closed = True  # the client is its owner's to close
