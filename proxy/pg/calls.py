"""Bounded calls on a pooled connection, for the parts that share state through PostgreSQL
(the analysis pool, lease and state, the feedback index, the shadow pair sink).

What the pool alone does not give them:

- **A deadline on this side.** ``statement_timeout`` is the server's, so a frozen server
  (SIGSTOP, a dead network) would hold a query, and psycopg answers a cancel by asking the
  server to cancel too (up to 10 s). Each call runs in a task of its own under
  ``asyncio.timeout`` (``proxy.tasks.interruptible``): the caller has its error on time,
  and a second cancel makes psycopg close the stuck connection, which the pool replaces.
- **A live connection after connections were killed.** A pooled connection whose server
  process ended (``pg_terminate_backend``, a restart, a crash) has the server's goodbye or
  an EOF waiting on its socket. Such a connection is closed and another one taken *before*
  the statement is sent, so the first call after a kill succeeds on a fresh connection
  instead of failing once per dead pooled connection. A statement whose connection ends
  under it (killed a moment before, its goodbye still on the way) is sent again on another
  connection, as the Redis clients retry. Only a server that commits and dies before it
  answers can make that apply a write twice: the same narrow case as a caller retrying a
  failed write itself (the analyser's flush does).

Every failure to reach the server in time is ``PostgresUnavailable``; a bug in a statement
(``ProgrammingError`` and the like) is not caught here.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from proxy.pg.migrate import Migration, migrate
from proxy.tasks import interruptible

T = TypeVar("T")

#: What one call may take, queueing for a connection included, unless a part says otherwise.
DEFAULT_TIMEOUT = 2.0
#: Running migrations at start-up may wait for another replica's migration.
MIGRATE_TIMEOUT = 30.0
#: After the deadline, how long the call's task may take to give its connection back.
_GRACE = 1.0

_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)

Pool = AsyncConnectionPool[Any]
Operation = Callable[[AsyncConnection[Any]], Awaitable[T]]


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be reached, or did not answer within the call's deadline."""


async def call(pool: Pool, op: Operation[T], *, what: str, deadline: float = DEFAULT_TIMEOUT) -> T:
    """Run ``op`` on a live pooled connection within ``deadline`` seconds."""
    try:
        async with asyncio.timeout(deadline):
            return await interruptible(_on_live_connection(pool, op), grace=_GRACE)
    except _UNAVAILABLE as exc:
        raise PostgresUnavailable(
            f"PostgreSQL unavailable for {what}: {type(exc).__name__}: {exc}".rstrip(": ")
        ) from exc


async def _on_live_connection(pool: Pool, op: Operation[T]) -> T:
    # Every pooled connection may be dead (all killed at once): one more try than the pool
    # holds reaches a new one.
    for _ in range(pool.max_size + 1):
        conn = await pool.getconn()
        try:
            if _gone(conn):
                await conn.close()  # the pool discards a closed connection given back
                continue
            return await op(conn)
        except psycopg.OperationalError:
            # The connection ended under the statement: killed a moment before (its
            # goodbye was still on its way), or the server restarting. Another one, then.
            if not (conn.closed or conn.broken):
                raise
        finally:
            await pool.putconn(conn)
    raise psycopg.OperationalError("every pooled connection was found closed")


def _gone(conn: AsyncConnection[Any]) -> bool:
    """An idle connection has nothing to read: data waiting means the server said goodbye
    (or closed the socket). A connection that LISTENs would look gone too, and only costs a
    reconnect; pooled connections never listen."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


async def open_component(
    pool: Pool, *, schema: str, component: str, steps: Sequence[Migration]
) -> int:
    """Bring ``component``'s tables in ``schema`` up to date; its version after."""

    async def run(conn: AsyncConnection[Any]) -> int:
        return await migrate(conn, schema=schema, component=component, steps=steps)

    return await call(pool, run, what=f"{component} migrations", deadline=MIGRATE_TIMEOUT)


def purge_expired(table: str, limit: int) -> sql.Composed:
    """A bounded delete of ``table``'s rows past ``expires_at``, oldest first. Rows another
    replica is deleting at the same moment are skipped, so purges never wait on each other
    (nor deadlock)."""
    name = sql.Identifier(table)
    return sql.SQL(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {name} WHERE expires_at < now() ORDER BY expires_at "
        "LIMIT {limit} FOR UPDATE SKIP LOCKED))"
    ).format(name=name, limit=sql.Literal(limit))
