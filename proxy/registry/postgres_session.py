"""How the registry's PostgreSQL parts (store, fleet board) run their SQL on a shared pool.

One call takes one pooled connection and runs its work in autocommit, in one read-only
``REPEATABLE READ`` transaction (a consistent view across several SELECTs), or in one
read-write transaction. Each call is:

- bounded: ``op_timeout`` (or the caller's own limit) on the client side, because a paused
  or half-dead server never answers and the server's ``statement_timeout`` then never fires;
  the I/O runs in a task of its own (``proxy.tasks.interruptible``), since psycopg answers a
  cancel by cancelling the query on the server first, which waits on that same server;
- retried on a stale pooled connection: a connection the server ended while it sat in the
  pool (``pg_terminate_backend``, a server restart) fails on its first statement; the pool
  discards it and the call takes another. A write is retried only if its ``BEGIN`` failed,
  so a write whose outcome is unknown is never run twice;
- preceded, in a process whose ``prepare`` could not reach the server (a cold start with
  the server down), by the component's migrations: the first call that reaches it runs them;
- healed when its tables are gone (a server back empty, the schema dropped): the
  component's migrations run again, creating them empty, and the call is retried once. The
  parts then see an empty store, which the registry's identity check tells from the
  registry it served;
- mapped to the caller's "unavailable" error when the server cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

import psycopg
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from proxy.log import APP_LOGGER
from proxy.pg.migrate import Migration, SchemaTooNew, migrate
from proxy.tasks import interruptible

_log = logging.getLogger(APP_LOGGER)

T = TypeVar("T")

Mode = Literal["autocommit", "read", "write"]

#: How long a call whose deadline passed waits for its I/O to unwind (psycopg closes the
#: connection on the second cancel, sent 0.2 s after the first).
_UNWIND_GRACE = 1.0


class PgSession:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        schema: str,
        component: str,
        steps: Sequence[Migration],
        op_timeout: float,
        unavailable: Callable[[str], Exception],
        what: str,
    ) -> None:
        """``unavailable``: builds the error a failed call raises; ``what``: names the part
        in its messages ("the prompt registry")."""
        self.pool = pool
        self.schema = schema
        self.op_timeout = op_timeout
        self._component = component
        self._steps = steps
        self._unavailable = unavailable
        self._what = what
        #: The migrations have run in this process.
        self._ready = False

    async def prepare(self) -> None:
        """At open: bring the component's tables up to date. A server that cannot be
        reached only postpones that to the first call that reaches it (a cold start with
        the server down is a wait, not a failure); ``SchemaTooNew`` and any other refusal
        (permissions, a wrong database) raise now."""

        async def migrate_now() -> None:
            async with self.pool.connection() as conn:
                await self._migrate(conn)

        try:
            async with asyncio.timeout(self.op_timeout):
                await interruptible(migrate_now(), grace=_UNWIND_GRACE)
        except (psycopg.OperationalError, OSError, TimeoutError) as exc:
            _log.warning(
                "PostgreSQL unreachable for %s at start (%s): its tables are checked when it "
                "answers",
                self._what,
                str(exc) or type(exc).__name__,
            )
        except psycopg.Error as exc:
            raise self._unavailable(
                f"PostgreSQL refused {self._what}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _migrate(self, conn: AsyncConnection) -> None:
        await migrate(conn, schema=self.schema, component=self._component, steps=self._steps)
        self._ready = True

    async def run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        mode: Mode = "autocommit",
        limit: float | None = None,
    ) -> T:
        """Run ``work`` on a pooled connection (see the module doc); any failure to reach or
        use the server raises the ``unavailable`` error."""
        bound = self.op_timeout if limit is None else limit
        try:
            async with asyncio.timeout(bound):
                return await interruptible(self._attempts(work, mode), grace=_UNWIND_GRACE)
        except TimeoutError:
            raise self._unavailable(
                f"PostgreSQL did not answer within {bound:g}s for {self._what}"
            ) from None
        except (psycopg.Error, OSError) as exc:
            raise self._unavailable(
                f"PostgreSQL unavailable for {self._what}: {type(exc).__name__}: {exc}"
            ) from exc
        except SchemaTooNew as exc:  # found by a postponed migration
            raise self._unavailable(str(exc)) from exc

    async def _attempts(self, work: Callable[[AsyncConnection], Awaitable[T]], mode: Mode) -> T:
        stale_left = self.pool.max_size
        healed = False
        while True:
            began = False
            async with self.pool.connection() as conn:
                try:
                    if not self._ready:
                        await self._migrate(conn)
                    if mode == "autocommit":
                        began = True
                        return await work(conn)
                    async with conn.transaction():
                        began = True
                        if mode == "read":
                            await conn.execute(
                                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                            )
                        return await work(conn)
                except errors.UndefinedTable:
                    if healed:
                        raise
                    healed = True
                    await self._migrate(conn)
                except psycopg.OperationalError:
                    retry = conn.broken and stale_left > 0 and (mode != "write" or not began)
                    if not retry:
                        raise
                    stale_left -= 1
