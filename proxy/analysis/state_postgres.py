"""The analysis state and its last verdicts on PostgreSQL: one row per prompt key (the
``slug`` column holds the key's text).

The row holds the state and the newest ``MAX_VERDICTS`` verdicts (a JSON array, newest
first). ``save`` is one statement: the state is replaced and the verdict prepended in the
same step, and a state for another rollout than the stored one starts the list afresh, so
no reader ever sees a verdict of one rollout under the state of another. Rows expire a week
after their last save, as the Redis keys do; an expired row is never returned, and saves
delete a few expired rows at a time.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson
from psycopg import AsyncConnection

from proxy.analysis.state import MAX_VERDICTS, AnalysisState
from proxy.pg.migrate import Migration
from proxy.pg.session import (
    DEFAULT_TIMEOUT,
    Part,
    PgSession,
    Pool,
    PostgresUnavailable,
    purge_expired,
)
from proxy.prompt_key import PromptKey

COMPONENT = "analysis_state"
MIGRATIONS = (
    Migration(
        1,
        "analysis state and verdicts",
        (
            "CREATE TABLE analysis_state ("
            " slug text PRIMARY KEY,"
            " rollout_id text NOT NULL,"
            " state jsonb NOT NULL,"
            " verdicts jsonb NOT NULL,"
            " expires_at timestamptz NOT NULL)",
            "CREATE INDEX analysis_state_expiry ON analysis_state (expires_at)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the analysis state")

#: State outlives its rollout for a week, so a late look still finds the verdicts.
TTL_SECONDS = 7 * 86_400
#: Expired rows (one per slug) are few: a small purge now and then is plenty.
_PURGE_LIMIT = 100
_PURGE_EVERY_SECONDS = 3600.0

_LOAD = "SELECT state, verdicts FROM analysis_state WHERE slug = %s AND expires_at > now()"
# ``(array || old)`` capped: jsonb has no slice, so the kept elements are re-aggregated.
_SAVE = """
INSERT INTO analysis_state AS s (slug, rollout_id, state, verdicts, expires_at)
VALUES (%(slug)s, %(rollout_id)s, %(state)s::jsonb, %(fresh)s::jsonb,
        now() + %(ttl)s * interval '1 second')
ON CONFLICT (slug) DO UPDATE SET
  rollout_id = EXCLUDED.rollout_id,
  state = EXCLUDED.state,
  expires_at = EXCLUDED.expires_at,
  verdicts = CASE
    WHEN s.rollout_id <> EXCLUDED.rollout_id OR s.expires_at <= now() THEN EXCLUDED.verdicts
    ELSE (
      SELECT coalesce(jsonb_agg(v ORDER BY i), '[]'::jsonb)
      FROM jsonb_array_elements(EXCLUDED.verdicts || s.verdicts) WITH ORDINALITY AS t(v, i)
      WHERE i <= %(cap)s
    )
  END
"""


async def _purge(conn: AsyncConnection[Any]) -> None:
    await conn.execute(purge_expired("analysis_state", _PURGE_LIMIT))


class PostgresStateStore:
    """``StateStore`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(self, pool: Pool, *, schema: str, op_timeout: float = DEFAULT_TIMEOUT) -> None:
        """No I/O: the table is made by the first call that reaches the server, or
        with the other parts' by the backend (``proxy.pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._purged_at = 0.0

    async def load(self, key: PromptKey) -> tuple[AnalysisState | None, list[dict[str, Any]]]:
        async def run(conn: AsyncConnection[Any]) -> tuple[Any, Any] | None:
            cur = await conn.execute(_LOAD, (key.text,))
            return await cur.fetchone()

        row = await self.session.read(run)
        if row is None:
            return None, []
        state = AnalysisState.from_dict(row[0])
        verdicts = [v for v in row[1] if v.get("rollout_id") == state.rollout_id]
        return state, verdicts[:MAX_VERDICTS]

    async def save(
        self, key: PromptKey, state: AnalysisState, verdict: dict[str, Any] | None = None
    ) -> None:
        params = {
            "slug": key.text,
            "rollout_id": state.rollout_id,
            "state": orjson.dumps(state.to_dict()).decode(),
            "fresh": orjson.dumps([] if verdict is None else [verdict]).decode(),
            "ttl": TTL_SECONDS,
            "cap": MAX_VERDICTS,
        }

        async def run(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_SAVE, params)

        await self.session.write(run)
        if time.monotonic() - self._purged_at > _PURGE_EVERY_SECONDS:
            self._purged_at = time.monotonic()
            # Saved already: a failed purge must not make the save look failed.
            with contextlib.suppress(PostgresUnavailable):
                await self.session.write(_purge)

    async def close(self) -> None:
        return None
