"""Pairs in one capped Redis Stream per prompt key: ``{prefix}{shadow}:pairs:<key>``.

For replicas sharing a Redis registry: every replica appends, any admin port reads them all.
``XADD ... MAXLEN ~ max_entries`` keeps each stream bounded without a cleanup job.

Failure policy, as for the registry (reliability guide A4): this client has its own pool and
explicit socket/connect timeouts, and every call runs under a deadline. ``add`` only puts the
pair in a bounded in-memory queue; one background task writes batches. A batch that fails
(Redis down, frozen, refusing) is dropped and counted, and the writer backs off; it never
blocks or raises into the caller, and picks up again when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from proxy.config import ShadowSinkConfig
from proxy.log import APP_LOGGER
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pair_queue import PairWriteQueue
from proxy.shadow.pairs import FOLLOW_BACKLOG, Pair, SinkUnavailable

_log = logging.getLogger(APP_LOGGER)

_FIELD = b"pair"
_PAGE = 500
#: Entries get Redis' clock as id, pairs the proxy's as ``ts``; ranges by id allow this much
#: skew between the two, then filter on ``ts``.
CLOCK_SLACK = 60.0
_FOLLOW_BLOCK_MS = 1000
_ERRORS = (RedisError, OSError, TimeoutError)

_Entry = tuple[bytes, dict[bytes, bytes]]


def _decode(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        record = orjson.loads(fields.get(_FIELD, b""))
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _ts(record: dict[str, Any]) -> float:
    ts = record.get("ts")
    return float(ts) if isinstance(ts, float | int) else 0.0


class RedisPairSink:
    def __init__(
        self,
        url: str,
        prefix: str,
        config: ShadowSinkConfig,
        metrics: ShadowMetrics,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        op_timeout: float = 2.0,
    ) -> None:
        """No I/O here: the pools connect on first use."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (hash tag)")
        self._prefix = prefix + "{shadow}:pairs:"
        self._max_entries = config.max_entries
        self._metrics = metrics
        self._op_timeout = op_timeout
        common: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            # One retry replaces a stale pooled connection after a Redis restart; more would
            # only delay a failure that just costs a dropped batch.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            "health_check_interval": 5,
        }
        self._writer_client: Redis = Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            client_name="promptproxy-shadow-writer",
            **common,
        )
        # Reads and blocking follows get their own pool, with a socket timeout above the
        # XREAD block time, so an admin tail can never hold up the writer.
        self._reader: Redis = Redis.from_url(
            url,
            socket_timeout=_FOLLOW_BLOCK_MS / 1000 + socket_timeout + 2.0,
            max_connections=64,
            client_name="promptproxy-shadow-reader",
            **common,
        )
        self._writes = PairWriteQueue(
            self._write, limit=config.queue_size, metrics=metrics, task_name="shadow-pairs-redis"
        )

    def stream(self, key: PromptKey) -> str:
        """The stream of ``key``'s pairs, named by the key's text (a plain key's is its slug,
        so streams written before keys existed are read as they are)."""
        return self._prefix + key.text

    # -- writing --------------------------------------------------------------------------

    def add(self, pair: Pair) -> None:
        self._writes.add(pair)

    @property
    def pending(self) -> int:
        return self._writes.pending

    async def _write(self, batch: Sequence[Pair]) -> bool:
        try:
            async with asyncio.timeout(self._op_timeout):
                async with self._writer_client.pipeline(transaction=False) as pipe:
                    for pair in batch:
                        pipe.xadd(
                            self.stream(pair.key),
                            {_FIELD: pair.to_json()},
                            maxlen=self._max_entries,
                            approximate=True,
                        )
                    await pipe.execute()
        except _ERRORS as exc:
            self._metrics.pair("sink_dropped", len(batch))
            _log.warning(
                "shadow pairs: redis write failed, %d pair(s) dropped: %s: %s",
                len(batch),
                type(exc).__name__,
                exc,
            )
            return False
        self._metrics.pair("written", len(batch))
        return True

    async def close(self) -> None:
        """Idempotent: the shadow runner closes the sink, then the backend does."""
        if self._writes.closed:
            return
        await self._writes.close()
        await self._writer_client.aclose(close_connection_pool=True)
        await self._reader.aclose(close_connection_pool=True)

    # -- reading --------------------------------------------------------------------------

    async def _call(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self._op_timeout + 3.0):
                return await coro
        except _ERRORS as exc:
            raise SinkUnavailable(
                f"redis unavailable for shadow pairs: {type(exc).__name__}: {exc}"
            ) from exc

    async def _since(
        self, key: PromptKey, since: float, limit: int, rollout_id: str | None = None
    ) -> tuple[list[dict[str, Any]], bytes | None]:
        """The first ``limit`` records at or after ``since`` (of ``rollout_id`` only, when
        given), and the id of the last entry looked at (where a follow goes on)."""
        stream = self.stream(key)
        start: bytes = str(max(0, int((since - CLOCK_SLACK) * 1000))).encode()
        last: bytes | None = None
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            entries: list[_Entry] = (
                await self._call(self._reader.xrange(stream, start, "+", count=_PAGE)) or []
            )
            for entry_id, fields in entries:
                last = entry_id
                record = _decode(fields)
                if record is None or _ts(record) < since:
                    continue
                if rollout_id is None or record.get("rollout_id") == rollout_id:
                    out.append(record)
                    if len(out) >= limit:
                        break
            if len(entries) < _PAGE:
                break
            start = b"(" + entries[-1][0]
        return out, last

    async def read(
        self, key: PromptKey, since: float | None, limit: int, rollout_id: str | None = None
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        if since is not None:
            records, _ = await self._since(key, since, limit, rollout_id)
            return records
        if rollout_id is None:
            entries: list[_Entry] = (
                await self._call(self._reader.xrevrange(self.stream(key), "+", "-", count=limit))
                or []
            )
            decoded = (_decode(fields) for _, fields in reversed(entries))
            return [record for record in decoded if record is not None]
        return await self._last_of_rollout(key, limit, rollout_id)

    async def _last_of_rollout(
        self, key: PromptKey, limit: int, rollout_id: str
    ) -> list[dict[str, Any]]:
        """The last ``limit`` records of one rollout: pages back from the newest entry,
        since the stream holds the key's earlier rollouts too."""
        stream = self.stream(key)
        end: bytes | str = "+"
        newest_first: list[dict[str, Any]] = []
        while len(newest_first) < limit:
            entries: list[_Entry] = (
                await self._call(self._reader.xrevrange(stream, end, "-", count=_PAGE)) or []
            )
            for _, fields in entries:
                record = _decode(fields)
                if record is not None and record.get("rollout_id") == rollout_id:
                    newest_first.append(record)
                    if len(newest_first) >= limit:
                        break
            if len(entries) < _PAGE:
                break
            end = b"(" + entries[-1][0]
        return newest_first[::-1]

    async def _start(
        self, key: PromptKey, since: float | None
    ) -> tuple[list[dict[str, Any]], bytes]:
        if since is None:
            newest: list[_Entry] = (
                await self._call(self._reader.xrevrange(self.stream(key), "+", "-", count=1)) or []
            )
            return [], newest[0][0] if newest else b"0-0"
        records, last = await self._since(key, since, FOLLOW_BACKLOG)
        if last is None:
            last = str(max(0, int((since - CLOCK_SLACK) * 1000))).encode() + b"-0"
        return records, last

    async def follow(self, key: PromptKey, since: float | None) -> AsyncIterator[dict[str, Any]]:
        stream = self.stream(key)
        position: bytes | None = None
        while position is None and not self._writes.closed:
            try:
                backlog, position = await self._start(key, since)
            except SinkUnavailable:
                await asyncio.sleep(1.0)
                continue
            for record in backlog:
                yield record
        while not self._writes.closed and position is not None:
            try:
                # RESP2 (this client's protocol): [[key, [(id, fields), ...]], ...]
                answer: Any = await self._reader.xread(
                    {stream: position}, count=_PAGE, block=_FOLLOW_BLOCK_MS
                )
            except _ERRORS:
                await asyncio.sleep(1.0)  # rides out the outage; `close` ends the loop
                continue
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    position = entry_id
                    found = _decode(fields)
                    if found is not None and (since is None or _ts(found) >= since):
                        yield found
