"""Captured calls on PostgreSQL: the table ``captures`` (component ``captures``), a row per
capture.

Columns: the ones a read filters and orders on (``slug``, ``at``, ``id``), a few an
operator may query by hand (``version``, ``arm``, ``tenant``), and the capture itself as
orjson's bytes (``bytea``), as the eval runs keep theirs: a capture reads back exactly as it
was written, and text holding U+0000 (a model's answer may) is kept, which ``jsonb``
refuses. ``id`` sorts with the "C" collation, so ties on ``at`` order as in the other
stores whatever the database's locale.

An add is one transaction, so a batch is written whole or not at all: one advisory lock
for every add (transaction-scoped: adds queue, so two replicas deleting the same expired
rows or trimming one slug never wait on each other's rows in a different order, which
could deadlock; an add is a background flush of a few milliseconds), the inserts
(``ON CONFLICT (id) DO NOTHING``: idempotent on id, so a batch whose COMMIT went unanswered
may be sent again), the deletion of every capture past ``keep_hours`` (any slug's) and of
each added slug's captures past ``keep_per_slug``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import AsyncConnection

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
from proxy.pg.migrate import Migration
from proxy.pg.session import Part, PgSession, Pool, PostgresUnavailable

COMPONENT = "captures"
MIGRATIONS = (
    Migration(
        1,
        "captured calls",
        (
            "CREATE TABLE captures ("
            ' id text COLLATE "C" PRIMARY KEY,'
            " slug text NOT NULL,"
            " version integer NOT NULL,"
            " arm text NOT NULL,"
            " tenant text,"
            " at float8 NOT NULL,"
            " data bytea NOT NULL)",
            "CREATE INDEX captures_slug ON captures (slug, at, id)",
            # For the deletion of expired captures of every slug.
            "CREATE INDEX captures_at ON captures (at)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "captured calls")

#: What one call may take: an add sends up to a few MiB.
DEFAULT_TIMEOUT = 5.0

#: The advisory lock every add takes (two keys: another key space than the migrations'
#: one-key lock; the second is 0, one lock for all slugs).
_LOCK = "SELECT pg_advisory_xact_lock(%s::int4, 0)"
_LOCK_CLASS = 0x63617074  # "capt"
_ADD = (
    "INSERT INTO captures (id, slug, version, arm, tenant, at, data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
)
_EXPIRE = "DELETE FROM captures WHERE at < %s"
_TRIM = (
    "DELETE FROM captures WHERE id IN (SELECT id FROM captures WHERE slug = %s"
    " ORDER BY at DESC, id DESC OFFSET %s)"
)
_READ = (
    "SELECT data FROM captures WHERE slug = %(slug)s AND at >= %(since)s AND at < %(until)s"
    " ORDER BY at, id LIMIT %(limit)s"
)
_COUNT = "SELECT count(*) FROM captures WHERE slug = %s AND at >= %s"


def _row(capture: Capture, data: bytes) -> tuple[Any, ...]:
    c = capture
    return (c.id, c.slug, c.version, c.arm, c.tenant, c.at, data)


class PostgresCaptureStore:
    """``CaptureStore`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        keep_per_slug: int = DEFAULT_KEEP_PER_SLUG,
        keep_hours: float = DEFAULT_KEEP_HOURS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        op_timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """No I/O: the table is made by the first call that reaches the server, or with
        the other parts' by the backend (``proxy.pg.session.prepare_together``). ``clock``
        is what retention by age reads (tests pass their own)."""
        check_store_options(keep_per_slug, keep_hours, max_bytes)
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._keep_per_slug = keep_per_slug
        self._keep_hours = keep_hours
        self._max_bytes = max_bytes
        self._clock = clock
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise CapturesUnavailable("the captures store is closed")

    def _oldest_kept(self) -> float:
        return expired_before(self._clock(), self._keep_hours)

    async def add(self, captures: Sequence[Capture]) -> None:
        encoded = encode_batch(captures, max_bytes=self._max_bytes)
        self._check_open()
        if not encoded:
            return
        oldest = self._oldest_kept()
        rows = [_row(e.capture, e.data) for e in encoded if e.capture.at >= oldest]
        slugs = sorted({e.capture.slug for e in encoded})

        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_LOCK, (_LOCK_CLASS,))
            async with conn.cursor() as cur:
                if rows:
                    await cur.executemany(_ADD, rows)
                await cur.execute(_EXPIRE, (oldest,))
                for slug in slugs:
                    await cur.execute(_TRIM, (slug, self._keep_per_slug))

        try:
            await self.session.write(write)
        except PostgresUnavailable as exc:  # OutcomeUnknown too: a batch may be sent again
            raise CapturesUnavailable(str(exc)) from exc

    async def read(
        self, slug: str, *, since: float, until: float | None = None, limit: int = 1000
    ) -> CaptureList:
        check_read(since, until, limit)
        self._check_open()
        params = {
            "slug": slug,
            "since": max(since, self._oldest_kept()),
            "until": float("inf") if until is None else until,
            "limit": limit,
        }

        async def read(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_READ, params)
            return await cur.fetchall()

        try:
            rows = await self.session.read(read)
        except PostgresUnavailable as exc:
            raise CapturesUnavailable(str(exc)) from exc
        return [decode(bytes(data)) for (data,) in rows]

    async def count(self, slug: str, *, since: float) -> int:
        check_read(since, None, 1)
        self._check_open()
        params = (slug, max(since, self._oldest_kept()))

        async def count(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute(_COUNT, params)
            found = await cur.fetchone()
            return 0 if found is None else int(found[0])

        try:
            return await self.session.read(count)
        except PostgresUnavailable as exc:
            raise CapturesUnavailable(str(exc)) from exc

    async def close(self) -> None:
        self._closed = True  # the pool is the caller's
