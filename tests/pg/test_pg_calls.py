"""Bounded calls on pooled connections (proxy/pg/calls.py), which every shared-state part on
PostgreSQL goes through, and the parts' migrations run side by side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.pg.calls import PostgresUnavailable, call
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.sink_postgres import PostgresPairSink
from tests.pg.pg_parts import crash, frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")


@pytest.fixture
async def pool(postgres_server: PostgresServer) -> AsyncIterator[AsyncConnectionPool]:
    async with replica_pools(postgres_server.new_database(), 1, schema="calls") as [opened]:
        yield opened


async def backend_pid(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_every_pooled_connection_killed_costs_no_failed_call(
    postgres_server: PostgresServer, pool: AsyncConnectionPool
) -> None:
    # Fill the pool: four connections in use at once, then idle in the pool.
    async def hold(conn: AsyncConnection[Any]) -> int:
        await conn.execute("SELECT pg_sleep(0.1)")
        return await backend_pid(conn)

    before = set(await asyncio.gather(*(call(pool, hold, what="test") for _ in range(4))))
    assert len(before) == 4
    for round_ in range(3):
        # The first time every one of the four; then those the pool made since.
        assert postgres_server.terminate_backends() >= (4 if round_ == 0 else 1)
        after = await call(pool, backend_pid, what="test")  # no error, on a new connection
        assert after not in before
        before.add(after)


async def test_a_frozen_server_costs_the_deadline_not_a_hang(
    fresh_postgres_server: PostgresServer,
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema="calls") as [pool]:
        assert await call(pool, backend_pid, what="test")
        with frozen(fresh_postgres_server):
            started = time.monotonic()
            with pytest.raises(PostgresUnavailable, match="unavailable for test: TimeoutError"):
                await call(pool, backend_pid, what="test", deadline=0.5)
            assert time.monotonic() - started < 0.5 + 1.5
        # Thawed: the connection the deadline gave up on was closed; the next call works.
        assert await call(pool, backend_pid, what="test", deadline=5)


async def test_a_crashed_server_fails_calls_within_their_deadline(
    fresh_postgres_server: PostgresServer,
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema="calls") as [pool]:
        assert await call(pool, backend_pid, what="test")
        crash(fresh_postgres_server)
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(PostgresUnavailable, match="unavailable for test"):
                    await call(pool, backend_pid, what="test", deadline=0.5)
                assert time.monotonic() - started < 0.5 + 1.5
        finally:
            fresh_postgres_server.start()


async def test_a_bad_statement_is_a_bug_not_an_outage(pool: AsyncConnectionPool) -> None:
    async def bad(conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(psycopg.errors.UndefinedTable):
        await call(pool, bad, what="test")
    assert await call(pool, backend_pid, what="test")  # the connection went back clean


async def test_a_cancelled_caller_gets_its_cancel_at_once(pool: AsyncConnectionPool) -> None:
    async def slow(conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(call(pool, slow, what="test", deadline=20))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.5
    assert await call(pool, backend_pid, what="test")


async def test_every_part_migrates_once_when_replicas_start_together(
    postgres_server: PostgresServer,
) -> None:
    schema = new_schema()
    async with replica_pools(postgres_server.new_database(), 3, schema=schema) as pools:

        async def open_all(pool: AsyncConnectionPool) -> list[Any]:
            return list(
                await asyncio.gather(
                    PostgresStatsPool.open(pool, schema=schema),
                    PostgresLease.open(pool, schema=schema, replica="r", seconds=10),
                    PostgresStateStore.open(pool, schema=schema),
                    PostgresRequestIndex.open(
                        pool, schema=schema, ttl=60, on_error=lambda op: None, start=False
                    ),
                    PostgresPairSink.open(
                        pool,
                        schema=schema,
                        max_entries=100,
                        queue_size=10,
                        metrics=ShadowMetrics(CollectorRegistry()),
                    ),
                )
            )

        await asyncio.gather(*(open_all(pool) for pool in pools))
        async with pools[0].connection() as conn:
            cur = await conn.execute(
                "SELECT component, version FROM schema_versions ORDER BY component"
            )
            assert await cur.fetchall() == [
                ("analysis_lease", 1),
                ("analysis_pool", 1),
                ("analysis_state", 1),
                ("feedback_index", 1),
                ("shadow_pairs", 1),
            ]
