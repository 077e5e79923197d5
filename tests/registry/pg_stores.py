"""PostgreSQL stores for the registry tests: a store that owns its pool, and emptying a
schema as a server back empty would.

In a deployment the backend owns the pool and closes it after the store; a test's "replica"
is one store on its own pool, so closing it closes both.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from proxy.pg.connect import new_pool
from proxy.registry.postgres_store import PostgresStore


class PoolOwningStore(PostgresStore):
    _own_pool: AsyncConnectionPool | None = None

    async def close(self) -> None:
        await super().close()
        if self._own_pool is not None:
            await self._own_pool.close()


async def open_pool(url: str, schema: str, max_size: int = 4) -> AsyncConnectionPool:
    pool = new_pool(url, schema=schema, max_size=max_size, application="promptproxy-test")
    await pool.open(wait=True, timeout=10)
    return pool


async def open_store(url: str, schema: str, **options: float) -> PostgresStore:
    """A store on a pool of its own (another replica), closed with it."""
    pool = await open_pool(url, schema)
    try:
        store = await PoolOwningStore.open(pool, url=url, schema=schema, **options)
    except BaseException:
        await pool.close()
        raise
    store._own_pool = pool
    return store


async def drop_schema(url: str, schema: str) -> None:
    """What a server back empty leaves of the registry: nothing (its tables are gone)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
