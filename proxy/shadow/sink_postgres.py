"""Pairs in PostgreSQL: ``shadow_pairs``, numbered per prompt key, capped per key.

For replicas sharing a PostgreSQL backend: every replica appends, any admin port reads
them all. Each key's pairs are numbered 1, 2, 3, ... by a counter row
(``shadow_pair_heads``) that a write takes under its lock, so a key's pairs become visible
in number order: a follower that asks for "after n" never misses one committed late. The
cap is the Redis stream's MAXLEN: a write deletes the key's pairs ``max_entries`` or more
behind the newest, so each key keeps its last ``max_entries`` pairs, oldest dropped,
and the delete is as large as the write in steady state. The ``slug`` columns hold the
key's text (``PromptKey.text``; a plain key's is its slug), as the pair's own ``slug`` does.
A pair is stored as the JSON text the other sinks write (key order kept; PostgreSQL
compresses large values by itself).

Failure policy, as for the Redis sink: ``add`` only puts the pair in a bounded in-memory
queue; one background task writes batches, each call under a deadline. A batch that fails
(server down, frozen, refusing) is dropped and counted, and the writer backs off; it never
blocks or raises into the caller, and picks up again when the server is back. Reads raise
``SinkUnavailable``; ``follow`` polls (every half second while idle) and rides out outages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection

from proxy.log import APP_LOGGER
from proxy.pg.migrate import Migration
from proxy.pg.session import DEFAULT_TIMEOUT, Part, PgSession, Pool, PostgresUnavailable
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pair_queue import PairWriteQueue
from proxy.shadow.pairs import FOLLOW_BACKLOG, Pair, SinkUnavailable

_log = logging.getLogger(APP_LOGGER)

COMPONENT = "shadow_pairs"
MIGRATIONS = (
    Migration(
        1,
        "shadow pairs, numbered and capped per slug",
        (
            "CREATE TABLE shadow_pair_heads (slug text PRIMARY KEY, last bigint NOT NULL)",
            "CREATE TABLE shadow_pairs ("
            " slug text NOT NULL,"
            " n bigint NOT NULL,"
            " ts double precision NOT NULL,"
            " rollout_id text NOT NULL,"
            " pair text NOT NULL,"
            " PRIMARY KEY (slug, n))",
            "CREATE INDEX shadow_pairs_rollout ON shadow_pairs (slug, rollout_id, n)",
            "CREATE INDEX shadow_pairs_ts ON shadow_pairs (slug, ts)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "shadow pairs")

_PAGE = 500
#: A follower with nothing new asks again after this long.
FOLLOW_POLL_SECONDS = 0.5
#: Reads may carry up to 10 000 pairs: more time than a write.
_READ_EXTRA_SECONDS = 3.0

# Per slug, in the batch's transaction: number the pairs under the head row's lock, then
# insert them (those the cap would drop at once are not) and delete what fell behind the cap.
# Two statements, because a statement reads at a snapshot taken when it starts: a delete in
# the statement that waited for the lock would miss the pairs the lock's previous holder
# committed meanwhile, and they would outlive the cap.
_NUMBER = (
    "INSERT INTO shadow_pair_heads AS h (slug, last) VALUES (%s, %s) "
    "ON CONFLICT (slug) DO UPDATE SET last = h.last + EXCLUDED.last RETURNING last"
)
_ADD = """
WITH added AS (
  INSERT INTO shadow_pairs (slug, n, ts, rollout_id, pair)
  SELECT %(slug)s, %(last)s - %(count)s + p.ord, p.ts, p.rollout_id, p.pair
  FROM unnest(%(ts)s::float8[], %(rollouts)s::text[], %(pairs)s::text[])
    WITH ORDINALITY AS p(ts, rollout_id, pair, ord)
  WHERE p.ord > %(count)s - %(cap)s
  RETURNING 1
)
DELETE FROM shadow_pairs WHERE slug = %(slug)s AND n <= %(last)s - %(cap)s
"""
_LAST = "SELECT pair FROM shadow_pairs WHERE slug = %s ORDER BY n DESC LIMIT %s"
_LAST_OF_ROLLOUT = (
    "SELECT pair FROM shadow_pairs WHERE slug = %s AND rollout_id = %s ORDER BY n DESC LIMIT %s"
)
_SINCE = "SELECT n, pair FROM shadow_pairs WHERE slug = %s AND ts >= %s ORDER BY n LIMIT %s"
_SINCE_OF_ROLLOUT = (
    "SELECT n, pair FROM shadow_pairs WHERE slug = %s AND ts >= %s AND rollout_id = %s "
    "ORDER BY n LIMIT %s"
)
_BACKLOG = (
    "SELECT n, pair FROM shadow_pairs WHERE slug = %s AND ts >= %s AND n <= %s ORDER BY n LIMIT %s"
)
_HEAD = "SELECT last FROM shadow_pair_heads WHERE slug = %s"
_AFTER = "SELECT n, pair FROM shadow_pairs WHERE slug = %s AND n > %s ORDER BY n LIMIT %s"


def _decode(raw: str) -> dict[str, Any] | None:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _ts(record: dict[str, Any]) -> float:
    ts = record.get("ts")
    return float(ts) if isinstance(ts, float | int) else 0.0


class PostgresPairSink:
    """``PairSink`` on PostgreSQL. The pool is the caller's; this part opens nothing but its
    writer task."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        max_entries: int,
        queue_size: int,
        metrics: ShadowMetrics,
        op_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``max_entries``: pairs kept per key (``shadow.sink.max_entries``);
        ``queue_size``: pairs waiting to be written, beyond which they are dropped. No I/O:
        the writer task starts with the first pair, and the tables are made by the first
        call that reaches the server, or with the other parts' by the backend
        (``proxy.pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._max_entries = max_entries
        self._metrics = metrics
        self._writes = PairWriteQueue(
            self._write, limit=queue_size, metrics=metrics, task_name="shadow-pairs-postgres"
        )

    def add(self, pair: Pair) -> None:
        self._writes.add(pair)

    @property
    def pending(self) -> int:
        return self._writes.pending

    async def _write(self, batch: Sequence[Pair]) -> bool:
        groups: dict[str, list[Pair]] = {}  # by the key's text
        for pair in batch:
            groups.setdefault(pair.key.text, []).append(pair)

        async def run(conn: AsyncConnection[Any]) -> None:
            # One transaction: the batch is written whole or not at all. Slugs in order, so
            # two replicas writing the same slugs queue on a head row, never deadlock.
            for slug in sorted(groups):
                pairs = groups[slug]
                cur = await conn.execute(_NUMBER, (slug, len(pairs)))
                head = await cur.fetchone()
                assert head is not None  # an upsert always returns its row
                await conn.execute(
                    _ADD,
                    {
                        "slug": slug,
                        "last": head[0],
                        "count": len(pairs),
                        "cap": self._max_entries,
                        "ts": [p.ts for p in pairs],
                        "rollouts": [p.rollout_id for p in pairs],
                        "pairs": [p.to_json().decode() for p in pairs],
                    },
                )

        try:
            await self.session.write(run)
        except PostgresUnavailable as exc:
            # Counted dropped even when the outcome is unknown: never written twice.
            self._metrics.pair("sink_dropped", len(batch))
            _log.warning(
                "shadow pairs: postgres write failed, %d pair(s) dropped: %s", len(batch), exc
            )
            return False
        self._metrics.pair("written", len(batch))
        return True

    async def close(self) -> None:
        """Idempotent: the shadow runner closes the sink, then the backend does."""
        await self._writes.close()

    # -- reading --------------------------------------------------------------------------

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def run(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        try:
            return await self.session.read(
                run, deadline=self.session.deadline + _READ_EXTRA_SECONDS
            )
        except PostgresUnavailable as exc:
            raise SinkUnavailable(str(exc)) from exc

    async def read(
        self, key: PromptKey, since: float | None, limit: int, rollout_id: str | None = None
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        if since is not None:
            rows = await (
                self._fetch(_SINCE, (key.text, since, limit))
                if rollout_id is None
                else self._fetch(_SINCE_OF_ROLLOUT, (key.text, since, rollout_id, limit))
            )
            decoded = (_decode(raw) for _, raw in rows)
        else:
            rows = await (
                self._fetch(_LAST, (key.text, limit))
                if rollout_id is None
                else self._fetch(_LAST_OF_ROLLOUT, (key.text, rollout_id, limit))
            )
            decoded = (_decode(raw) for (raw,) in reversed(rows))
        return [record for record in decoded if record is not None]

    async def _head(self, key: PromptKey) -> int:
        rows = await self._fetch(_HEAD, (key.text,))
        return int(rows[0][0]) if rows else 0

    async def _start(self, key: PromptKey, since: float | None) -> tuple[list[dict[str, Any]], int]:
        """The backlog to replay and the pair number a follow goes on after."""
        head = await self._head(key)
        if since is None:
            return [], head
        # Up to the head read first: a pair written meanwhile is after it, so the follow
        # loop finds it.
        rows = await self._fetch(_BACKLOG, (key.text, since, head, FOLLOW_BACKLOG))
        position = int(rows[-1][0]) if len(rows) >= FOLLOW_BACKLOG else head
        records = (_decode(raw) for _, raw in rows)
        return [r for r in records if r is not None], position

    async def follow(self, key: PromptKey, since: float | None) -> AsyncIterator[dict[str, Any]]:
        position: int | None = None
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
                rows = await self._fetch(_AFTER, (key.text, position, _PAGE))
                if not rows and await self._head(key) < position:
                    # The key's numbering started again (its pairs were wiped): follow the
                    # new ones from the start.
                    position = 0
                    continue
            except SinkUnavailable:
                await asyncio.sleep(1.0)  # rides out the outage; `close` ends the loop
                continue
            for n, raw in rows:
                position = int(n)
                found = _decode(raw)
                if found is not None and (since is None or _ts(found) >= since):
                    yield found
            if len(rows) < _PAGE:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
