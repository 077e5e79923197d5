"""What only the PostgreSQL usage ledger has (the contract every backend keeps is in
test_ledger_contract.py): its table in the deployment's schema, minutes past the keep
neither written nor kept (purged in bounded batches, a failed purge never failing the flush
it follows), replicas flushing the same minutes in any order without deadlocking, and what a
stopped or frozen server and an unanswered COMMIT do to a flush."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from proxy.pg.session import OutcomeUnknown, PostgresUnavailable, prepare_together
from proxy.usage import usage_postgres
from proxy.usage.counts import MINUTE, UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES
from proxy.usage.usage_postgres import PostgresUsageLedger
from tests.pg.pg_parts import frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")

KEEP_DAYS = 2
#: 2026-12-06 12:34 UTC, as in the contract tests.
NOW_MINUTE = 29_418_754


class Clock:
    """Unix seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW_MINUTE * MINUTE + 30.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def oldest_kept(self) -> int:
        return int(self.now) // MINUTE - KEEP_DAYS * DAY_MINUTES


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
async def pools(
    postgres_server: PostgresServer, schema: str
) -> AsyncIterator[list[AsyncConnectionPool]]:
    """Two replicas' pools, on one database and schema."""
    async with replica_pools(postgres_server.new_database(), schema=schema) as opened:
        yield opened


def ledger_on(
    pool: AsyncConnectionPool, schema: str, clock: Clock, **options: Any
) -> PostgresUsageLedger:
    return PostgresUsageLedger(pool, schema=schema, keep_days=KEEP_DAYS, clock=clock, **options)


async def query(pool: AsyncConnectionPool, statement: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(statement.encode())
        return await cur.fetchall() if cur.description else []


async def stored(pool: AsyncConnectionPool) -> dict[tuple[str, int], int]:
    """(tenant, minute) -> requests, of every row in the table."""
    rows = await query(pool, "SELECT tenant, minute, requests FROM tenant_usage")
    return {(tenant, minute): requests for tenant, minute, requests in rows}


def one(tenant: str, minute: int, requests: int = 1) -> dict[UsageKey, UsageCounts]:
    return {UsageKey(tenant, "support", "", minute): UsageCounts(requests=requests)}


async def test_the_table_is_in_the_deployments_schema_alone(
    postgres_server: PostgresServer,
) -> None:
    """Two deployments sharing a database: each ledger's rows in its own schema, migrated
    by the backend's ``prepare_together``, and counters past 32 bits kept exactly."""
    url, clock = postgres_server.new_database(), Clock()
    first, second = new_schema(), new_schema()
    async with (
        replica_pools(url, 1, schema=first) as [pool_a],
        replica_pools(url, 1, schema=second) as [pool_b],
    ):
        a, b = ledger_on(pool_a, first, clock), ledger_on(pool_b, second, clock)
        await prepare_together([a.session])
        assert a.session.migrated
        assert await query(
            pool_a,
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'tenant_usage'",
        ) == [(first,)]
        assert await query(pool_a, "SELECT component, version FROM schema_versions") == [
            ("tenant_usage", 1)
        ]

        m = NOW_MINUTE
        big = UsageCounts(requests=3, errors=1, input_tokens=5_000_000_000, output_tokens=7)
        await a.add({UsageKey("acme", "support", "claude", m): big})
        assert await b.read("acme", m - 10, m + 1) == {}
        await b.add(one("acme", m, requests=2))

        found = await a.read("acme", m - 10, m + 1)
        assert found == {("support", "claude"): big}
        assert (await b.read("acme", m - 10, m + 1))[("support", "")].requests == 2
        tables = await query(
            pool_a,
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'tenant_usage' ORDER BY table_schema",
        )
        assert tables == sorted([(first,), (second,)])


async def test_rows_without_a_request_are_stored_but_never_read(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    """All-zero rows are not written; a pair whose rows hold errors but no request is
    left out of a read, as the protocol says."""
    ledger = ledger_on(pools[0], schema, Clock())
    m = NOW_MINUTE
    await ledger.add(
        {
            UsageKey("acme", "support", "", m): UsageCounts(),
            UsageKey("acme", "billing", "", m): UsageCounts(errors=1),
            UsageKey("acme", "", "", m): UsageCounts(requests=1, cost_usd=0.5),
        }
    )
    assert sorted(await query(pools[0], "SELECT slug FROM tenant_usage")) == [("",), ("billing",)]
    assert await ledger.read("acme", m, m + 1) == {("", ""): UsageCounts(1, cost_usd=0.5)}


async def test_minutes_past_the_keep_are_not_written_and_are_purged_later(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    clock = Clock()
    ledger = ledger_on(pools[0], schema, clock)
    oldest = clock.oldest_kept
    await ledger.add(one("now", NOW_MINUTE))  # the first flush purges: the next will not
    await ledger.add(
        {
            **one("old", oldest - 1),  # already past the keep: never written
            **one("edge", oldest),  # the oldest minute kept
        }
    )
    assert await stored(pools[0]) == {("edge", oldest): 1, ("now", NOW_MINUTE): 1}

    # One minute on, "edge" is past the keep, but the last purge was less than a purge
    # interval ago: it waits for a later flush (purges are now and then, not every flush).
    clock.advance(usage_postgres._PURGE_EVERY_SECONDS - 1)
    assert clock.oldest_kept == oldest + 1
    await ledger.add(one("now", NOW_MINUTE))
    assert await stored(pools[0]) == {("edge", oldest): 1, ("now", NOW_MINUTE): 2}

    clock.advance(1)
    await ledger.add(one("later", int(clock.now) // MINUTE))
    assert await stored(pools[0]) == {("now", NOW_MINUTE): 2, ("later", NOW_MINUTE + 1): 1}

    # Days later (the clock driven past the keep): only the minutes still kept remain.
    clock.advance((KEEP_DAYS * DAY_MINUTES + 1) * MINUTE)
    await ledger.add(one("latest", int(clock.now) // MINUTE))
    assert await stored(pools[0]) == {("latest", NOW_MINUTE + 2 + KEEP_DAYS * DAY_MINUTES): 1}


async def test_a_purge_is_bounded_and_a_backlog_goes_flush_by_flush(
    pools: list[AsyncConnectionPool], schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_postgres, "_PURGE_LIMIT", 4)
    clock = Clock()
    ledger = ledger_on(pools[0], schema, clock)
    await ledger.add({UsageKey("acme", f"s{i}", "", NOW_MINUTE): UsageCounts(1) for i in range(10)})
    clock.advance((KEEP_DAYS * DAY_MINUTES + 1) * MINUTE)
    now_minute = int(clock.now) // MINUTE

    left = []
    for n in range(4):
        # A second apart: a full batch means a backlog, and the next flush purges again.
        clock.advance(1)
        await ledger.add(one("fresh", now_minute, requests=1))
        assert (await stored(pools[0]))[("fresh", now_minute)] == n + 1
        [(count,)] = await query(
            pools[0], "SELECT count(*) FROM tenant_usage WHERE tenant = 'acme'"
        )
        left.append(count)
    assert left == [6, 2, 0, 0]


async def test_a_failed_purge_never_fails_the_flush_it_follows(
    pools: list[AsyncConnectionPool], schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The flush is committed when the purge runs: an error then would make the caller add
    the rows again. Here the purge fails with what the session raises as a bug (a trigger's
    exception), the worst case."""
    clock = Clock()
    ledger = ledger_on(pools[0], schema, clock)
    await ledger.add(one("acme", NOW_MINUTE))
    await query(
        pools[0],
        "CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'deletes refused'; END $$",
    )
    await query(
        pools[0],
        "CREATE TRIGGER no_delete BEFORE DELETE ON tenant_usage "
        "FOR EACH ROW EXECUTE FUNCTION no_delete()",
    )
    clock.advance((KEEP_DAYS * DAY_MINUTES + 1) * MINUTE)
    now_minute = int(clock.now) // MINUTE

    await ledger.add(one("acme", now_minute, requests=5))  # no error
    assert "deletes refused" in caplog.text
    assert await stored(pools[0]) == {("acme", NOW_MINUTE): 1, ("acme", now_minute): 5}

    await query(pools[0], "DROP TRIGGER no_delete ON tenant_usage")
    clock.advance(usage_postgres._PURGE_EVERY_SECONDS)
    await ledger.add(one("acme", now_minute, requests=1))
    assert await stored(pools[0]) == {("acme", now_minute): 6}


async def test_replicas_flushing_the_same_minutes_in_opposite_orders_never_deadlock(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    """Each flush locks its rows in key order whatever order the replica holds them in;
    otherwise two flushes locking the same rows in opposite orders deadlock."""
    clock = Clock()
    a, b = (ledger_on(pool, schema, clock) for pool in pools)
    keys = [
        UsageKey(f"t{i % 7}", f"s{i % 11}", ("", "claude")[i % 2], NOW_MINUTE - i % 13)
        for i in range(300)
    ]
    forward = {key: UsageCounts(requests=1, input_tokens=2) for key in keys}
    backward = {key: UsageCounts(requests=1, input_tokens=2) for key in reversed(keys)}
    rounds = 6
    await asyncio.gather(
        *(ledger.add(rows) for _ in range(rounds) for ledger, rows in ((a, forward), (b, backward)))
    )
    requests = await query(pools[0], "SELECT sum(requests)::int8, count(*) FROM tenant_usage")
    assert requests == [(2 * rounds * len(keys), len(keys))]


async def test_a_flush_whose_commit_goes_unanswered_is_never_counted_twice(
    pools: list[AsyncConnectionPool], schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer to a flush's COMMIT never comes (a trigger holds COMMIT past the call's
    deadline): the rows may or may not be in. The ledger neither sends them again nor fails
    the flush, which would make the caller add them again."""
    ledger = ledger_on(pools[0], schema, Clock(), op_timeout=0.5)
    await ledger.read("acme", 0, 1)  # makes the table
    await query(
        pools[0],
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$",
    )
    await query(
        pools[0],
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON tenant_usage "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    )
    started = time.monotonic()
    await ledger.add(one("acme", NOW_MINUTE, requests=7))  # no error: nothing to add again
    assert time.monotonic() - started < 0.5 + 1.5
    assert "perhaps not added, not sent again" in caplog.text

    await asyncio.sleep(3)  # past the trigger's sleep: whatever was to commit has
    found = await ledger.read("acme", NOW_MINUTE, NOW_MINUTE + 1)
    assert sum(counts.requests for counts in found.values()) in (0, 7)  # never twice


async def test_a_flush_to_a_stopped_or_frozen_server_fails_in_time_and_applies_nothing(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    """The flush raises an outage (not an unknown outcome: nothing was committed), within
    its deadline, so the caller keeps the rows and adds them at a later flush; once the
    server is back, what was added is there exactly once."""
    server = fresh_postgres_server
    async with replica_pools(server.new_database(), 1, schema=schema) as [pool]:
        ledger = ledger_on(pool, schema, Clock(), op_timeout=1.0)
        m = NOW_MINUTE
        await ledger.add(one("acme", m, requests=1))

        server.stop()
        try:
            for _ in range(2):  # the first finds the pool's connections dead, the next refused
                await fails_in_time(ledger, one("acme", m, requests=10))
        finally:
            server.start()
        await wait_until_back(ledger)
        await ledger.add(one("acme", m, requests=10))  # the caller's next flush

        with frozen(server):
            await fails_in_time(ledger, one("acme", m, requests=100))
        await wait_until_back(ledger)

        found = await ledger.read("acme", m, m + 1)
        assert found == {("support", ""): UsageCounts(requests=11)}


async def fails_in_time(ledger: PostgresUsageLedger, rows: dict[UsageKey, UsageCounts]) -> None:
    started = time.monotonic()
    with pytest.raises(PostgresUnavailable) as raised:
        await ledger.add(rows)
    assert not isinstance(raised.value, OutcomeUnknown)
    assert time.monotonic() - started < 1.0 + 1.5


async def wait_until_back(ledger: PostgresUsageLedger) -> None:
    """The pool reconnects in the background, with its own back-off."""
    for _ in range(100):
        try:
            await ledger.read("nobody", 0, 1)
            return
        except PostgresUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the ledger did not work again within 10 s")
