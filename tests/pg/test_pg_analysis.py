"""What only the PostgreSQL analysis parts have (the contract they share with Redis is in
tests/registry/test_analysis_parts.py): their rows, in the deployment's schema, with the
expiry that cleans up after a rollout; and what a killed connection, a restart, a frozen or
crashed server do to them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state import MAX_VERDICTS, AnalysisState
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.pg.session import PostgresUnavailable
from proxy.prompt_key import PromptKey
from tests.pg.pg_parts import crash, frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.registry.test_analysis_parts import replica_batches, verdict

GREET = PromptKey("greet")

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
async def pools(
    postgres_server: PostgresServer, schema: str
) -> AsyncIterator[list[AsyncConnectionPool]]:
    """One pool per simulated replica, on one database and schema."""
    async with replica_pools(postgres_server.new_database(), schema=schema) as opened:
        yield opened


#: Seconds a row has left.
TTL = "extract(epoch FROM expires_at - now())::float8"


async def rows(pool: AsyncConnectionPool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(query.encode())
        return await cur.fetchall()


# -- the stats pool --------------------------------------------------------------------------


async def test_pool_rows_honour_the_schema_and_expire(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    pool = PostgresStatsPool(pools[0], schema=schema)
    base = int(time.time())
    await pool.add(replica_batches(0, base), keep_seconds=30)

    tables = await rows(
        pools[0],
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'analysis%' ORDER BY table_name",
    )
    assert tables == [(schema, "analysis_counts"), (schema, "analysis_divergence")]
    slot_ttls = await rows(pools[0], f"SELECT {TTL} FROM analysis_counts")
    divergence_ttls = await rows(pools[0], f"SELECT {TTL} FROM analysis_divergence")
    # Four slots of three arms and r-0's slot; r-1's divergence (noise and candidate).
    assert (len(slot_ttls), len(divergence_ttls)) == (4 * 3 + 1, 2)
    for (ttl,) in slot_ttls:
        assert 30 + 120 - 5 < ttl <= 30 + 120  # the window, plus the grace
    for (ttl,) in divergence_ttls:
        assert 86_400 - 5 < ttl <= 86_400

    # Expired rows are never read, and a later flush deletes them.
    await rows(
        pools[0],
        "UPDATE analysis_counts SET expires_at = now() - interval '1 second' "
        "WHERE rollout_id = 'r-1' RETURNING 1",
    )
    assert (await pool.read(GREET, "r-1", base, base + 5)).arms == {}
    assert (await pool.read(GREET, "r-0", base, base + 5)).arm("stable").requests == 1
    pool._purged_at = 0.0  # the next flush purges (they do every few seconds)
    await pool.add(replica_batches(1, base + 100), keep_seconds=30)
    assert await rows(pools[0], "SELECT 1 FROM analysis_counts WHERE expires_at < now()") == []
    assert (await pool.read(GREET, "r-1", base + 100, base + 105)).arm("stable").requests > 0


async def test_a_flush_whose_commit_goes_unanswered_is_never_counted_twice(
    pools: list[AsyncConnectionPool], schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer to a flush's COMMIT never comes (here: COMMIT held past the call's
    deadline by a trigger): the counts may or may not be in. The pool neither sends them
    again nor fails the flush, which would make the analyser add them again later."""
    stats = PostgresStatsPool(pools[0], schema=schema, op_timeout=0.5)
    base = int(time.time())
    assert (await stats.read(GREET, "r-1", base, base + 5)).arms == {}  # makes the tables
    async with pools[0].connection() as conn:
        await conn.execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$"
        )
        await conn.execute(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON analysis_counts "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
        )
    batches = replica_batches(0, base)
    sent = sum(s.requests for s in batches[(GREET, "r-1")].slots[base].values())

    started = time.monotonic()
    await stats.add(batches, keep_seconds=30)  # no error: nothing for the caller to add again
    assert time.monotonic() - started < 0.5 + 1.5
    assert "perhaps not added, not sent again" in caplog.text

    window = await stats.read(GREET, "r-1", base, base + 1)
    assert sum(a.requests for a in window.arms.values()) in (0, sent)  # never twice


# -- the lease -------------------------------------------------------------------------------


async def leases(
    pools: list[AsyncConnectionPool], schema: str, seconds: float
) -> tuple[PostgresLease, PostgresLease]:
    a = PostgresLease(pools[0], schema=schema, replica="replica-a", seconds=seconds)
    b = PostgresLease(pools[1], schema=schema, replica="replica-b", seconds=seconds)
    return a, b


async def test_a_killed_connection_neither_frees_nor_loses_the_lease(
    postgres_server: PostgresServer, pools: list[AsyncConnectionPool], schema: str
) -> None:
    """The lease is a row, not a session lock: killing every connection (the holder's
    included) hands nothing over, and the holder renews on a fresh pooled connection."""
    a, b = await leases(pools, schema, 30)
    assert await a.hold(GREET)
    for _ in range(3):
        assert postgres_server.terminate_backends() > 0
        assert not await b.hold(GREET)  # the next call after the kill succeeds...
        assert await a.hold(GREET)  # ...on both pools, and a still holds it
        assert await b.holder(GREET) == "replica-a"


async def test_the_lease_outlives_a_server_restart_with_one_holder(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), schema=schema) as pools:
        a, b = await leases(pools, schema, 30)
        assert await a.hold(GREET)
        assert not await b.hold(GREET)

        fresh_postgres_server.restart()
        assert not await b.hold(GREET)
        assert await a.hold(GREET)
        assert await a.holder(GREET) == await b.holder(GREET) == "replica-a"


async def test_lease_calls_fail_fast_while_the_server_is_down_or_frozen(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    """Each call ends within its deadline with PostgresUnavailable (the analyser then counts
    the replica as not leading), and the lease works again once the server is back."""
    async with replica_pools(fresh_postgres_server.new_database(), schema=schema) as pools:
        a = PostgresLease(pools[0], schema=schema, replica="replica-a", seconds=30, op_timeout=1.0)
        assert await a.hold(GREET)
        with frozen(fresh_postgres_server):
            await fails_fast(a)
        await wait_until_back(a)
        assert await a.hold(GREET)

        crash(fresh_postgres_server)
        try:
            await fails_fast(a)
        finally:
            fresh_postgres_server.start()
        await wait_until_back(a)
        assert await a.hold(GREET)


async def fails_fast(lease: PostgresLease) -> None:
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(PostgresUnavailable, match="analysis lease"):
            await lease.hold(GREET)
        assert time.monotonic() - started < 1.0 + 1.5


async def wait_until_back(lease: PostgresLease) -> None:
    """The pool reconnects in the background, with its own back-off."""
    for _ in range(100):
        try:
            await lease.holder(GREET)
            return
        except PostgresUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the lease did not work again within 10 s")


# -- the state store -------------------------------------------------------------------------


async def test_state_rows_honour_the_schema_keep_the_cap_and_expire(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    store = PostgresStateStore(pools[0], schema=schema)
    state = AnalysisState("r-1", failures=0, step_started_at=1000.25, next_at=1060.5)
    for n in range(MAX_VERDICTS + 5):
        await store.save(GREET, state, verdict("r-1", n))

    tables = await rows(
        pools[0],
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'analysis_state'",
    )
    assert tables == [(schema,)]
    stored = await rows(pools[0], "SELECT jsonb_array_length(verdicts) FROM analysis_state")
    assert stored == [(MAX_VERDICTS,)]
    [(ttl,)] = await rows(pools[0], f"SELECT {TTL} FROM analysis_state")
    assert 7 * 86_400 - 5 < ttl <= 7 * 86_400


async def test_an_expired_state_is_gone(pools: list[AsyncConnectionPool], schema: str) -> None:
    store = PostgresStateStore(pools[0], schema=schema)
    old = AnalysisState("r-1", failures=2, step_started_at=1000.0, next_at=1010.0)
    await store.save(GREET, old, verdict("r-1", 1))
    await rows(pools[0], "UPDATE analysis_state SET expires_at = now() RETURNING 1")

    assert await store.load(GREET) == (None, [])
    # Saved again, the state starts a fresh verdict list, as on a Redis whose keys expired.
    await store.save(GREET, old, verdict("r-1", 2))
    assert await store.load(GREET) == (old, [verdict("r-1", 2)])


async def test_the_parts_work_on_the_next_call_after_connections_are_killed(
    postgres_server: PostgresServer, pools: list[AsyncConnectionPool], schema: str
) -> None:
    stats = PostgresStatsPool(pools[0], schema=schema)
    state = PostgresStateStore(pools[0], schema=schema)
    base = int(time.time())
    await stats.add(replica_batches(0, base), keep_seconds=30)
    saved = AnalysisState("r-1", failures=1, step_started_at=1000.0, next_at=1010.0)
    await state.save(GREET, saved)

    assert postgres_server.terminate_backends() > 0
    await stats.add(replica_batches(0, base), keep_seconds=30)  # no error: a fresh connection
    assert postgres_server.terminate_backends() > 0
    window = await stats.read(GREET, "r-1", base, base + 5)
    assert window.arm("stable").requests == 2 * sum(
        stats.requests
        for slot in replica_batches(0, base)[(GREET, "r-1")].slots.values()
        for name, stats in slot.items()
        if name == "stable"
    )
    assert postgres_server.terminate_backends() > 0
    assert await state.load(GREET) == (saved, [])
