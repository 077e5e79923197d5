"""The Redis usage ledger's own promises, beyond the contract every backend keeps: where its
rows live and when they expire, and what ``add`` does when Redis fails under it (raises when
nothing was added, never counts a row twice). Each test has a private redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.backends.redis import shared_client
from proxy.usage.counts import UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES, Added
from proxy.usage.usage_redis import RedisUsageLedger
from tests.redis_server import RedisServer, running_redis

KEEP_DAYS = 35
HOUR = 3600
DAY = 86_400
#: A Lua script that holds Redis for ARGV[1] microseconds: every other client waits.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1e6 + t[2]
while true do
  local n = redis.call('TIME')
  if n[1] * 1e6 + n[2] - start > tonumber(ARGV[1]) then return 1 end
end
"""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[RedisServer]:
    """One per test: the fault tests kill, pause and stall it."""
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """The production client settings (bounded timeouts, one retry)."""
    made = shared_client(redis_server.url)
    yield made
    await made.aclose()


def new_prefix() -> str:
    return f"u{uuid.uuid4().hex[:8]}:"


def now_minute() -> int:
    return int(time.time()) // 60


def fast_client(url: str) -> Redis:
    """Like ``shared_client`` (one retry on a failed or timed-out connection), with a short
    socket timeout so that a stalled Redis times a call out quickly."""
    return Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=0.3,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )


async def test_rows_go_to_an_hourly_and_a_daily_hash_of_their_tenant(
    client: Redis, raw: Redis
) -> None:
    prefix = new_prefix()
    ledger = RedisUsageLedger(client, prefix, keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    hour, day = m // 60, m // DAY_MINUTES
    await ledger.add(
        {
            UsageKey("acme", "support", "claude", m): UsageCounts(3, 0, 10, 20, 0.25),
            UsageKey("acme", "", "", m): UsageCounts(1),
        }
    )
    hourly, daily = f"{prefix}{{usage}}:h:acme:{hour}", f"{prefix}{{usage}}:d:acme:{day}"
    keys = set(await raw.keys(f"{prefix}*"))
    assert {hourly, daily} <= keys
    assert all(key.startswith(f"{prefix}{{usage}}:add:") for key in keys - {hourly, daily})
    minute, hour_of_day = m % 60, hour % 24
    for name, position in ((hourly, minute), (daily, hour_of_day)):
        fields = await raw.hgetall(name)
        # A zero counter (errors) is not written.
        assert fields == {
            f"{position}|support|claude|requests": "3",
            f"{position}|support|claude|input_tokens": "10",
            f"{position}|support|claude|output_tokens": "20",
            f"{position}|support|claude|cost_usd": "0.25",
            f"{position}|||requests": "1",  # no slug, the default variant
        }


async def test_each_hash_expires_keep_days_after_its_hour_or_day(client: Redis, raw: Redis) -> None:
    prefix = new_prefix()
    ledger = RedisUsageLedger(client, prefix, keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute() - 3 * DAY_MINUTES - 7  # expiry follows the row's minute, not now
    await ledger.add({UsageKey("acme", "support", "", m): UsageCounts(1)})
    hour, day = m // 60, m // DAY_MINUTES
    hourly_at = await raw.expiretime(f"{prefix}{{usage}}:h:acme:{hour}")
    daily_at = await raw.expiretime(f"{prefix}{{usage}}:d:acme:{day}")
    assert hourly_at == pytest.approx((hour + 1) * HOUR + KEEP_DAYS * DAY, abs=2)
    assert daily_at == pytest.approx((day + 1) * DAY + KEEP_DAYS * DAY, abs=2)


async def test_a_row_older_than_keep_days_is_not_written(client: Redis, raw: Redis) -> None:
    prefix = new_prefix()
    ledger = RedisUsageLedger(client, prefix, keep_days=1, clock=time.time)
    m = now_minute()
    await ledger.add(
        {
            UsageKey("old", "support", "", m - DAY_MINUTES - 1): UsageCounts(5),
            UsageKey("young", "support", "", m - DAY_MINUTES + 1): UsageCounts(2),
        }
    )
    assert await raw.keys(f"{prefix}{{usage}}:*:old:*") == []
    assert len(await raw.keys(f"{prefix}{{usage}}:*:young:*")) == 2
    assert await ledger.read("old", m - 2 * DAY_MINUTES, m + 1) == {}
    assert (await ledger.read("young", m - 2 * DAY_MINUTES, m + 1))[("support", "")].requests == 2


async def test_a_minute_is_gone_once_keep_days_have_passed(client: Redis, raw: Redis) -> None:
    """The clock is set so that the row's hourly hash has a second left: Redis drops it."""
    prefix = new_prefix()
    m = now_minute() - 120
    m -= m % 60 - 59  # the last minute of its hour, the youngest its hour holds
    now = (m + 1) * 60 + DAY - 1  # its hour ended a day (keep_days=1) less a second ago
    ledger = RedisUsageLedger(client, prefix, keep_days=1, clock=lambda: now)
    await ledger.add({UsageKey("acme", "support", "", m): UsageCounts(4)})
    assert (await ledger.read("acme", m, m + 1))[("support", "")].requests == 4
    hourly = f"{prefix}{{usage}}:h:acme:{m // 60}"
    assert 0 < await raw.pttl(hourly) <= 1000
    for _ in range(50):
        if not await raw.exists(hourly):
            break
        await asyncio.sleep(0.1)
    assert await ledger.read("acme", m, m + 1) == {}


async def test_a_read_does_not_reach_back_past_keep_days(client: Redis, raw: Redis) -> None:
    """Whole hours come from a daily hash, which outlives its first hours by up to a day:
    those hours are past the keep and must not be counted."""
    prefix = new_prefix()
    m = now_minute() - 3 * 60
    m -= m % DAY_MINUTES  # the first minute of a day: its daily hash outlives it longest
    writer = RedisUsageLedger(client, prefix, keep_days=1, clock=lambda: m * 60.0)
    await writer.add({UsageKey("acme", "support", "", m): UsageCounts(1)})
    later = (m + DAY_MINUTES + 60) * 60.0  # an hour past the row's keep
    reader = RedisUsageLedger(client, prefix, keep_days=1, clock=lambda: later)
    assert await raw.exists(f"{prefix}{{usage}}:d:acme:{m // DAY_MINUTES}")
    assert await reader.read("acme", m - DAY_MINUTES, m + 2 * DAY_MINUTES) == {}


async def test_a_read_of_keep_days_reads_one_hash_per_day_and_two_hours(
    client: Redis, raw: Redis
) -> None:
    prefix = new_prefix()
    ledger = RedisUsageLedger(client, prefix, keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    rows = {
        UsageKey("acme", "support", "", m - offset): UsageCounts(1)
        for offset in range(0, KEEP_DAYS * DAY_MINUTES, 97)
    }
    await ledger.add(rows)
    await raw.config_resetstat()
    found = await ledger.read("acme", m - KEEP_DAYS * DAY_MINUTES - 1000, m + 1)
    assert found[("support", "")].requests == len(rows)
    calls = (await raw.info("commandstats"))["cmdstat_hgetall"]["calls"]
    assert calls <= KEEP_DAYS + 1 + 2  # the days the range touches, and its two edge hours


async def test_close_leaves_the_shared_client_open(client: Redis) -> None:
    ledger = RedisUsageLedger(client, new_prefix(), keep_days=KEEP_DAYS, clock=time.time)
    await ledger.close()
    assert await client.ping()


async def add_within(ledger: RedisUsageLedger, rows: dict[UsageKey, UsageCounts]) -> float:
    """Seconds ``add`` took to raise (it must not succeed, nor hang)."""
    started = time.monotonic()
    with pytest.raises(RedisError):
        async with asyncio.timeout(10):
            await ledger.add(rows)
    return time.monotonic() - started


@pytest.mark.parametrize("fault", ["down", "frozen"])
async def test_add_raises_when_redis_is_down_or_frozen_and_adds_nothing(
    fresh_server: RedisServer, fault: str
) -> None:
    client = shared_client(fresh_server.url)
    try:
        ledger = RedisUsageLedger(client, "p:", keep_days=KEEP_DAYS, clock=time.time)
        m = now_minute()
        rows = {UsageKey("acme", "support", "", m): UsageCounts(2, 1, 10, 20, 0.5)}
        await ledger.add(rows)  # connected, and the script loaded: a warm replica
        if fault == "down":
            fresh_server.kill()
        else:
            fresh_server.pause()
        assert await add_within(ledger, rows) < 5
        if fault == "down":
            fresh_server.start()  # an empty Redis at the same address
            expected = 2
        else:
            fresh_server.resume()
            expected = 4  # the first add, and none of the one that raised
        await ledger.add(rows)  # the caller adds the rows it kept
        found = await ledger.read("acme", m - 5, m + 1)
        assert found[("support", "")].requests == expected
        assert found[("support", "")].cost_usd == pytest.approx(expected * 0.25)
    finally:
        fresh_server.resume()
        await client.aclose()


def stall_after_ping(client: Redis, url: str, microseconds: int) -> list[asyncio.Task[None]]:
    """From now on, each PING ``client`` sends is answered, then Redis is held by another
    client's script for ``microseconds``: what a ledger sends after its PING waits behind
    it, longer than ``client``'s socket timeout (its answer is late: lost)."""
    real_ping: Callable[..., Awaitable[Any]] = client.ping
    holds: list[asyncio.Task[None]] = []

    async def ping(**kwargs: Any) -> Any:
        answer = await real_ping(**kwargs)
        holds.append(asyncio.create_task(hold(url, microseconds)))
        await asyncio.sleep(0.05)  # the holding script reaches Redis first
        return answer

    client.ping = ping  # type: ignore[method-assign]
    return holds


async def hold(url: str, microseconds: int) -> None:
    holder = Redis.from_url(url, socket_timeout=microseconds / 1e6 + 5)
    try:
        await holder.eval(BUSY, 0, microseconds)
    finally:
        await holder.aclose()


async def requests_of(ledger: RedisUsageLedger, tenant: str, m: int) -> int:
    found = await ledger.read(tenant, m - 200, m + 1)
    return sum(counts.requests for counts in found.values())


@pytest.fixture
async def fast(fresh_server: RedisServer) -> AsyncIterator[Redis]:
    made = fast_client(fresh_server.url)
    yield made
    await made.aclose()


async def test_a_late_answer_does_not_count_the_rows_twice(
    fresh_server: RedisServer, fast: Redis
) -> None:
    """The client times out waiting, and sends the rows again: Redis, free again, runs
    both copies. The second must add nothing."""
    ledger = RedisUsageLedger(fast, "p:", keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    await ledger.add({UsageKey("warm", "", "", m): UsageCounts(1)})  # the script loaded
    holds = stall_after_ping(fast, fresh_server.url, 600_000)
    async with asyncio.timeout(10):
        added = await ledger.add({UsageKey("acme", "support", "", m): UsageCounts(1)})
        await asyncio.gather(*holds)
    assert await requests_of(ledger, "acme", m) == 1
    assert added == Added()


async def test_an_add_whose_outcome_is_unknown_does_not_raise(
    fresh_server: RedisServer, fast: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis takes the rows but answers nothing in time, nor to the question whether it
    applied them: raising would make the caller add them again."""
    ledger = RedisUsageLedger(fast, "p:", keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    await ledger.add({UsageKey("warm", "", "", m): UsageCounts(1)})
    holds = stall_after_ping(fast, fresh_server.url, 2_500_000)
    with caplog.at_level(logging.WARNING, logger="promptproxy"):
        async with asyncio.timeout(10):
            added = await ledger.add({UsageKey("acme", "support", "", m): UsageCounts(1)})
            await asyncio.gather(*holds)
    assert added == Added(lost=1)
    assert "unknown" in caplog.text
    assert await requests_of(ledger, "acme", m) <= 1


ChunkFault = Callable[[Callable[..., Awaitable[Any]], dict[str, Any]], Awaitable[Any]]


def fail_chunk(ledger: RedisUsageLedger, number: int, fault: ChunkFault) -> None:
    """The ``number``-th chunk the ledger sends goes through ``fault``."""
    real: Callable[..., Awaitable[Any]] = ledger._add_script  # type: ignore[assignment]
    calls = 0

    async def script(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == number:
            return await fault(real, kwargs)
        return await real(**kwargs)

    ledger._add_script = script  # type: ignore[assignment]


async def lost_on_the_way(real: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]) -> Any:
    raise RedisConnectionError("the connection died before the chunk was sent")


async def answer_lost(real: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]) -> Any:
    await real(**kwargs)
    raise RedisConnectionError("the connection died before the answer came")


#: 6,000 rows of one counter: two increments each, so chunks of 2,500, 2,500 and 1,000 rows.
def three_chunks(m: int) -> dict[UsageKey, UsageCounts]:
    return {UsageKey("acme", f"s{i % 100}", "", m - i // 100): UsageCounts(1) for i in range(6000)}


async def test_a_flush_whose_first_chunk_fails_adds_nothing_and_returns_every_row(
    client: Redis,
) -> None:
    ledger = RedisUsageLedger(client, new_prefix(), keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    rows = three_chunks(m)
    fail_chunk(ledger, 1, lost_on_the_way)
    added = await ledger.add(rows)
    assert (added.unwritten, added.lost) == (rows, 0)
    assert await requests_of(ledger, "acme", m) == 0
    assert await ledger.add(added.unwritten) == Added()  # the caller's next flush
    assert await requests_of(ledger, "acme", m) == 6000


async def test_a_flush_that_fails_after_its_first_chunk_returns_the_rest(
    client: Redis,
) -> None:
    """Raising would make the caller add the first chunk again: the rows not added are
    returned instead, and the fence keeps the failed chunk from applying late."""
    ledger = RedisUsageLedger(client, new_prefix(), keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    fail_chunk(ledger, 2, lost_on_the_way)
    added = await ledger.add(three_chunks(m))
    assert await requests_of(ledger, "acme", m) == 2500
    assert (len(added.unwritten), added.lost) == (3500, 0)
    await ledger.add(added.unwritten)
    assert await requests_of(ledger, "acme", m) == 6000


async def test_a_chunk_whose_answer_was_lost_counts_once_and_the_flush_goes_on(
    client: Redis,
) -> None:
    ledger = RedisUsageLedger(client, new_prefix(), keep_days=KEEP_DAYS, clock=time.time)
    m = now_minute()
    fail_chunk(ledger, 1, answer_lost)
    assert await ledger.add(three_chunks(m)) == Added()
    assert await requests_of(ledger, "acme", m) == 6000
