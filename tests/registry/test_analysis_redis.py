"""The analysis parts that replicas share through Redis, on a private redis-server: the
stats pool adds up what every replica flushes (the same window as the in-memory pool), the
lease has exactly one holder and passes on when its holder stops renewing or lets go, and
the analysis state with its last verdicts survives for whoever holds the lease next."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.analysis.analyser import Analyser
from proxy.analysis.lease import RedisLease
from proxy.analysis.pool import MemoryStatsPool, PooledWindow, RedisStatsPool
from proxy.analysis.state import MAX_VERDICTS, AnalysisState, RedisStateStore
from proxy.analysis.window import ArmStats, RolloutBatch, RolloutKey, WindowRecorder
from proxy.config import AnalysisConfig
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.models import RegistrySnapshot, Rollout, RolloutMode, Status, StickyKey
from proxy.registry.service import RegistryService
from proxy.shadow.compare import Divergence
from tests.redis_server import RedisServer

GREET = PromptKey("greet")
OTHER = PromptKey("other")
NOTHING = PromptKey("nothing")


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[list[Redis]]:
    """One client per simulated replica."""
    opened = [Redis.from_url(redis_server.url) for _ in range(2)]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


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
    # Sums go through HINCRBYFLOAT: equal up to the last bits.
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


async def test_the_redis_pool_gives_the_same_window_as_the_memory_pool(
    clients: list[Redis], prefix: str
) -> None:
    memory = MemoryStatsPool()
    replicas = [RedisStatsPool(client, prefix) for client in clients]
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


async def test_pool_keys_honour_the_prefix_and_expire(clients: list[Redis], prefix: str) -> None:
    pool = RedisStatsPool(clients[0], prefix)
    await pool.add(replica_batches(0, int(time.time())), keep_seconds=30)

    keys = [k.decode() async for k in clients[0].scan_iter(match=f"{prefix}*")]
    assert len(keys) == 4 + 1 + 1  # four slots, r-0's slot, r-1's divergence
    for key in keys:
        ttl = await clients[0].ttl(key)
        assert 0 < ttl <= 86_400, key
        if ":w:" in key:
            assert ttl <= 30 + 120  # the window, plus the grace
    assert not [k async for k in clients[0].scan_iter(match="promptproxy:*")]


# -- the lease -------------------------------------------------------------------------------


async def test_exactly_one_replica_holds_the_lease(clients: list[Redis], prefix: str) -> None:
    a = RedisLease(clients[0], prefix, "replica-a", 5)
    b = RedisLease(clients[1], prefix, "replica-b", 5)

    results = await asyncio.gather(*(lease.hold(GREET) for lease in (a, b, a, b) * 5))

    winner = "replica-a" if results[0] else "replica-b"
    assert results == [results[0], not results[0]] * 10
    assert await a.holder(GREET) == await b.holder(GREET) == winner
    # Leases are per slug.
    assert await b.hold(OTHER) is True
    assert await a.hold(OTHER) is False
    assert await a.holder(NOTHING) is None


async def test_another_replica_takes_over_when_the_holder_stops_renewing(
    clients: list[Redis], prefix: str
) -> None:
    a = RedisLease(clients[0], prefix, "replica-a", 2)
    b = RedisLease(clients[1], prefix, "replica-b", 2)
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
    clients: list[Redis], prefix: str
) -> None:
    a = RedisLease(clients[0], prefix, "replica-a", 30)
    b = RedisLease(clients[1], prefix, "replica-b", 30)
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


async def test_state_is_shared_and_verdicts_are_newest_first_capped(
    clients: list[Redis], prefix: str
) -> None:
    mine, theirs = (RedisStateStore(client, prefix) for client in clients)
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
    assert await clients[0].llen(f"{prefix}{{analysis}}:verdicts:greet") == MAX_VERDICTS
    # Saving the state alone keeps the verdicts.
    state.next_at = 2000.0
    await mine.save(GREET, state)
    assert len((await theirs.load(GREET))[1]) == MAX_VERDICTS
    # Other slugs are apart.
    assert await mine.load(OTHER) == (None, [])
    for key in (f"{prefix}{{analysis}}:state:greet", f"{prefix}{{analysis}}:verdicts:greet"):
        assert 0 < await clients[0].ttl(key) <= 7 * 86_400


async def test_a_new_rollout_starts_a_fresh_verdict_list(clients: list[Redis], prefix: str) -> None:
    store = RedisStateStore(clients[0], prefix)
    old = AnalysisState("r-1", failures=2, step_started_at=1000.0, next_at=1010.0)
    for n in range(3):
        await store.save(GREET, old, verdict("r-1", n))

    new = AnalysisState("r-2", failures=0, step_started_at=2000.0, next_at=2010.0)
    await store.save(GREET, new)
    assert await store.load(GREET) == (new, [])

    await store.save(GREET, new, verdict("r-2", 7))
    state, verdicts = await RedisStateStore(clients[1], prefix).load(GREET)
    assert state == new
    assert verdicts == [verdict("r-2", 7)]


# -- a Redis outage, as the analyser sees it -------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_lasting_redis_outage_is_logged_at_error_level(
    fresh_redis_server: RedisServer, prefix: str
) -> None:
    client = Redis.from_url(fresh_redis_server.url, socket_connect_timeout=0.2)
    policy = AnalysisPolicy(interval=60, min_samples=10)
    now = time.time()
    rollout = Rollout(
        key=GREET,
        id="r-1",
        candidate=2,
        mode=RolloutMode.CANARY,
        basis_points=1000,
        sticky=StickyKey.parse("none"),
        started_at=now,
        updated_at=now,
        actor="alice",
        restore_status=Status.DRAFT,
        analysis=policy,
    )
    snapshot = RegistrySnapshot(revision=1, versions={}, prod={}, rollouts={GREET: rollout})
    analyser = Analyser(
        config=AnalysisConfig(),
        snapshot=lambda: snapshot,
        registry=cast(RegistryService, None),  # never reached: no verdict is due
        recorder=WindowRecorder(time.time),
        pool=RedisStatsPool(client, prefix),
        lease=RedisLease(client, prefix, "replica-a", 5),
        state=RedisStateStore(client, prefix),
        metrics=ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"]),
    )
    logger = logging.getLogger(APP_LOGGER)
    records = Records()
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        await analyser.tick()
        assert not [r for r in records.records if r.levelno >= logging.WARNING]
        fresh_redis_server.kill()
        for _ in range(8):  # four seconds of outage at the analyser's pace
            await analyser.tick()
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        await client.aclose()

    warnings = [r for r in records.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 8  # one failed lease renewal per tick
    # "Store errors tolerated in a row before the analyser logs at error level": 3.
    assert [r.levelno for r in warnings][3:] == [logging.ERROR] * 5
