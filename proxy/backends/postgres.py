"""The PostgreSQL backend (`postgresql://`, `postgres://`): every part in one database,
shared by every replica pointed at it, inside the schema `registry.postgres_schema`.

Connections: one pool per replica, shared by every part (registry writes and snapshots,
the fleet board's beats, the analysis pool's flushes, the lease, the feedback index and the
pair sink); plus one connection outside it, the registry's LISTEN for change notification.
The pool connects in the background (``open(wait=False)``), so a server that is down at
start is the registry's start-up wait, as with Redis, not a failure to open.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.backends.base import Backend, BackendContext
from proxy.config import Settings
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.pg.connect import new_pool
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.postgres_store import PostgresStore
from proxy.shadow.sink_postgres import PostgresPairSink

#: Connections per replica: every part shares them, and each call holds one for a
#: statement or a short transaction; the LISTEN connection is not one of them.
POOL_SIZE = 10


async def open_backend(settings: Settings, context: BackendContext) -> Backend:
    config = settings.config
    registry = config.registry
    kind = registry.backend
    assert kind.name == "postgresql", "a store of another backend"
    url, schema = registry.store, registry.postgres_schema
    async with AsyncExitStack() as stack:
        pool = new_pool(url, schema=schema, max_size=POOL_SIZE)
        await pool.open(wait=False)
        stack.push_async_callback(pool.close)
        store = await PostgresStore.open(pool, url=url, schema=schema)
        stack.push_async_callback(store.close)
        board = await PostgresBoard.open(
            pool, schema=schema, forget_seconds=config.fleet.forget_seconds
        )
        stack.push_async_callback(board.close)
        stats = await PostgresStatsPool.open(pool, schema=schema)
        stack.push_async_callback(stats.close)
        lease = await PostgresLease.open(
            pool, schema=schema, replica=context.replica, seconds=config.analysis.lease_seconds
        )
        stack.push_async_callback(lease.close)
        state = await PostgresStateStore.open(pool, schema=schema)
        stack.push_async_callback(state.close)
        index = await PostgresRequestIndex.open(
            pool, schema=schema, ttl=config.feedback.ttl_seconds, on_error=context.on_error
        )
        stack.push_async_callback(index.close)
        pairs = await PostgresPairSink.open(
            pool,
            schema=schema,
            max_entries=config.shadow.sink.max_entries,
            queue_size=config.shadow.sink.queue_size,
            metrics=context.pair_metrics,
        )
        stack.push_async_callback(pairs.close)
        closer = stack.pop_all()
    return Backend(
        kind=kind,
        store_url=url,
        store=store,
        board=board,
        pool=stats,
        lease=lease,
        state=state,
        index=index,
        pairs=pairs,
        closer=closer.aclose,
    )
