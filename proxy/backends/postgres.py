"""The PostgreSQL backend (`postgresql://`, `postgres://`): every part in one database,
shared by every replica pointed at it, inside the schema `registry.postgres_schema`.

Connections: one pool per replica, shared by every part (registry writes and snapshots,
the fleet board's beats, the analysis pool's flushes, the lease, the feedback index, the
pair sink, the usage ledger, the eval runs and the captured calls); plus one connection
outside it, the registry's LISTEN for change notification.

Opening waits for no server: the pool connects in the background (``open(wait=False)``),
and every part's migrations run together on one connection made for them, which a server
that is down refuses at once (an unreachable host costs ``proxy.pg.session.OPEN_TIMEOUT``).
A server that cannot be reached then only postpones each part's migrations to its first
call that reaches it: a cold start is the registry's start-up wait, as with Redis, not a
failure to open. A schema written by a newer promptproxy, or a server refusing (its
permissions, a wrong database), still fails the start.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.backends.base import Backend, BackendContext
from proxy.capture.captures_postgres import PostgresCaptureStore
from proxy.config import Settings
from proxy.evals.runs_postgres import PostgresEvalRunStore
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.pg.connect import new_pool
from proxy.pg.session import prepare_together
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.postgres_store import PostgresStore
from proxy.shadow.sink_postgres import PostgresPairSink
from proxy.usage.usage_postgres import PostgresUsageLedger

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
        store = PostgresStore(pool, url=url, schema=schema)
        board = PostgresBoard(pool, schema=schema, forget_seconds=config.fleet.forget_seconds)
        stats = PostgresStatsPool(pool, schema=schema)
        lease = PostgresLease(
            pool, schema=schema, replica=context.replica, seconds=config.analysis.lease_seconds
        )
        state = PostgresStateStore(pool, schema=schema)
        index = PostgresRequestIndex(
            pool, schema=schema, ttl=config.feedback.ttl_seconds, on_error=context.on_error
        )
        pairs = PostgresPairSink(
            pool,
            schema=schema,
            max_entries=config.shadow.sink.max_entries,
            queue_size=config.shadow.sink.queue_size,
            metrics=context.pair_metrics,
        )
        usage = PostgresUsageLedger(pool, schema=schema, keep_days=config.usage.keep_days)
        evals = PostgresEvalRunStore(
            pool,
            schema=schema,
            keep_runs=config.evals.keep_runs,
            max_detail_bytes=config.evals.max_detail_bytes,
        )
        captures = PostgresCaptureStore(
            pool,
            schema=schema,
            keep_per_slug=config.capture.keep_per_slug,
            keep_hours=config.capture.keep_hours,
            max_bytes=config.capture.max_bytes,
        )
        parts = (store, board, stats, lease, state, index, pairs, usage, evals, captures)
        for part in parts:
            stack.push_async_callback(part.close)
        await prepare_together([part.session for part in parts])
        index.start()
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
        usage=usage,
        evals=evals,
        captures=captures,
        closer=closer.aclose,
    )
