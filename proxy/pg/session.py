"""How every part of the PostgreSQL backend runs its SQL on the shared pool: ``PgSession``.

Each part (registry store, fleet board, analysis pool, lease and state, feedback index,
pair sink) owns one session: its pool, its schema, its component's migrations and a name
for messages. A call hands the session ``work`` (an async function of a connection) as a
**read** (autocommit, or with ``snapshot=True`` one read-only ``REPEATABLE READ``
transaction: one consistent view across SELECTs) or a **write** (always one transaction).

Every call is:

- **bounded on this side**: ``deadline`` seconds, queueing for a connection included. The
  server's ``statement_timeout`` never fires on a frozen server (SIGSTOP, a dead network),
  and psycopg answers a cancel by asking that same server to cancel; so the I/O runs in a
  task of its own (``proxy.tasks.interruptible``) and the caller has its error on time (a
  second cancel makes psycopg close the stuck connection, which the pool replaces);
- **on a live connection**: a pooled connection whose server process ended while it sat
  in the pool (``pg_terminate_backend``, a restart, a crash) has the server's goodbye or an
  EOF waiting on its socket; it is closed and another taken *before* anything is sent;
- **quick to fail while the server is down**: after a call could not get a connection at
  all (or ``prepare`` found the server unreachable), the next call first connects once by
  itself: a server that refuses fails that call at once rather than at its deadline (as a
  Redis client's refused connect does), and one that answers sends the call on to the
  pool, which reconnects then;
- **retried only where that cannot apply anything twice**. When the connection dies under
  a call (killed a moment before, its goodbye still on the way), the call runs again on
  another connection, at most once per pooled connection and within the same deadline:

  * a read: always (it changes nothing);
  * a write: only if the connection died before ``COMMIT`` was sent. A transaction whose
    session ends uncommitted is rolled back by the server, so nothing of it applied.
    Once ``COMMIT`` is sent, a lost answer (or the deadline passing) is an unknown
    outcome: the call raises ``OutcomeUnknown`` and is never sent again. A write whose
    statement the server refuses (deadlock, a cancelled query) is not retried either;

- **migrated first when it has to be**: a process whose ``prepare`` could not reach the
  server (a cold start with the server down) runs the component's migrations at the first
  call that reaches it, inside that call;
- **healed when its tables are gone** (a server back empty, the schema dropped): the
  component's migrations run again, creating them empty, and the call runs once more (a
  write too: the statement that found no table applied nothing, nor did its transaction).

So a call is sent more than once only when its connection died before it could apply
anything (a read: at any point) or when its tables were gone. A caller that repeats a write
itself after ``OutcomeUnknown`` does so on its own account (the analysis pool does not).

Errors: anything that keeps the server from answering (unreachable, refused, timed out, a
migration this build cannot read: ``SchemaTooNew``) raises ``PostgresUnavailable``, which
each part turns into its own error (``StoreUnavailable``, ``FleetError``,
``SinkUnavailable``) or lets through (the analysis parts and the feedback index, whose
callers take any failure as "the shared store is unreachable"). A statement that is wrong
for the schema (``ProgrammingError`` other than a refused privilege) is a bug, not an
outage, and is raised as it is.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from proxy.log import APP_LOGGER
from proxy.pg.migrate import Migration, SchemaTooNew, migrate
from proxy.tasks import interruptible

_log = logging.getLogger(APP_LOGGER)

T = TypeVar("T")

Pool = AsyncConnectionPool[Any]
Work = Callable[[AsyncConnection[Any]], Awaitable[T]]

#: What one call may take, queueing for a connection included, unless a part says otherwise.
DEFAULT_TIMEOUT = 2.0
#: How long ``prepare`` waits for the server at open: a server that refuses connections
#: (down) fails at once; only an unreachable host costs this much.
OPEN_TIMEOUT = 1.0
#: After the deadline, how long the call's task may take to give its connection back
#: (psycopg closes the connection on the second cancel, sent 0.2 s after the first).
_GRACE = 1.0
#: What "the tables are gone" looks like from a statement.
_GONE = (errors.UndefinedTable, errors.UndefinedFunction)


@dataclass(frozen=True, slots=True)
class Part:
    """A part of the backend as its session needs it: its ``component`` (its row of
    ``schema_versions``), its migrations, and how messages name it."""

    component: str
    steps: tuple[Migration, ...]
    what: str


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be reached or used, or did not answer within the call's deadline."""


class OutcomeUnknown(PostgresUnavailable):
    """A write's ``COMMIT`` was sent and its answer lost: it may or may not have applied."""


@dataclass
class _Progress:
    #: A connection was had: a failure then is not "the server cannot be reached".
    connected: bool = False
    #: The write's work is done and COMMIT is on its way: from here a failure is unknown.
    committing: bool = False


class PgSession:
    def __init__(
        self,
        pool: Pool,
        part: Part,
        *,
        schema: str,
        deadline: float = DEFAULT_TIMEOUT,
        what: str | None = None,
    ) -> None:
        """No I/O. ``deadline`` (seconds) bounds each call unless the call says otherwise;
        ``what`` names the part in messages in more words than ``part.what``."""
        self.pool = pool
        self.part = part
        self.schema = schema
        self.deadline = deadline
        self.what = what or part.what
        #: The component's tables are known to be up to date in this process.
        self.migrated = False
        #: The last call could not reach the server: the next one checks it directly.
        self.unreachable = False

    async def prepare(self, *, within: float = OPEN_TIMEOUT) -> None:
        """``prepare_together`` for this session alone."""
        await prepare_together([self], within=within)

    async def read(
        self, work: Work[T], *, snapshot: bool = False, deadline: float | None = None
    ) -> T:
        """``work`` in autocommit, or with ``snapshot`` in one read-only ``REPEATABLE READ``
        transaction. Run again on another connection whenever its connection dies under it."""
        return await self._call(work, write=False, snapshot=snapshot, deadline=deadline)

    async def write(self, work: Work[T], *, deadline: float | None = None) -> T:
        """``work`` in one transaction. Run again only if its connection died before
        ``COMMIT`` was sent; ``OutcomeUnknown`` if the answer to ``COMMIT`` was lost."""
        return await self._call(work, write=True, snapshot=False, deadline=deadline)

    async def _call(
        self, work: Work[T], *, write: bool, snapshot: bool, deadline: float | None
    ) -> T:
        bound = self.deadline if deadline is None else deadline
        progress = _Progress()
        try:
            async with asyncio.timeout(bound):
                attempts = self._attempts(work, write=write, snapshot=snapshot, progress=progress)
                result = await interruptible(attempts, grace=_GRACE)
            self.unreachable = False
            return result
        except TimeoutError:
            self.unreachable = not progress.connected
            if progress.committing:
                raise OutcomeUnknown(
                    f"PostgreSQL did not confirm the write of {self.what} within {bound:g}s "
                    "(it may or may not have applied)"
                ) from None
            raise PostgresUnavailable(
                f"PostgreSQL did not answer within {bound:g}s for {self.what}"
            ) from None
        except SchemaTooNew as exc:  # found by a postponed migration
            raise PostgresUnavailable(str(exc)) from exc
        except (psycopg.Error, OSError) as exc:
            if _is_bug(exc):
                raise
            self.unreachable = not progress.connected
            message = f"PostgreSQL unavailable for {self.what}: {type(exc).__name__}: {exc}"
            if progress.committing:
                raise OutcomeUnknown(
                    f"{message} (the write's COMMIT was sent: it may or may not have applied)"
                ) from exc
            raise PostgresUnavailable(message) from exc

    async def _attempts(
        self, work: Work[T], *, write: bool, snapshot: bool, progress: _Progress
    ) -> T:
        # Every pooled connection may have died at once: one more try than the pool holds
        # reaches a new one.
        dead_left = self.pool.max_size + 1
        healed = False
        if self.unreachable:
            await _reach(self.pool)  # fails now if the server still refuses
        while True:
            conn = await self._live_connection()
            progress.connected = True
            try:
                if not self.migrated:
                    await self._migrate(conn)
                if not write and not snapshot:
                    return await work(conn)
                async with conn.transaction() as tx:
                    if snapshot:
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                    result = await work(conn)
                    progress.committing = write
                if tx.status is not tx.Status.COMMITTED:
                    # psycopg leaves a block on a connection found broken without a word.
                    progress.committing = False
                    raise psycopg.OperationalError("the connection ended before COMMIT")
                return result
            except _GONE:
                if healed:
                    raise
                healed = True
                # Nothing of the call applied: the statement failed, its transaction too.
                _log.warning(
                    "PostgreSQL: the tables of %s are gone (a server back empty, a dropped "
                    "schema?): creating them again",
                    self.what,
                )
                self.migrated = False
            except psycopg.Error as exc:
                lost = conn.closed or conn.broken
                if progress.committing and not lost:
                    # The server answered COMMIT with an error: it rolled the write back.
                    progress.committing = False
                dead_left -= 1
                retry = isinstance(exc, psycopg.OperationalError) and lost
                if not retry or progress.committing or dead_left <= 0:
                    raise
            finally:
                await self.pool.putconn(conn)

    async def _live_connection(self) -> AsyncConnection[Any]:
        for _ in range(self.pool.max_size + 1):
            conn: AsyncConnection[Any] = await self.pool.getconn()
            if not _gone(conn):
                return conn
            await conn.close()  # the pool discards a closed connection given back
            await self.pool.putconn(conn)
        raise psycopg.OperationalError("every pooled connection was found closed")

    async def _migrate(self, conn: AsyncConnection[Any]) -> None:
        await migrate(
            conn, schema=self.schema, component=self.part.component, steps=self.part.steps
        )
        self.migrated = True


async def prepare_together(sessions: Sequence[PgSession], *, within: float = OPEN_TIMEOUT) -> None:
    """At open: bring every session's tables up to date, on one connection of their own
    made now (a pool still connecting in the background could only time out), within
    ``within`` seconds. A server that cannot be reached in that time (down, a cold start)
    only postpones each session's migrations to its first call that reaches it, so opening
    never fails on it and waits at most ``within``. ``SchemaTooNew`` raises now, and so
    does any other refusal (permissions, a wrong database) as ``PostgresUnavailable``."""
    if not sessions:
        return
    pool = sessions[0].pool
    assert all(s.pool is pool for s in sessions), "sessions of one pool"
    what = ", ".join(s.what for s in sessions)

    async def run() -> None:
        async with await _connect(pool) as conn:
            for session in sessions:
                await session._migrate(conn)

    try:
        async with asyncio.timeout(within):
            await interruptible(run(), grace=_GRACE)
    except (psycopg.OperationalError, OSError, TimeoutError) as exc:
        for session in sessions:
            session.unreachable = True
        _log.warning(
            "PostgreSQL unreachable at start (%s): the tables of %s are checked when it answers",
            str(exc).strip() or type(exc).__name__,
            what,
        )
    except psycopg.Error as exc:
        raise PostgresUnavailable(
            f"PostgreSQL refused {what}: {type(exc).__name__}: {exc}"
        ) from exc


async def _connect(pool: Pool) -> AsyncConnection[Any]:
    """A connection of its own, made as the pool makes its (``new_pool`` gives plain
    arguments), for when the pool cannot help: it waits for its own attempts, which a
    server that refuses makes fail without a word to the caller."""
    conninfo, kwargs = pool.conninfo, pool.kwargs or {}
    assert isinstance(conninfo, str), "a pool of new_pool"
    assert isinstance(kwargs, dict), "a pool of new_pool"
    return await AsyncConnection.connect(conninfo, **kwargs)


async def _reach(pool: Pool) -> None:
    conn = await _connect(pool)
    await conn.close()


def _is_bug(exc: BaseException) -> bool:
    """A statement wrong for the schema: raised as it is, not as an outage."""
    return isinstance(exc, psycopg.ProgrammingError) and not isinstance(
        exc, errors.InsufficientPrivilege
    )


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
