"""``RedisEvalRunStore``: eval runs in the shared Redis.

Key schema (P = the store's prefix; ``{evals}`` is a hash tag, so a Redis Cluster keeps
every key in one slot and one script may touch them all):

=================================  ======  ==============================================
``P{evals}:run:<id>``              hash    ``head`` (the run without its detail, JSON),
                                           ``detail`` (JSON), ``candidate``
``P{evals}:slug:<slug>``           zset    the slug's run ids, scored by ``finished_at``
``P{evals}:cand:<n>:<slug>``       zset    the same, of the runs whose candidate is ``n``
=================================  ======  ==============================================

``<slug>`` is the prompt key's text, as given; ``<n>`` is digits, so ``cand:`` names never
collide whatever a slug holds. Ids are ``[A-Za-z0-9._-]``. A sorted set orders equal
scores by member, so ``ZREVRANGE`` lists newest first by ``finished_at`` then ``id``, the
order every store keeps.

An add is one Lua script, which Redis runs whole: it does nothing when the run's hash
exists (idempotent on id, so the client's own retry of a script whose answer was lost
applies nothing twice), else writes the hash and both sorted sets, then deletes the
slug's runs past ``keep_runs`` (their hashes and their ids in both sets). Nothing expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from proxy.evals.runs import (
    DEFAULT_KEEP_RUNS,
    DEFAULT_MAX_DETAIL_BYTES,
    EvalRun,
    EvalRunsUnavailable,
    RunList,
    check_limit,
    check_store_options,
    decode_run,
    encode_run,
)
from proxy.tasks import interruptible

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

#: What one call may take: an add sends up to a few MiB.
DEFAULT_TIMEOUT = 5.0

#: KEYS: the run's hash, its slug's set, its (slug, candidate) set. ARGV: id, score, head,
#: detail, candidate, keep, the key prefix (``P{evals}:``), slug. Returns 1 when written.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'head', ARGV[3], 'detail', ARGV[4], 'candidate', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, id in ipairs(old) do
    local run = ARGV[7] .. 'run:' .. id
    local candidate = redis.call('HGET', run, 'candidate')
    if candidate then
      redis.call('ZREM', ARGV[7] .. 'cand:' .. candidate .. ':' .. ARGV[8], id)
    end
    redis.call('DEL', run)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return 1
"""

#: KEYS[1]: a sorted set of ids. ARGV: the limit, the key prefix. Returns the heads of the
#: newest runs (an id whose hash is gone is skipped).
_LIST = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local heads = {}
for _, id in ipairs(ids) do
  local head = redis.call('HGET', ARGV[2] .. 'run:' .. id, 'head')
  if head then heads[#heads + 1] = head end
end
return heads
"""


class RedisEvalRunStore:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        keep_runs: int = DEFAULT_KEEP_RUNS,
        max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
        op_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``client`` is shared with the other Redis parts; its owner closes it."""
        check_store_options(keep_runs, max_detail_bytes)
        self._redis = client
        self._prefix = prefix + "{evals}:"
        self._keep_runs = keep_runs
        self._max_detail_bytes = max_detail_bytes
        self._op_timeout = op_timeout
        self._add_script = client.register_script(_ADD)
        self._list_script = client.register_script(_LIST)
        self._closed = False

    def _run_key(self, run_id: str) -> str:
        return f"{self._prefix}run:{run_id}"

    def _slug_key(self, slug: str) -> str:
        return f"{self._prefix}slug:{slug}"

    def _candidate_key(self, slug: str, candidate: int) -> str:
        return f"{self._prefix}cand:{candidate}:{slug}"

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise EvalRunsUnavailable("the eval runs store is closed")
        try:
            async with asyncio.timeout(self._op_timeout):
                # In a task of its own: redis-py can swallow a cancel (see ``proxy.tasks``).
                return await interruptible(call(), grace=self._op_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            raise EvalRunsUnavailable(
                f"redis unavailable for eval runs: {type(exc).__name__}: {exc}"
            ) from exc

    async def add(self, run: EvalRun) -> None:
        encoded = encode_run(run, max_detail_bytes=self._max_detail_bytes)
        keys = [
            self._run_key(run.id),
            self._slug_key(run.slug),
            self._candidate_key(run.slug, run.candidate),
        ]
        args: list[Any] = [
            run.id,
            repr(float(run.finished_at)),  # repr: the shortest text that reads back exactly
            encoded.head,
            encoded.detail,
            run.candidate,
            self._keep_runs,
            self._prefix,
            run.slug,
        ]

        async def add() -> Any:
            return await self._add_script(keys=keys, args=args)

        await self._call(add)

    async def get(self, run_id: str) -> EvalRun | None:
        async def read() -> list[Any]:
            return await self._redis.hmget(self._run_key(run_id), ["head", "detail"])

        head, detail = await self._call(read)
        return None if head is None else decode_run(head, detail or b"{}")

    async def list(self, slug: str, *, candidate: int | None = None, limit: int = 50) -> RunList:
        check_limit(limit)
        key = self._slug_key(slug) if candidate is None else self._candidate_key(slug, candidate)

        async def read() -> list[Any]:
            return await self._list_script(keys=[key], args=[limit, self._prefix])  # type: ignore[no-any-return]

        return [decode_run(head) for head in await self._call(read)]

    async def close(self) -> None:
        self._closed = True  # the client is its owner's to close
