"""The usage ledger of every backend keeps the same promise: what replicas add, a read sums
exactly, by (slug, variant), over any range of minutes, for one tenant only.

Each backend runs the same tests: the embedded SQLite file, a private redis-server and a
private PostgreSQL (started by the tests). Reads are checked against sums worked out here
from the rows written, over ranges that start and end inside hours and days (the Redis
ledger reads whole hours from its daily hashes and the edges from its hourly ones).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from proxy.usage.counts import Totals, UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES, UsageLedger
from tests.pg.pg_parts import new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, running_redis

KEEP_DAYS = 35
#: A fixed "now" (2025-12-07 16:34 UTC), so ranges land where the test says.
NOW_MINUTE = 29_418_754
postgres_server = postgres_server_fixture("module")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def clock() -> float:
    return NOW_MINUTE * 60.0 + 30.0


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
async def ledgers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[UsageLedger]]:
    """Two ledgers on one store: two replicas."""
    kind = request.param
    # Imported here: each backend's ledger imports its driver only when it is used.
    if kind == "sqlite":
        from proxy.usage.usage_sqlite import SqliteUsageLedger

        path = tmp_path / "registry.usage.db"
        made: list[UsageLedger] = [
            SqliteUsageLedger(path, keep_days=KEEP_DAYS, clock=clock) for _ in range(2)
        ]
        yield made
        for ledger in made:
            await ledger.close()
    elif kind == "redis":
        from proxy.usage.usage_redis import RedisUsageLedger

        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"usage-{uuid.uuid4().hex[:8]}:"
        clients = [Redis.from_url(server.url) for _ in range(2)]
        made = [
            RedisUsageLedger(client, prefix, keep_days=KEEP_DAYS, clock=clock) for client in clients
        ]
        yield made
        for ledger in made:
            await ledger.close()
        for client in clients:
            await client.aclose()
    else:
        from proxy.usage.usage_postgres import PostgresUsageLedger

        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = pg.new_database()
        schema = new_schema()
        async with replica_pools(url, 2, schema=schema) as pools:
            made = [
                PostgresUsageLedger(pool, schema=schema, keep_days=KEEP_DAYS, clock=clock)
                for pool in pools
            ]
            yield made
            for ledger in made:
                await ledger.close()


def counts(requests: int, errors: int = 0, tokens: int = 0, cost: float = 0.0) -> UsageCounts:
    return UsageCounts(requests, errors, tokens, 2 * tokens, cost)


def expected(
    rows: list[tuple[UsageKey, UsageCounts]],
    tenant: str,
    start: int,
    end: int,
    slug: str | None = None,
) -> Totals:
    out: Totals = {}
    for key, value in rows:
        if key.tenant != tenant or not start <= key.minute < end:
            continue
        if slug is not None and key.slug != slug:
            continue
        out.setdefault((key.slug, key.variant), UsageCounts()).merge(value)
    return out


def assert_same(found: Totals, wanted: Totals) -> None:
    assert found.keys() == wanted.keys()
    for pair, value in wanted.items():
        got = found[pair]
        assert (got.requests, got.errors, got.input_tokens, got.output_tokens) == (
            value.requests,
            value.errors,
            value.input_tokens,
            value.output_tokens,
        ), pair
        assert got.cost_usd == pytest.approx(value.cost_usd, rel=1e-9, abs=1e-12), pair


async def test_a_read_sums_what_was_added_by_slug_and_variant(
    ledgers: list[UsageLedger],
) -> None:
    one, _ = ledgers
    m = NOW_MINUTE
    await one.add(
        {
            UsageKey("acme", "support", "", m - 2): counts(3, 1, 100, 0.25),
            UsageKey("acme", "support", "", m - 1): counts(2, 0, 50, 0.125),
            UsageKey("acme", "support", "claude", m - 1): counts(4, 0, 10),
            UsageKey("acme", "", "", m - 1): counts(1),
            UsageKey("globex", "support", "", m - 1): counts(9),
        }
    )
    found = await one.read("acme", m - 10, m + 1)
    assert_same(
        found,
        {
            ("support", ""): counts(5, 1, 150, 0.375),
            ("support", "claude"): counts(4, 0, 10),
            ("", ""): counts(1),
        },
    )
    assert_same(await one.read("globex", m - 10, m + 1), {("support", ""): counts(9)})
    assert await one.read("initech", m - 10, m + 1) == {}


async def test_the_range_is_start_inclusive_end_exclusive(ledgers: list[UsageLedger]) -> None:
    one, _ = ledgers
    m = NOW_MINUTE
    await one.add({UsageKey("acme", "support", "", minute): counts(1) for minute in (m - 3, m - 2)})
    assert_same(await one.read("acme", m - 2, m), {("support", ""): counts(1)})
    assert_same(await one.read("acme", m - 3, m - 2), {("support", ""): counts(1)})
    assert await one.read("acme", m - 1, m + 1) == {}


async def test_a_slug_filter_reads_that_slug_only(ledgers: list[UsageLedger]) -> None:
    one, _ = ledgers
    m = NOW_MINUTE
    await one.add(
        {
            UsageKey("acme", "support", "", m - 1): counts(2),
            UsageKey("acme", "support", "claude", m - 1): counts(3),
            UsageKey("acme", "billing", "", m - 1): counts(5),
        }
    )
    assert_same(
        await one.read("acme", m - 5, m + 1, slug="support"),
        {("support", ""): counts(2), ("support", "claude"): counts(3)},
    )
    assert await one.read("acme", m - 5, m + 1, slug="nothing") == {}


async def test_replicas_adding_the_same_rows_at_once_lose_nothing(
    ledgers: list[UsageLedger],
) -> None:
    m = NOW_MINUTE
    rows = {UsageKey("acme", f"s{i % 7}", "", m - i % 5): counts(1, 0, 3, 0.001) for i in range(40)}
    await asyncio.gather(*(ledger.add(rows) for ledger in ledgers for _ in range(5)))
    found = await ledgers[1].read("acme", m - 10, m + 1)
    wanted = expected([(k, v) for k, v in rows.items()] * 10, "acme", m - 10, m + 1)
    assert_same(found, wanted)


async def test_any_range_over_days_sums_exactly(ledgers: list[UsageLedger]) -> None:
    """Rows spread over three days; ranges cut inside hours and days, whole days, one
    minute. Compared with the sums worked out from the rows themselves."""
    rng = random.Random(14)
    m = NOW_MINUTE
    written: list[tuple[UsageKey, UsageCounts]] = []
    for _ in range(3):  # three flushes, the same minutes written more than once
        rows: dict[UsageKey, UsageCounts] = {}
        for _ in range(300):
            key = UsageKey(
                rng.choice(["acme", "globex"]),
                rng.choice(["support", "billing", ""]),
                rng.choice(["", "claude"]),
                m - rng.randrange(3 * DAY_MINUTES),
            )
            value = counts(rng.randrange(1, 5), rng.randrange(2), rng.randrange(500), 0.0005)
            rows.setdefault(key, UsageCounts()).merge(value)
        written.extend(rows.items())
        await ledgers[rng.randrange(2)].add(rows)
    day = m - m % DAY_MINUTES
    ranges = [
        (m - 3 * DAY_MINUTES, m + 1),
        (day - DAY_MINUTES, day),  # one whole day
        (day - DAY_MINUTES - 17, day + 23),  # inside hours at both ends
        (day - 61, day - 59),
        (m - 90, m - 89),
    ] + [
        (start, start + rng.randrange(1, 2 * DAY_MINUTES))
        for start in (m - rng.randrange(3 * DAY_MINUTES) for _ in range(6))
    ]
    for start, end in ranges:
        for slug in (None, "support"):
            found = await ledgers[0].read("acme", start, end, slug=slug)
            assert_same(found, expected(written, "acme", start, end, slug))


async def test_a_large_flush_is_added_whole(ledgers: list[UsageLedger]) -> None:
    """A replica back from a store outage flushes everything it held at once."""
    m = NOW_MINUTE
    rows = {
        # Mixed radix: 15,000 distinct rows, 300 of them t7's.
        UsageKey(f"t{i % 50}", f"s{i // 50 % 15}", ("", "claude")[i // 750 % 2], m - i // 1500): (
            counts(1)
        )
        for i in range(15_000)
    }
    assert len(rows) == 15_000
    await ledgers[0].add(rows)
    found = await ledgers[1].read("t7", m - 100, m + 1)
    assert_same(found, expected(list(rows.items()), "t7", m - 100, m + 1))
    assert sum(value.requests for value in found.values()) == 300


async def test_nothing_to_add_writes_nothing(ledgers: list[UsageLedger]) -> None:
    await ledgers[0].add({})
    await ledgers[0].add({UsageKey("acme", "support", "", NOW_MINUTE): UsageCounts()})
    assert await ledgers[0].read("acme", NOW_MINUTE - 5, NOW_MINUTE + 1) == {}
