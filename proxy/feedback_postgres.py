"""The feedback request index on PostgreSQL (twin of ``RedisRequestIndex``).

Every answer that named a prompt is one row of ``feedback_answers`` for
``feedback.ttl_seconds`` after it was written (its ``slug`` column holds the prompt key's
text); ``feedback_given`` holds one row per (request id, name) that took feedback, for as
long. The request path only adds to a dict; a background task writes the batch every half
second in one statement, so no request ever waits on PostgreSQL, and a write that fails
keeps its answers (bounded) for the next try.

Expiry has the Redis semantics: a row past its expiry is never returned (a lookup says
"unknown", a feedback name counts again), and each replica deletes expired rows in
bounded batches from its flush loop, more often while there is a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection

from proxy.feedback import Answered
from proxy.log import APP_LOGGER
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
from proxy.tasks import cancel_and_wait

_log = logging.getLogger(APP_LOGGER)

COMPONENT = "feedback_index"
MIGRATIONS = (
    Migration(
        1,
        "answers that take feedback",
        (
            "CREATE TABLE feedback_answers ("
            " request_id text PRIMARY KEY,"
            " slug text NOT NULL,"
            " version text NOT NULL,"
            " arm text NOT NULL,"
            " rollout_id text,"
            " answered_at double precision NOT NULL,"
            " expires_at timestamptz NOT NULL)",
            "CREATE INDEX feedback_answers_expiry ON feedback_answers (expires_at)",
            "CREATE TABLE feedback_given ("
            " request_id text NOT NULL,"
            " name text NOT NULL,"
            " expires_at timestamptz NOT NULL,"
            " PRIMARY KEY (request_id, name))",
            "CREATE INDEX feedback_given_expiry ON feedback_given (expires_at)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the feedback index")

_FLUSH_SECONDS = 0.5
#: Answers waiting to be written; beyond this the oldest are dropped (their feedback will
#: get a 404), never the request path's memory.
_MAX_PENDING = 100_000
#: How long closing waits for the flush loop to stop and for the last flush.
_CLOSE_GRACE = 1.0
#: Expired rows deleted per statement (a few hundred milliseconds of work at most), and how
#: often; a full batch means a backlog, and the next flush purges again.
PURGE_LIMIT = 10_000
_PURGE_EVERY_SECONDS = 5.0

_WRITE = """
INSERT INTO feedback_answers AS a
  (request_id, slug, version, arm, rollout_id, answered_at, expires_at)
SELECT u.request_id, u.slug, u.version, u.arm, u.rollout_id, u.answered_at,
       now() + %(ttl)s * interval '1 second'
FROM unnest(%(ids)s::text[], %(slugs)s::text[], %(versions)s::text[], %(arms)s::text[],
            %(rollouts)s::text[], %(ats)s::float8[])
  AS u(request_id, slug, version, arm, rollout_id, answered_at)
ON CONFLICT (request_id) DO UPDATE SET
  slug = EXCLUDED.slug, version = EXCLUDED.version, arm = EXCLUDED.arm,
  rollout_id = EXCLUDED.rollout_id, answered_at = EXCLUDED.answered_at,
  expires_at = EXCLUDED.expires_at
"""
_LOOKUP = (
    "SELECT slug, version, arm, rollout_id, answered_at FROM feedback_answers "
    "WHERE request_id = %s AND expires_at > now()"
)
# A row past its expiry counts as absent, as an expired Redis key does for SET NX.
_FIRST = (
    "INSERT INTO feedback_given AS g (request_id, name, expires_at) "
    "VALUES (%s, %s, now() + %s * interval '1 second') "
    "ON CONFLICT (request_id, name) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE g.expires_at <= now() "
    "RETURNING 1"
)


class PostgresRequestIndex:
    """``RequestIndex`` on PostgreSQL. The pool is the caller's; this part opens nothing
    but its flush task."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        ttl: float,
        on_error: Callable[[str], None],
        op_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``ttl``: ``feedback.ttl_seconds``. ``on_error`` is told of each failed write (the
        metrics' store error counter). No I/O and no task: ``start`` runs the flush loop
        (tests flush by hand), and the tables are made by the first call that reaches the
        server, or with the other parts' by the backend (``pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._ttl = ttl
        self._on_error = on_error
        self._pending: OrderedDict[str, Answered] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._purge_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feedback-index")

    def remember(self, request_id: str, answered: Answered) -> None:
        self._pending[request_id] = answered
        if len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_SECONDS)
            await self.flush()
            await self.purge()

    async def flush(self, deadline: float | None = None) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, OrderedDict()
        params: dict[str, Any] = {
            "ttl": self._ttl,
            "ids": list(batch),
            "slugs": [a.key.text for a in batch.values()],
            "versions": [a.version for a in batch.values()],
            "arms": [a.arm for a in batch.values()],
            "rollouts": [a.rollout_id for a in batch.values()],
            "ats": [a.at for a in batch.values()],
        }

        async def run(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_WRITE, params)

        try:
            # Written again after a failure, even one of unknown outcome: the same rows, the
            # same values (only their expiry moves).
            await self.session.write(run, deadline=deadline)
        except PostgresUnavailable as exc:
            self._on_error("request_index")
            _log.warning("feedback index: %d answers not written: %s", len(batch), exc)
            # Keep them for the next try, newest last, within the bound.
            batch.update(self._pending)
            self._pending = batch
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)

    async def purge(self) -> int:
        """Delete a bounded batch of expired rows when one is due; how many went."""
        if time.monotonic() < self._purge_at:
            return 0

        async def run(conn: AsyncConnection[Any]) -> int:
            deleted = 0
            for table in ("feedback_answers", "feedback_given"):
                cur = await conn.execute(purge_expired(table, PURGE_LIMIT))
                deleted = max(deleted, cur.rowcount)
            return deleted

        try:
            deleted = await self.session.write(run)
        except PostgresUnavailable as exc:
            _log.debug("feedback index: expired rows not purged: %s", exc)
            deleted = 0
        # A full batch means more are waiting: go again at the next flush.
        backlog = deleted >= PURGE_LIMIT
        self._purge_at = time.monotonic() + (0.0 if backlog else _PURGE_EVERY_SECONDS)
        return deleted

    async def lookup(self, request_id: str) -> Answered | None:
        pending = self._pending.get(request_id)
        if pending is not None or "\x00" in request_id:
            return pending  # PostgreSQL text holds no NUL: no answer has such an id

        async def run(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(_LOOKUP, (request_id,))
            return await cur.fetchone()

        row = await self.session.read(run)
        if row is None:
            return None
        key, version, arm, rollout_id, at = row
        return Answered(PromptKey.parse(key), version, arm, rollout_id, float(at))

    async def first_feedback(self, request_id: str, name: str) -> bool:
        async def run(conn: AsyncConnection[Any]) -> bool:
            cur = await conn.execute(_FIRST, (request_id, name, self._ttl))
            return await cur.fetchone() is not None

        return await self.session.write(run)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, _CLOSE_GRACE)
        # The last answers get one bounded try: a frozen server must not hold up shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE * 2):
                await self.flush(deadline=_CLOSE_GRACE)
        if self._pending:
            _log.warning("feedback index: %d answers not written at shutdown", len(self._pending))
