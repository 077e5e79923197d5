"""The analysis parts that replicas share, one contract run on Redis and on PostgreSQL (each a
private server): the stats pool adds up what every replica flushes (the same window as the
in-memory pool, no increment lost), the lease has exactly one holder and passes on when its
holder stops renewing, vanishes or lets go, the analysis state with its last verdicts
survives for whoever holds the lease next, and a lasting outage is logged at error level.

What only one store has (its keys or rows, its own failures) is in test_analysis_redis.py and
tests/pg/test_pg_analysis.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.analysis.analyser import TICK_SECONDS, Analyser
from proxy.analysis.lease import Lease, RedisLease
from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool import MemoryStatsPool, PooledWindow, RedisStatsPool, StatsPool
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state import MAX_VERDICTS, AnalysisState, RedisStateStore, StateStore
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.analysis.window import (
    ArmStats,
    RolloutBatch,
    RolloutKey,
    WindowRecorder,
    merge_arms,
)
from proxy.config import AnalysisConfig
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.prompt_key import Layer, PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.models import RegistrySnapshot
from proxy.registry.service import RegistryService
from proxy.shadow.compare import Divergence
from tests.pg.pg_parts import crash, new_schema, replica_pools
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.unit.test_choose import rollout

GREET = PromptKey("greet")
OTHER = PromptKey("other")
NOTHING = PromptKey("nothing")


@dataclass
class Shared:
    """One store's analysis parts, each made for simulated replica 0 or 1 (which have
    connections of their own), and how to take the store down for good."""

    pool: Callable[[int], Awaitable[StatsPool]]
    #: (replica, replica name, lease seconds)
    lease: Callable[[int, str, float], Awaitable[Lease]]
    state: Callable[[int], Awaitable[StateStore]]
    down: Callable[[], None]


@contextlib.asynccontextmanager
async def on_redis(server: RedisServer) -> AsyncIterator[Shared]:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    # A killed server refuses at once; the timeout only bounds a connect the loop is slow to
    # complete, as 40 flushes opening connections together on a busy machine are (0.2 s
    # failed that way).
    clients = [Redis.from_url(server.url, socket_connect_timeout=5.0) for _ in range(2)]

    async def pool(replica: int) -> StatsPool:
        return RedisStatsPool(clients[replica], prefix)

    async def lease(replica: int, name: str, seconds: float) -> Lease:
        return RedisLease(clients[replica], prefix, name, seconds)

    async def state(replica: int) -> StateStore:
        return RedisStateStore(clients[replica], prefix)

    try:
        yield Shared(pool, lease, state, server.kill)
    finally:
        for client in clients:
            await client.aclose()


@contextlib.asynccontextmanager
async def on_postgres(server: PostgresServer, url: str) -> AsyncIterator[Shared]:
    schema = new_schema()
    async with replica_pools(url, schema=schema) as pools:

        async def pool(replica: int) -> StatsPool:
            return PostgresStatsPool(pools[replica], schema=schema)

        async def lease(replica: int, name: str, seconds: float) -> Lease:
            return PostgresLease(pools[replica], schema=schema, replica=name, seconds=seconds)

        async def state(replica: int) -> StateStore:
            return PostgresStateStore(pools[replica], schema=schema)

        yield Shared(pool, lease, state, lambda: crash(server))


@contextlib.asynccontextmanager
async def parts_on(request: pytest.FixtureRequest, *, own_server: bool) -> AsyncIterator[Shared]:
    """On the suite's servers, or on a server of the test's own, which it may take down."""
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue(
            "fresh_redis_server" if own_server else "redis_server"
        )
        async with on_redis(redis) as parts:
            yield parts
        return
    if own_server:
        postgres: PostgresServer = request.getfixturevalue("fresh_postgres_server")
        url = postgres.new_database()
    else:
        postgres = request.getfixturevalue("registry_postgres_server")
        url = request.getfixturevalue("registry_postgres_url")
    async with on_postgres(postgres, url) as parts:
        yield parts


@pytest.fixture(params=["redis", "postgres"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    async with parts_on(request, own_server=False) as parts:
        yield parts


@pytest.fixture(params=["redis", "postgres"])
async def doomed(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    """Parts the test may take down with their server."""
    async with parts_on(request, own_server=True) as parts:
        yield parts


# -- the stats pool --------------------------------------------------------------------------


def replica_batches(replica: int, base: int) -> dict[RolloutKey, RolloutBatch]:
    """Something of everything: several slots and arms, failures, truncation, streams,
    token counts, fractional feedback values, shadow divergence, and another rollout."""
    batch = RolloutBatch()
    for offset in range(4):
        slot = base + offset
        for i in range(5 + offset + replica):
            stats = batch.arm(slot, "stable" if i % 3 else "canary")
            stats.add_call(
                failed=i % 7 == replica,
                duration=0.1 * (i + 1) * (replica + 1),
                ttft=0.03 * (i + 1) if i % 2 else None,
                output_tokens=100 + 17 * i,
                finish_reason="length" if i % 4 == 0 else "stop",
            )
            stats.add_feedback("rating", 0.1 * i - 0.35)
            stats.add_feedback("thumbs_up", float(i % 2))
        batch.arm(slot, "shadow").add_call(
            failed=False, duration=0.7, ttft=None, output_tokens=3, finish_reason="stop"
        )
    for i in range(6):
        text = (i + replica) / 10
        d = Divergence(text, text / 2, float(i % 2), None, 0.0)
        (batch.noise if i % 2 else batch.candidate).add(d)
    other = RolloutBatch()
    other.arm(base, "stable").add_call(
        failed=False, duration=1.0, ttft=None, output_tokens=1, finish_reason="stop"
    )
    return {(GREET, "r-1"): batch, (GREET, "r-0"): other}


def assert_same_arm(got: ArmStats, want: ArmStats) -> None:
    assert (got.requests, got.errors, got.finished, got.truncated) == (
        want.requests,
        want.errors,
        want.finished,
        want.truncated,
    )
    assert got.latency == want.latency
    assert got.ttft == want.ttft
    # Sums go through HINCRBYFLOAT or float8: equal up to the last bits.
    for mine, theirs in [(got.answer_tokens, want.answer_tokens)] + [
        (got.feedback[name], want.feedback[name]) for name in want.feedback
    ]:
        assert mine.n == theirs.n
        assert mine.total == pytest.approx(theirs.total, abs=1e-9)
        assert mine.squares == pytest.approx(theirs.squares, abs=1e-9)
    assert set(got.feedback) == set(want.feedback)


def assert_same_window(got: PooledWindow, want: PooledWindow) -> None:
    assert set(got.arms) == set(want.arms)
    for name, stats in want.arms.items():
        assert_same_arm(got.arms[name], stats)
    assert got.noise == want.noise
    assert got.candidate == want.candidate


async def test_the_pool_gives_the_same_window_as_the_memory_pool(shared: Shared) -> None:
    memory = MemoryStatsPool()
    replicas = [await shared.pool(0), await shared.pool(1)]
    base = int(time.time())
    # Two replicas flush twice each, interleaved; both count in the same slots.
    for round_ in range(2):
        for replica, pool in enumerate(replicas):
            await pool.add(replica_batches(replica, base + round_), keep_seconds=30)
            await memory.add(replica_batches(replica, base + round_), keep_seconds=30)

    for start, end in [(base, base + 5), (base + 1, base + 3), (base + 0.5, base + 2.9)]:
        want = await memory.read(GREET, "r-1", start, end)
        assert want.arm("stable").requests > 0
        for pool in replicas:  # either replica reads the same
            assert_same_window(await pool.read(GREET, "r-1", start, end), want)
    # Slots outside the window, and other rollouts, are not in it.
    outside = await replicas[0].read(GREET, "r-1", base - 10, base)
    assert outside.arms == {}
    assert outside.noise.total("text_distance") == 2 * 2 * 3  # divergence: cumulative
    assert_same_window(
        await replicas[1].read(GREET, "r-0", base, base + 5),
        await memory.read(GREET, "r-0", base, base + 5),
    )
    assert (await replicas[0].read(GREET, "r-9", base, base + 5)).arms == {}


async def test_the_pool_reads_buckets_as_the_memory_pool(shared: Shared) -> None:
    """The series route's read: the seconds of a range added up per step (second by second
    with step 1), the same as the memory pool's, and adding up to the window ``read``
    gives."""
    memory = MemoryStatsPool()
    replicas = [await shared.pool(0), await shared.pool(1)]
    base = int(time.time())
    for replica, pool in enumerate(replicas):
        await pool.add(replica_batches(replica, base), keep_seconds=30)
        await memory.add(replica_batches(replica, base), keep_seconds=30)

    for step, firsts in [(1, [0, 1, 2, 3]), (3, [0, 3]), (10, [0])]:
        want = await memory.read_buckets(GREET, "r-1", base, base + 10, step)
        assert sorted(want) == [base + first for first in firsts]
        for pool in replicas:
            got = await pool.read_buckets(GREET, "r-1", base, base + 10, step)
            assert sorted(got) == sorted(want)
            for bucket, arms in want.items():
                assert set(got[bucket]) == set(arms) == {"stable", "canary", "shadow"}
                for arm, stats in arms.items():
                    assert_same_arm(got[bucket][arm], stats)
    (whole,) = (await replicas[0].read_buckets(GREET, "r-1", base, base + 10, 10)).values()
    window = await replicas[1].read(GREET, "r-1", base, base + 10)
    for arm, stats in window.arms.items():
        assert_same_arm(whole[arm], stats)
    seconds = await replicas[0].read_buckets(GREET, "r-1", base, base + 10)
    for arm, total in merge_arms(seconds.values()).items():
        assert_same_arm(total, window.arms[arm])

    # [start, end), buckets from start, and only the arms asked for.
    canary = await replicas[1].read_buckets(GREET, "r-1", base + 1, base + 3, 1, {"canary"})
    assert sorted(canary) == [base + 1, base + 2]
    assert all(set(arms) == {"canary"} for arms in canary.values())
    assert canary[base + 1]["canary"].requests == seconds[base + 1]["canary"].requests
    shifted = await replicas[0].read_buckets(GREET, "r-1", base - 1, base + 10, 2)
    assert sorted(shifted) == [base - 1, base + 1, base + 3]
    assert shifted[base - 1]["stable"].requests == seconds[base]["stable"].requests
    assert await replicas[0].read_buckets(GREET, "r-1", base, base + 10, 1, {"rerun"}) == {}
    assert await replicas[0].read_buckets(GREET, "r-9", base, base + 10) == {}
    assert await replicas[0].read_buckets(GREET, "r-1", base + 5, base + 5) == {}


async def test_replicas_adding_at_once_lose_no_increment(shared: Shared) -> None:
    """Many flushes of the same seconds at once, from two replicas: every count arrives, and
    no two flushes deadlock."""
    replicas = [await shared.pool(0), await shared.pool(1)]
    base = int(time.time())

    def batch(reverse: bool) -> dict[RolloutKey, RolloutBatch]:
        b = RolloutBatch()
        slots = range(base, base + 5)
        for slot in reversed(slots) if reverse else slots:
            for arm in ("stable", "canary", "shadow"):
                b.arm(slot, arm).add_call(
                    failed=False, duration=0.2, ttft=None, output_tokens=10, finish_reason="stop"
                )
        return {(GREET, "r-1"): b, (OTHER, "r-1"): b}

    flushes = [replicas[i % 2].add(batch(i % 3 == 0), keep_seconds=30) for i in range(40)]
    await asyncio.gather(*flushes)

    window = await replicas[0].read(GREET, "r-1", base, base + 5)
    for arm in ("stable", "canary", "shadow"):
        assert window.arm(arm).requests == 40 * 5
        assert window.arm(arm).answer_tokens.total == 40 * 5 * 10


# -- the lease -------------------------------------------------------------------------------


async def test_exactly_one_replica_holds_the_lease(shared: Shared) -> None:
    a = await shared.lease(0, "replica-a", 5)
    b = await shared.lease(1, "replica-b", 5)

    results = await asyncio.gather(*(lease.hold(GREET) for lease in (a, b, a, b) * 5))

    winner = "replica-a" if results[0] else "replica-b"
    assert results == [results[0], not results[0]] * 10
    assert await a.holder(GREET) == await b.holder(GREET) == winner
    # Leases are per slug.
    assert await b.hold(OTHER) is True
    assert await a.hold(OTHER) is False
    assert await a.holder(NOTHING) is None


async def test_another_replica_takes_over_when_the_holder_stops_renewing(shared: Shared) -> None:
    a = await shared.lease(0, "replica-a", 2)
    b = await shared.lease(1, "replica-b", 2)
    assert await a.hold(GREET)
    # While a renews, b never gets it, even past the lease length.
    started = time.monotonic()
    while True:
        assert not await b.hold(GREET)
        assert await a.hold(GREET)
        stopped = time.monotonic()  # the last renewal, if a stops now
        if stopped - started > 2.2:
            break  # a stops renewing (killed, partitioned)
        await asyncio.sleep(0.2)

    while not await b.hold(GREET):
        assert time.monotonic() - stopped < 3.0, "no takeover"
        await asyncio.sleep(0.05)
    took = time.monotonic() - stopped

    assert 1.9 < took < 2.5
    assert await a.holder(GREET) == "replica-b"
    assert not await a.hold(GREET)  # the old holder, back, does not take it back


async def test_release_hands_over_at_once_and_only_the_holder_can_release(
    shared: Shared,
) -> None:
    a = await shared.lease(0, "replica-a", 30)
    b = await shared.lease(1, "replica-b", 30)
    assert await a.hold(GREET)

    await b.release(GREET)  # not b's to give up
    assert await a.holder(GREET) == "replica-a"
    assert not await b.hold(GREET)

    await a.release(GREET)
    assert await b.holder(GREET) is None
    assert await b.hold(GREET)
    assert await a.holder(GREET) == "replica-b"


# -- the state store -------------------------------------------------------------------------


def verdict(rollout_id: str, n: int) -> dict[str, Any]:
    return {"rollout_id": rollout_id, "verdict": "pass", "at": 1000.0 + n, "n": n}


async def test_state_is_shared_and_verdicts_are_newest_first_capped(shared: Shared) -> None:
    mine, theirs = await shared.state(0), await shared.state(1)
    assert await theirs.load(GREET) == (None, [])
    state = AnalysisState("r-1", failures=0, step_started_at=1000.25, next_at=1060.5)
    await mine.save(GREET, state)
    assert await theirs.load(GREET) == (state, [])

    for n in range(MAX_VERDICTS + 5):
        state.failures = n
        await (mine if n % 2 else theirs).save(GREET, state, verdict("r-1", n))

    loaded, verdicts = await theirs.load(GREET)
    assert loaded == AnalysisState("r-1", MAX_VERDICTS + 4, 1000.25, 1060.5)
    assert MAX_VERDICTS == 20
    assert [v["n"] for v in verdicts] == list(range(MAX_VERDICTS + 4, 4, -1))
    # Saving the state alone keeps the verdicts.
    state.next_at = 2000.0
    await mine.save(GREET, state)
    assert len((await theirs.load(GREET))[1]) == MAX_VERDICTS
    # Other slugs are apart.
    assert await mine.load(OTHER) == (None, [])


async def test_a_new_rollout_starts_a_fresh_verdict_list(shared: Shared) -> None:
    store = await shared.state(0)
    old = AnalysisState("r-1", failures=2, step_started_at=1000.0, next_at=1010.0)
    for n in range(3):
        await store.save(GREET, old, verdict("r-1", n))

    new = AnalysisState("r-2", failures=0, step_started_at=2000.0, next_at=2010.0)
    await store.save(GREET, new)
    assert await store.load(GREET) == (new, [])

    await store.save(GREET, new, verdict("r-2", 7))
    state, verdicts = await (await shared.state(1)).load(GREET)
    assert state == new
    assert verdicts == [verdict("r-2", 7)]


# -- as the analysers see it -----------------------------------------------------------------


def analysed_rollout(interval: float) -> RegistrySnapshot:
    """A rollout with a policy whose first verdict is ``interval`` away: the analysers only
    take, renew and release the lease, so no registry is needed."""
    now = time.time()
    analysed = dataclasses.replace(
        rollout(1000, rid="r-1"),
        key=GREET,
        started_at=now,
        updated_at=now,
        analysis=AnalysisPolicy(interval=interval, min_samples=10),
    )
    return RegistrySnapshot(revision=1, versions={}, prod={}, rollouts={GREET: analysed})


class Replica:
    def __init__(self, analyser: Analyser, metrics: ProxyMetrics) -> None:
        self.analyser = analyser
        self.metrics = metrics

    @property
    def leads(self) -> bool:
        labels = {"slug": "greet"}
        value = self.metrics.registry.get_sample_value("promptproxy_analysis_leader", labels)
        return value == 1.0


async def replica(
    shared: Shared, index: int, name: str, seconds: float, interval: float = 3600
) -> Replica:
    snapshot = analysed_rollout(interval)
    metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
    analyser = Analyser(
        config=AnalysisConfig(lease_seconds=seconds),
        snapshot=lambda: snapshot,
        registry=cast(RegistryService, None),  # never reached: no verdict is due
        recorder=WindowRecorder(time.time),
        pool=await shared.pool(index),
        lease=await shared.lease(index, name, seconds),
        state=await shared.state(index),
        metrics=metrics,
    )
    return Replica(analyser, metrics)


async def tick_until(
    ticking: list[Replica], done: Callable[[], bool], limit: float
) -> tuple[float, list[list[bool]]]:
    """Ticks every replica in ``ticking`` at the analyser's pace (0.5 s) until ``done``;
    how long it took, and who led at each tick."""
    started = time.monotonic()
    samples: list[list[bool]] = []
    while True:
        for r in ticking:
            await r.analyser.tick()
        samples.append([r.leads for r in ticking])
        if done():
            return time.monotonic() - started, samples
        assert time.monotonic() - started < limit, "not within the limit"
        await asyncio.sleep(TICK_SECONDS)


async def test_a_vanished_holder_is_replaced_after_the_lease_and_a_stopping_one_at_once(
    shared: Shared,
) -> None:
    seconds = 2.0
    a = await replica(shared, 0, "a", seconds)
    b = await replica(shared, 1, "b", seconds)
    for r in (a, b):
        await r.analyser.tick()
    holder, survivor = (a, b) if a.leads else (b, a)
    assert holder.leads != survivor.leads
    for _ in range(6):  # both tick past the lease length: the holder keeps it
        for r in (a, b):
            await r.analyser.tick()
        assert holder.leads
        assert not survivor.leads
        await asyncio.sleep(TICK_SECONDS)

    # The holder vanishes (killed, frozen): it stops ticking; the survivor takes over once
    # the lease has run out since the holder's last renewal.
    took, samples = await tick_until([survivor], lambda: survivor.leads, seconds + 2)
    assert seconds - TICK_SECONDS - 0.2 < took < seconds + 1.0
    assert [s[0] for s in samples] == [False] * (len(samples) - 1) + [True]

    # A newcomer joins; the survivor stops gracefully (SIGTERM: close releases the lease),
    # and the newcomer leads at its next tick.
    newcomer = await replica(shared, 0, "c", seconds)
    for r in (survivor, newcomer):
        await r.analyser.tick()
    assert survivor.leads
    assert not newcomer.leads
    await survivor.analyser.close()
    took, _ = await tick_until([newcomer], lambda: newcomer.leads, seconds)
    assert took < 1.0
    # The vanished holder, back (thawed), finds the lease taken.
    await holder.analyser.tick()
    assert not holder.leads
    assert newcomer.leads


async def test_the_leader_gauge_counts_each_rollout_of_a_slug(shared: Shared) -> None:
    """A slug's base and its tier's override roll out apart, each under its own lease: the
    gauge counts both, and goes only when the last ends (it once went with the first)."""
    now = time.time()
    policy = AnalysisPolicy(interval=3600, min_samples=10)
    tiered = PromptKey("greet", layer=Layer("tier", "pro"))
    both = {
        key: dataclasses.replace(
            rollout(1000, rid=rid), key=key, started_at=now, updated_at=now, analysis=policy
        )
        for key, rid in ((GREET, "r-base"), (tiered, "r-tier"))
    }
    shown = [RegistrySnapshot(revision=1, versions={}, prod={}, rollouts=both)]
    metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
    analyser = Analyser(
        config=AnalysisConfig(lease_seconds=5),
        snapshot=lambda: shown[0],
        registry=cast(RegistryService, None),  # never reached: no verdict is due
        recorder=WindowRecorder(time.time),
        pool=await shared.pool(0),
        lease=await shared.lease(0, "a", 5),
        state=await shared.state(0),
        metrics=metrics,
    )

    def leader() -> float | None:
        gauge = "promptproxy_analysis_leader"
        return metrics.registry.get_sample_value(gauge, {"slug": "greet"})

    await analyser.tick()
    assert leader() == 2
    shown[0] = dataclasses.replace(shown[0], rollouts={tiered: both[tiered]})
    await analyser.tick()
    assert leader() == 1  # the override's rollout is still led
    shown[0] = dataclasses.replace(shown[0], rollouts={})
    await analyser.tick()
    assert leader() is None
    await analyser.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_lasting_outage_is_logged_at_error_level(doomed: Shared) -> None:
    one = await replica(doomed, 0, "replica-a", 5, interval=60)
    logger = logging.getLogger(APP_LOGGER)
    records = Records()
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        await one.analyser.tick()
        assert not [r for r in records.records if r.levelno >= logging.WARNING]
        doomed.down()
        started = time.monotonic()
        for _ in range(8):  # four seconds of outage at the analyser's pace
            await one.analyser.tick()
        # Each tick gives up within the lease call's deadline, never hangs.
        assert time.monotonic() - started < 8 * (0.5 + 1.0)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)

    warnings = [r for r in records.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 8  # one failed lease renewal per tick
    # "Store errors tolerated in a row before the analyser logs at error level": 3.
    assert [r.levelno for r in warnings][3:] == [logging.ERROR] * 5
