"""The stats pool on PostgreSQL: per-second counters that every replica adds to.

One row per (prompt key, rollout, slot, arm) holds that arm's counters for that second as a
JSON object (``ArmStats.to_fields``); one row per (prompt key, rollout, kind) the shadow
pairs' divergence counts, cumulative. The ``slug`` columns hold the key's text. A flush is
one statement, whatever it holds: every row is ``INSERT ... ON CONFLICT DO UPDATE`` with the
counters added up (``analysis_add``) under the row's lock, so replicas never read before
they write and never lose an increment. The rows of one statement go in key order, so two
replicas flushing the same seconds queue on a row instead of deadlocking.

A read adds the window's rows up in the server (``jsonb_each`` + ``GROUP BY``) and sends
back one number per arm and counter, whatever the window's length; the series route's read
(``read_buckets``) one number per bucket of its chart, arm and counter.

Rows expire like the Redis keys: a slot ``keep_seconds`` + 120 s after its last write,
divergence a day after. Expired rows are never read; each replica deletes a bounded batch
of them now and then after a flush, so a finished rollout leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import orjson
from psycopg import AsyncConnection

from proxy.analysis.pool import PooledWindow
from proxy.analysis.window import SLOT_SECONDS, ArmStats, RolloutBatch, RolloutKey
from proxy.log import APP_LOGGER
from proxy.pg.migrate import Migration
from proxy.pg.session import (
    DEFAULT_TIMEOUT,
    OutcomeUnknown,
    Part,
    PgSession,
    Pool,
    PostgresUnavailable,
    purge_expired,
)
from proxy.prompt_key import PromptKey
from proxy.shadow.compare import DivergenceCounts

_log = logging.getLogger(APP_LOGGER)

COMPONENT = "analysis_pool"
MIGRATIONS = (
    Migration(
        1,
        "pooled analysis counters",
        (
            "CREATE TABLE analysis_counts ("
            " slug text NOT NULL,"
            " rollout_id text NOT NULL,"
            " slot bigint NOT NULL,"
            " arm text NOT NULL,"
            " counts jsonb NOT NULL,"
            " expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (slug, rollout_id, slot, arm))",
            "CREATE INDEX analysis_counts_expiry ON analysis_counts (expires_at)",
            "CREATE TABLE analysis_divergence ("
            " slug text NOT NULL,"
            " rollout_id text NOT NULL,"
            " kind text NOT NULL,"
            " counts jsonb NOT NULL,"
            " expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (slug, rollout_id, kind))",
            "CREATE INDEX analysis_divergence_expiry ON analysis_divergence (expires_at)",
            # Counter-wise sum of two JSON objects of numbers. float8 holds every count
            # exactly (up to 2^53) and prints the shortest exact form, so nothing drifts.
            "CREATE FUNCTION analysis_add(a jsonb, b jsonb) RETURNS jsonb"
            " LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$"
            " SELECT coalesce(jsonb_object_agg(k,"
            "   coalesce((a ->> k)::float8, 0) + coalesce((b ->> k)::float8, 0)), '{}'::jsonb)"
            " FROM (SELECT jsonb_object_keys(a) UNION SELECT jsonb_object_keys(b)) AS keys(k)"
            " $$",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the analysis pool")

#: Slots are kept this long past the longest window that may read them (as with Redis).
SLOT_GRACE_SECONDS = 120
#: Divergence counts outlive the rollout by a day, for a late `rollout status`.
DIVERGENCE_TTL_SECONDS = 86_400
#: Expired rows deleted per statement, and how often a replica runs it. A rollout writes a
#: few rows per arm and second; this keeps up with hundreds of rollouts.
_PURGE_LIMIT = 5_000
_PURGE_EVERY_SECONDS = 10.0
_NOISE = "noise"
_CANDIDATE = "candidate"

_ADD = """
WITH slots AS (
  INSERT INTO analysis_counts AS c (slug, rollout_id, slot, arm, counts, expires_at)
  SELECT u.slug, u.rollout_id, u.slot, u.arm, u.counts::jsonb,
         now() + %(slot_ttl)s * interval '1 second'
  FROM unnest(%(slugs)s::text[], %(rollouts)s::text[], %(slots)s::int8[], %(arms)s::text[],
              %(counts)s::text[]) AS u(slug, rollout_id, slot, arm, counts)
  ORDER BY u.slug, u.rollout_id, u.slot, u.arm
  ON CONFLICT (slug, rollout_id, slot, arm) DO UPDATE
  SET counts = analysis_add(c.counts, EXCLUDED.counts),
      expires_at = greatest(c.expires_at, EXCLUDED.expires_at)
  RETURNING 1
), divergence AS (
  INSERT INTO analysis_divergence AS d (slug, rollout_id, kind, counts, expires_at)
  SELECT u.slug, u.rollout_id, u.kind, u.counts::jsonb,
         now() + %(div_ttl)s * interval '1 second'
  FROM unnest(%(div_slugs)s::text[], %(div_rollouts)s::text[], %(div_kinds)s::text[],
              %(div_counts)s::text[]) AS u(slug, rollout_id, kind, counts)
  ORDER BY u.slug, u.rollout_id, u.kind
  ON CONFLICT (slug, rollout_id, kind) DO UPDATE
  SET counts = analysis_add(d.counts, EXCLUDED.counts),
      expires_at = greatest(d.expires_at, EXCLUDED.expires_at)
  RETURNING 1
)
SELECT (SELECT count(*) FROM slots), (SELECT count(*) FROM divergence)
"""

_READ = """
SELECT 'w', c.arm, f.key, sum(f.value::float8)
FROM analysis_counts AS c, jsonb_each_text(c.counts) AS f(key, value)
WHERE c.slug = %(slug)s AND c.rollout_id = %(rollout_id)s
  AND c.slot >= %(start)s AND c.slot < %(end)s AND c.expires_at > now()
GROUP BY c.arm, f.key
UNION ALL
SELECT 'd', d.kind, f.key, f.value::float8
FROM analysis_divergence AS d, jsonb_each_text(d.counts) AS f(key, value)
WHERE d.slug = %(slug)s AND d.rollout_id = %(rollout_id)s AND d.expires_at > now()
"""


# Added up per bucket in the server, as _READ adds up a window: one number per bucket, arm
# and counter comes back, never a row per second. ``arms`` null: every arm.
_READ_BUCKETS = """
SELECT %(start)s::int8 + (c.slot - %(start)s::int8) / %(step)s::int8 * %(step)s::int8,
       c.arm, f.key, sum(f.value::float8)
FROM analysis_counts AS c, jsonb_each_text(c.counts) AS f(key, value)
WHERE c.slug = %(slug)s AND c.rollout_id = %(rollout_id)s
  AND c.slot >= %(start)s AND c.slot < %(end)s AND c.expires_at > now()
  AND (%(arms)s::text[] IS NULL OR c.arm = ANY(%(arms)s::text[]))
GROUP BY 1, 2, 3
"""


class PostgresStatsPool:
    """``StatsPool`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(self, pool: Pool, *, schema: str, op_timeout: float = DEFAULT_TIMEOUT) -> None:
        """No I/O: the tables are made by the first call that reaches the server, or
        with the other parts' by the backend (``proxy.pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._purged_at = 0.0

    async def add(self, batches: Mapping[RolloutKey, RolloutBatch], keep_seconds: float) -> None:
        params = _add_params(batches)
        if not params["slugs"] and not params["div_slugs"]:
            return
        params["slot_ttl"] = int(keep_seconds + SLOT_GRACE_SECONDS)
        params["div_ttl"] = DIVERGENCE_TTL_SECONDS

        async def run(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_ADD, params)

        try:
            await self.session.write(run)
        except OutcomeUnknown as exc:
            # Perhaps added: the caller would add the batch again on an error, so it is
            # given up instead. A second lost, never a second counted twice.
            _log.warning("analysis counts perhaps not added, not sent again: %s", exc)
            return
        if time.monotonic() - self._purged_at > _PURGE_EVERY_SECONDS:
            self._purged_at = time.monotonic()
            # Added already: a failed purge must not make the caller add the batch again.
            with contextlib.suppress(PostgresUnavailable):
                await self.session.write(_purge)

    async def read(self, key: PromptKey, rollout_id: str, start: float, end: float) -> PooledWindow:
        params = {
            "slug": key.text,
            "rollout_id": rollout_id,
            "start": int(start) // SLOT_SECONDS,
            "end": int(end) // SLOT_SECONDS,
        }

        async def run(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_READ, params)
            return await cur.fetchall()

        rows = await self.session.read(run)
        arms: dict[str, dict[str, float]] = {}
        kinds: dict[str, dict[str, int]] = {}
        for source, name, field, value in rows:
            if source == "w":
                arms.setdefault(name, {})[field] = float(value)
            else:
                kinds.setdefault(name, {})[field] = int(value)
        window = PooledWindow(arms={arm: ArmStats.from_fields(f) for arm, f in arms.items()})
        window.noise = DivergenceCounts.from_fields(kinds.get(_NOISE, {}))
        window.candidate = DivergenceCounts.from_fields(kinds.get(_CANDIDATE, {}))
        return window

    async def read_buckets(
        self,
        key: PromptKey,
        rollout_id: str,
        start: int,
        end: int,
        step: int = 1,
        arms: Collection[str] | None = None,
    ) -> dict[int, dict[str, ArmStats]]:
        params = {
            "slug": key.text,
            "rollout_id": rollout_id,
            "start": int(start) // SLOT_SECONDS,
            "end": int(end) // SLOT_SECONDS,
            "step": max(1, step // SLOT_SECONDS),
            "arms": None if arms is None else sorted(arms),
        }

        async def run(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_READ_BUCKETS, params)
            return await cur.fetchall()

        fields: dict[int, dict[str, dict[str, float]]] = {}
        for bucket, arm, name, value in await self.session.read(run):
            fields.setdefault(int(bucket), {}).setdefault(arm, {})[name] = float(value)
        return {
            bucket: {arm: ArmStats.from_fields(f) for arm, f in by_arm.items()}
            for bucket, by_arm in fields.items()
        }

    def forget(self, keep: set[RolloutKey]) -> None:
        return None  # rows expire by themselves

    async def close(self) -> None:
        return None


async def _purge(conn: AsyncConnection[Any]) -> None:
    for table in ("analysis_counts", "analysis_divergence"):
        await conn.execute(purge_expired(table, _PURGE_LIMIT))


def _add_params(batches: Mapping[RolloutKey, RolloutBatch]) -> dict[str, Any]:
    """Column arrays for ``_ADD``, one element per row (the batch keys are unique, so no
    statement touches a row twice)."""
    cols: dict[str, list[Any]] = {
        name: []
        for name in (
            "slugs",
            "rollouts",
            "slots",
            "arms",
            "counts",
            "div_slugs",
            "div_rollouts",
            "div_kinds",
            "div_counts",
        )
    }
    for (key, rollout_id), batch in batches.items():
        for slot, arms in batch.slots.items():
            for arm, stats in arms.items():
                fields = stats.to_fields()
                if not fields:
                    continue
                cols["slugs"].append(key.text)
                cols["rollouts"].append(rollout_id)
                cols["slots"].append(slot)
                cols["arms"].append(arm)
                cols["counts"].append(orjson.dumps(fields).decode())
        for kind, counts in ((_NOISE, batch.noise), (_CANDIDATE, batch.candidate)):
            div = counts.to_fields()
            if div:
                cols["div_slugs"].append(key.text)
                cols["div_rollouts"].append(rollout_id)
                cols["div_kinds"].append(kind)
                cols["div_counts"].append(orjson.dumps(div).decode())
    return dict(cols)
