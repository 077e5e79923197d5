"""Eval runs on PostgreSQL: the table ``eval_runs`` (component ``eval_runs``), a row per run.

Columns: the ones a listing filters and orders on (``slug``, ``candidate``,
``finished_at``, ``id``), a few an operator may query by hand (``kind``, ``passed``), and the
run itself as orjson's bytes (``bytea``): ``head``, the run without its detail, which a
listing reads, and ``detail``, which only ``get`` reads. Bytes rather than ``jsonb``: a
run reads back exactly as it was written, and text holding U+0000 (a model's answer may)
is kept, which ``jsonb`` refuses. ``id`` sorts with the "C" collation, so ties on
``finished_at`` order as in the other stores whatever the database's locale.

An add is one transaction: a lock on the slug (a transaction-scoped advisory lock: adds of
one slug queue, so two replicas never trim each other's rows in a different order, which
could deadlock), the insert (``ON CONFLICT (id) DO NOTHING``: idempotent on id, so an add
whose COMMIT went unanswered may be sent again), and the deletion of the slug's runs past
``keep_runs``.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

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
from proxy.pg.migrate import Migration
from proxy.pg.session import DEFAULT_TIMEOUT, Part, PgSession, Pool, PostgresUnavailable

COMPONENT = "eval_runs"
MIGRATIONS = (
    Migration(
        1,
        "eval runs",
        (
            "CREATE TABLE eval_runs ("
            ' id text COLLATE "C" PRIMARY KEY,'
            " slug text NOT NULL,"
            " candidate integer NOT NULL,"
            " kind text NOT NULL,"
            " passed boolean NOT NULL,"
            " finished_at float8 NOT NULL,"
            " head bytea NOT NULL,"
            " detail bytea NOT NULL)",
            "CREATE INDEX eval_runs_slug ON eval_runs (slug, finished_at DESC, id DESC)",
            "CREATE INDEX eval_runs_candidate"
            " ON eval_runs (slug, candidate, finished_at DESC, id DESC)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "eval runs")

#: The first key of the advisory lock an add takes on its slug (the second: the slug's
#: hash): another key space than the migrations' one-key lock.
_LOCK_CLASS = 0x6576616C  # "eval"
_LOCK = "SELECT pg_advisory_xact_lock(%(lock)s::int4, hashtext(%(slug)s))"
_ADD = (
    "INSERT INTO eval_runs (id, slug, candidate, kind, passed, finished_at, head, detail)"
    " VALUES (%(id)s, %(slug)s, %(candidate)s, %(kind)s, %(passed)s, %(finished_at)s,"
    " %(head)s, %(detail)s) ON CONFLICT (id) DO NOTHING"
)
_TRIM = (
    "DELETE FROM eval_runs WHERE id IN (SELECT id FROM eval_runs WHERE slug = %(slug)s"
    " ORDER BY finished_at DESC, id DESC OFFSET %(keep)s)"
)
_ORDER = " ORDER BY finished_at DESC, id DESC LIMIT %(limit)s"
_LIST = "SELECT head FROM eval_runs WHERE slug = %(slug)s" + _ORDER
_LIST_CANDIDATE = (
    "SELECT head FROM eval_runs WHERE slug = %(slug)s AND candidate = %(candidate)s" + _ORDER
)


class PostgresEvalRunStore:
    """``EvalRunStore`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        keep_runs: int = DEFAULT_KEEP_RUNS,
        max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
        op_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """No I/O: the table is made by the first call that reaches the server, or with
        the other parts' by the backend (``proxy.pg.session.prepare_together``)."""
        check_store_options(keep_runs, max_detail_bytes)
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._keep_runs = keep_runs
        self._max_detail_bytes = max_detail_bytes
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise EvalRunsUnavailable("the eval runs store is closed")

    async def add(self, run: EvalRun) -> None:
        encoded = encode_run(run, max_detail_bytes=self._max_detail_bytes)
        self._open()
        params = {
            "lock": _LOCK_CLASS,
            "id": run.id,
            "slug": run.slug,
            "candidate": run.candidate,
            "kind": run.kind,
            "passed": run.passed,
            "finished_at": run.finished_at,
            "head": encoded.head,
            "detail": encoded.detail,
            "keep": self._keep_runs,
        }

        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_LOCK, params)
            await conn.execute(_ADD, params)
            await conn.execute(_TRIM, params)

        try:
            await self.session.write(write)
        except PostgresUnavailable as exc:  # OutcomeUnknown too: an add may be sent again
            raise EvalRunsUnavailable(str(exc)) from exc

    async def get(self, run_id: str) -> EvalRun | None:
        self._open()

        async def read(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute("SELECT head, detail FROM eval_runs WHERE id = %s", (run_id,))
            return await cur.fetchone()

        try:
            found = await self.session.read(read)
        except PostgresUnavailable as exc:
            raise EvalRunsUnavailable(str(exc)) from exc
        return None if found is None else decode_run(bytes(found[0]), bytes(found[1]))

    async def list(self, slug: str, *, candidate: int | None = None, limit: int = 50) -> RunList:
        check_limit(limit)
        self._open()
        query = _LIST if candidate is None else _LIST_CANDIDATE
        params = {"slug": slug, "candidate": candidate, "limit": limit}

        async def read(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        try:
            rows = await self.session.read(read)
        except PostgresUnavailable as exc:
            raise EvalRunsUnavailable(str(exc)) from exc
        return [decode_run(bytes(head)) for (head,) in rows]

    async def close(self) -> None:
        self._closed = True  # the pool is the caller's
