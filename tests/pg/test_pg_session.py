"""The session every PostgreSQL part runs its SQL through (proxy/pg/session.py): bounded calls,
dead pooled connections skipped, a write never sent again once its COMMIT was, reads sent
again, migrations postponed while the server is down and run again when the tables are gone,
and the parts' migrations run side by side."""

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
from proxy.pg.connect import new_pool
from proxy.pg.migrate import Migration, SchemaTooNew, migrate
from proxy.pg.session import OutcomeUnknown, Part, PgSession, PostgresUnavailable, prepare_together
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.sink_postgres import PostgresPairSink
from proxy.usage.usage_postgres import PostgresUsageLedger
from tests.pg.pg_parts import crash, frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.registry.pg_stores import drop_schema

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")

#: A test component: a table of numbered rows, and a trigger that makes COMMIT slow (while
#: ``slow_commit`` is on), so a test can act while a write's COMMIT is in flight.
STEPS = (
    Migration(
        1,
        "rows, and a slow commit on demand",
        (
            "CREATE TABLE items (n integer NOT NULL)",
            """CREATE FUNCTION items_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_setting('test.slow_commit', true) = 'on' THEN
                    PERFORM pg_sleep(5);
                END IF;
                RETURN NULL;
            END $$""",
            "CREATE CONSTRAINT TRIGGER items_slow_commit AFTER INSERT ON items "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION items_slow_commit()",
        ),
    ),
)


def session_on(pool: AsyncConnectionPool, schema: str, **options: Any) -> PgSession:
    return PgSession(pool, Part("items", STEPS, "test"), schema=schema, **options)


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture
async def pool(url: str, schema: str) -> AsyncIterator[AsyncConnectionPool]:
    async with replica_pools(url, 1, schema=schema) as [opened]:
        yield opened


@pytest.fixture
def session(pool: AsyncConnectionPool, schema: str) -> PgSession:
    return session_on(pool, schema)


async def backend_pid(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def count_items(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT count(*) FROM items")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


class Insert:
    """A write that adds one row and counts how many times it was run (sent)."""

    def __init__(self, *, slow_commit: bool = False) -> None:
        self.runs = 0
        self.pids: list[int] = []
        self.slow_commit = slow_commit
        self.ran = asyncio.Event()

    async def __call__(self, conn: AsyncConnection[Any]) -> int:
        self.runs += 1
        self.pids.append(await backend_pid(conn))
        self.ran.set()
        if self.slow_commit:
            await conn.execute("SELECT set_config('test.slow_commit', 'on', true)")
        await conn.execute("INSERT INTO items VALUES (%s)", (self.runs,))
        return self.runs


# -- dead connections, frozen and crashed servers ---------------------------------------------


@pytest.mark.parametrize("kind", ["read", "write"])
async def test_every_pooled_connection_killed_costs_no_failed_call(
    postgres_server: PostgresServer, session: PgSession, kind: str
) -> None:
    # Fill the pool: four connections in use at once, then idle in the pool.
    async def hold(conn: AsyncConnection[Any]) -> int:
        await conn.execute("SELECT pg_sleep(0.1)")
        return await backend_pid(conn)

    before = set(await asyncio.gather(*(session.read(hold) for _ in range(4))))
    assert len(before) == 4
    insert = Insert()
    for round_ in range(3):
        # The first time every one of the four; then those the pool made since.
        assert postgres_server.terminate_backends() >= (4 if round_ == 0 else 1)
        # No error, on a new connection, and a write applied once.
        if kind == "read":
            after = await session.read(backend_pid)
        else:
            await session.write(insert)
            after = insert.pids[-1]
        assert after not in before
        before.add(after)
    if kind == "write":
        assert insert.runs == 3
        assert await session.read(count_items) == 3


async def test_a_frozen_server_costs_the_deadline_not_a_hang(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema=schema) as [pool]:
        session = session_on(pool, schema)
        assert await session.read(backend_pid)
        with frozen(fresh_postgres_server):
            started = time.monotonic()
            with pytest.raises(PostgresUnavailable, match=r"did not answer within 0\.5s for test"):
                await session.read(backend_pid, deadline=0.5)
            assert time.monotonic() - started < 0.5 + 1.5
        # Thawed: the connection the deadline gave up on was closed; the next call works.
        assert await session.read(backend_pid, deadline=5)


async def test_a_crashed_server_fails_calls_within_their_deadline(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema=schema) as [pool]:
        session = session_on(pool, schema, deadline=0.5)
        assert await session.read(backend_pid)
        crash(fresh_postgres_server)
        try:
            for call in (session.read, session.write):
                started = time.monotonic()
                with pytest.raises(PostgresUnavailable, match="for test"):
                    await call(backend_pid)
                assert time.monotonic() - started < 0.5 + 1.5
        finally:
            fresh_postgres_server.start()


async def test_a_bad_statement_is_a_bug_not_an_outage(session: PgSession) -> None:
    async def bad(conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT * FROM items WHERE no_such_column = 1")

    with pytest.raises(psycopg.errors.UndefinedColumn):
        await session.read(bad)
    assert await session.read(backend_pid)  # the connection went back clean


async def test_a_cancelled_caller_gets_its_cancel_at_once(session: PgSession) -> None:
    async def slow(conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(session.read(slow, deadline=20))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.5
    assert await session.read(backend_pid)


# -- when a write is sent again ---------------------------------------------------------------


async def test_a_write_whose_connection_dies_before_commit_runs_again_and_applies_once(
    session: PgSession,
) -> None:
    runs = 0

    async def insert_then_lose_the_connection(conn: AsyncConnection[Any]) -> int:
        nonlocal runs
        runs += 1
        await conn.execute("INSERT INTO items VALUES (%s)", (runs,))
        if runs == 1:  # the first time, the server ends the session before COMMIT
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return runs

    assert await session.write(insert_then_lose_the_connection) == 2
    assert await session.read(count_items) == 1  # the first transaction was rolled back


async def _in_commit(pool: AsyncConnectionPool, pid: int) -> None:
    """Until ``pid`` runs COMMIT (held there by the slow trigger)."""
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = await cur.fetchone()
        if row is not None and row[0] == "COMMIT":
            return
        await asyncio.sleep(0.02)


async def test_a_write_whose_commit_is_not_answered_is_never_sent_again(
    session: PgSession,
) -> None:
    """The connection dies while the server runs COMMIT: the write may have applied, so it
    is not sent again, and the caller is told the outcome is unknown."""
    insert = Insert(slow_commit=True)
    write = asyncio.create_task(session.write(insert, deadline=10))
    async with asyncio.timeout(5):
        await insert.ran.wait()
        await _in_commit(session.pool, insert.pids[0])
    async with session.pool.connection() as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (insert.pids[0],))
    with pytest.raises(OutcomeUnknown, match="may or may not have applied"):
        await write
    assert insert.runs == 1


async def test_a_write_whose_commit_outlives_the_deadline_is_an_unknown_outcome(
    session: PgSession,
) -> None:
    insert = Insert(slow_commit=True)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match=r"did not confirm the write of test within 0\.5s"):
        await session.write(insert, deadline=0.5)
    assert time.monotonic() - started < 0.5 + 1.5
    assert insert.runs == 1


async def test_a_write_the_server_refuses_is_not_sent_again(session: PgSession) -> None:
    runs = 0

    async def refused(conn: AsyncConnection[Any]) -> None:
        nonlocal runs
        runs += 1
        await conn.execute("SET LOCAL statement_timeout = 50")
        await conn.execute("SELECT pg_sleep(1)")

    with pytest.raises(PostgresUnavailable, match="QueryCanceled"):
        await session.write(refused)
    assert runs == 1


# -- migrations: postponed, and run again when the tables are gone ----------------------------


async def test_opening_against_a_server_that_is_down_waits_for_nothing(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    """A cold start: nothing fails and nothing waits; the first call that reaches the server
    makes the tables."""
    url = fresh_postgres_server.new_database()
    fresh_postgres_server.stop()
    pool = new_pool(url, schema=schema, max_size=2)
    await pool.open(wait=False)
    try:
        sessions = [session_on(pool, schema), session_on(pool, schema)]
        started = time.monotonic()
        await prepare_together(sessions)
        assert time.monotonic() - started < 0.5
        assert not any(s.migrated for s in sessions)
        # Refused: each call fails at once, not at its deadline.
        for session in sessions:
            started = time.monotonic()
            with pytest.raises(PostgresUnavailable, match="Connection refused"):
                await session.read(count_items, deadline=5)
            assert time.monotonic() - started < 1

        fresh_postgres_server.start()
        async with asyncio.timeout(15):
            while True:
                try:
                    assert await sessions[0].write(Insert()) == 1
                    break
                except PostgresUnavailable:
                    await asyncio.sleep(0.1)  # the pool reconnects by itself
        assert sessions[0].migrated
        assert await sessions[1].read(count_items) == 1
    finally:
        await pool.close()


async def test_a_schema_too_new_is_refused_at_open_or_at_the_first_call(
    pool: AsyncConnectionPool, schema: str
) -> None:
    async with pool.connection() as conn:
        newer = (*STEPS, Migration(2, "from the future", ("SELECT 1",)))
        await migrate(conn, schema=schema, component="items", steps=newer)
    with pytest.raises(SchemaTooNew, match="items version 2"):
        await session_on(pool, schema).prepare()
    # Found by a postponed migration (the server was down at open): every call refuses.
    with pytest.raises(PostgresUnavailable, match="items version 2"):
        await session_on(pool, schema).read(count_items)


@pytest.mark.parametrize("kind", ["read", "write"])
async def test_a_call_finding_its_tables_gone_makes_them_again_and_runs_once_more(
    session: PgSession, url: str, schema: str, kind: str
) -> None:
    await session.write(Insert())
    await drop_schema(url, schema)  # what a server back empty leaves
    insert = Insert()
    if kind == "read":
        assert await session.read(count_items) == 0
    else:
        assert await session.write(insert) == 2  # sent twice: the first found no table
        assert await session.read(count_items) == 1


async def test_tables_still_gone_after_the_migrations_are_a_bug_not_a_loop(
    session: PgSession,
) -> None:
    async def missing(conn: AsyncConnection[Any]) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(psycopg.errors.UndefinedTable):
        await session.read(missing)
    assert await session.read(count_items) == 0


# -- the parts together -----------------------------------------------------------------------


async def test_every_part_migrates_once_when_replicas_start_together(
    postgres_server: PostgresServer,
) -> None:
    schema = new_schema()
    async with replica_pools(postgres_server.new_database(), 3, schema=schema) as pools:

        async def open_all(pool: AsyncConnectionPool) -> None:
            parts = (
                PostgresStatsPool(pool, schema=schema),
                PostgresLease(pool, schema=schema, replica="r", seconds=10),
                PostgresStateStore(pool, schema=schema),
                PostgresRequestIndex(pool, schema=schema, ttl=60, on_error=lambda op: None),
                PostgresPairSink(
                    pool,
                    schema=schema,
                    max_entries=100,
                    queue_size=10,
                    metrics=ShadowMetrics(CollectorRegistry()),
                ),
                PostgresUsageLedger(pool, schema=schema, keep_days=35),
            )
            await prepare_together([part.session for part in parts])
            assert all(part.session.migrated for part in parts)

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
                ("tenant_usage", 1),
            ]
