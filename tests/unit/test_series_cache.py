"""The series route's cache of settled buckets (proxy/analysis/series_cache.py): a chart
drawn through it is the chart drawn from the pool alone, while replicas flush late; a
bucket is kept only once settled; refreshes read only the tail; it stays bounded."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Collection
from typing import Any

import pytest

from proxy.analysis.pool import MemoryStatsPool
from proxy.analysis.series import KNOWN_ARMS, SERIES_SECONDS, Span, bucket, span
from proxy.analysis.series_cache import SeriesCache, settle_seconds
from proxy.analysis.window import ArmStats, RolloutBatch
from proxy.prompt_key import PromptKey

KEY = PromptKey("support")
ARMS = ["stable", "canary"]
#: A replica's default flush period (analysis.flush_seconds).
FLUSH = 2.0
T0 = 1_796_000_000


class Recording:
    """A pool that notes each read's range."""

    def __init__(self, pool: MemoryStatsPool) -> None:
        self.pool = pool
        self.reads: list[tuple[int, int, int]] = []

    async def read_buckets(
        self,
        key: PromptKey,
        rollout_id: str,
        start: int,
        end: int,
        step: int = 1,
        arms: Collection[str] | None = None,
    ) -> dict[int, dict[str, ArmStats]]:
        self.reads.append((start, end, step))
        return await self.pool.read_buckets(key, rollout_id, start, end, step, arms)


def batch(slot: int, arm: str, n: int, *, failed: int = 0, duration: float = 0.2) -> RolloutBatch:
    out = RolloutBatch()
    for i in range(n):
        out.arm(slot, arm).add_call(
            failed=i < failed,
            duration=duration,
            ttft=None,
            output_tokens=10 + i,
            finish_reason="stop",
        )
    return out


async def add(pool: MemoryStatsPool, part: RolloutBatch, rollout: str = "r1") -> None:
    await pool.add({(KEY, rollout): part}, keep_seconds=SERIES_SECONDS)


async def charts(
    pool: MemoryStatsPool, cache: SeriesCache, now: float, since: int, step: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same chart drawn through the cache and straight from the pool."""
    cut = span(now, since, step)
    cached = await cache.read(pool, KEY, "r1", cut, now)
    direct = await pool.read_buckets(KEY, "r1", cut.start, cut.end, cut.step, KNOWN_ARMS)
    return bucket(cached, ARMS, cut), bucket(direct, ARMS, cut)


def settled(cut: Span, now: float) -> int:
    return sum(1 for at in cut.points if at + cut.step <= now - settle_seconds(FLUSH))


async def test_a_chart_through_the_cache_is_the_chart_from_the_pool() -> None:
    """Three replicas count requests each second and flush every 2 s, each at its own
    phase, one of them often one or two periods late (slow flushes); charts of several steps are
    read every 5 s for 20 minutes, past the pool's retention."""
    rng = random.Random(7)
    pool = MemoryStatsPool(clock=lambda: now)
    cache = SeriesCache(settle_seconds(FLUSH))
    pending: list[list[RolloutBatch]] = [[], [], []]
    now = float(T0)
    compared = 0
    for tick in range(20 * 60):
        now = T0 + tick + 0.5
        if tick % 5 == 0 and tick >= 30:  # before this second's flushes
            for since, step in ((900, 15), (60, 1), (300, 7), (900, 60)):
                through, straight = await charts(pool, cache, now, since, step)
                assert through == straight, (tick, since, step)
                compared += 1
        for replica, waiting in enumerate(pending):
            arm = ARMS[rng.random() < 0.3]
            waiting.append(batch(int(now), arm, rng.randint(0, 9), failed=rng.randint(0, 1)))
            # The third replica's flushes are often slow: up to two periods late.
            late = replica == 2 and rng.random() < 0.7 and len(waiting) <= 2 * FLUSH
            if (tick + replica) % int(FLUSH) == 0 and not late:
                for part in waiting:
                    await add(pool, part)
                waiting.clear()
    assert compared > 900
    assert cache.buckets > 0  # it did keep buckets: the comparison was not of two pool reads


async def test_a_bucket_is_not_kept_before_it_is_settled() -> None:
    """A replica flushes a second late (within the settle margin): the next read shows
    it, though the second was old enough to look done."""
    pool = MemoryStatsPool(clock=lambda: now)
    cache = SeriesCache(settle_seconds(FLUSH))
    now = T0 + 100.2
    for slot in range(T0, T0 + 101):
        await add(pool, batch(slot, "stable", 2))
    old = int(now) - int(settle_seconds(FLUSH)) + 1  # 5 s ago: unsettled still
    first, _ = await charts(pool, cache, now, 60, 1)
    await add(pool, batch(old, "canary", 3, failed=1))  # the late replica's flush
    now += 0.5
    through, straight = await charts(pool, cache, now, 60, 1)
    assert through == straight
    point = next(p for p in through if p["at"] == old)
    assert (point["arms"]["canary"]["requests"], point["arms"]["canary"]["errors"]) == (3, 1)
    assert next(p for p in first if p["at"] == old)["arms"]["canary"]["requests"] == 0


async def test_a_refresh_reads_only_the_unsettled_tail() -> None:
    pool = MemoryStatsPool(clock=lambda: now)
    recording = Recording(pool)
    cache = SeriesCache(settle_seconds(FLUSH))
    now = T0 + 1000.0
    for slot in range(T0, T0 + 1001):
        await add(pool, batch(slot, "stable", 1))
    cut = span(now, 900, 15)
    await cache.read(recording, KEY, "r1", cut, now)  # type: ignore[arg-type]
    assert recording.reads == [(cut.start, cut.end, 15)]  # the first: everything, once
    now += 5
    later = span(now, 900, 15)
    read = await cache.read(recording, KEY, "r1", later, now)  # type: ignore[arg-type]
    start, end, step = recording.reads[-1]
    assert (end, step) == (later.end, 15)
    # Only the buckets not settled when the first read was taken, and the new ones.
    assert (later.end - start) // step <= len(later.points) - settled(cut, now - 5) + 1
    assert start > later.start
    assert sum(a.requests for arms in read.values() for a in arms.values()) == sum(
        1 for s in range(later.start, later.end) if T0 <= s <= T0 + 1000
    )


async def test_the_cache_stays_bounded_whatever_steps_are_asked() -> None:
    pool = MemoryStatsPool(clock=lambda: now)
    cache = SeriesCache(settle_seconds(FLUSH), max_buckets=500)
    now = T0 + 1000.0
    for slot in range(T0, T0 + 1001):
        await add(pool, batch(slot, "stable", 1))
        await add(pool, batch(slot, "canary", 1), rollout="r2")
    for step in range(1, 120):
        through, straight = await charts(pool, cache, now, 900, step)
        assert through == straight
        assert cache.buckets <= 500
    # One series larger than the bound is cut to it, and still answers right.
    through, straight = await charts(pool, cache, now, 900, 1)
    assert through == straight
    assert cache.buckets == 500


async def test_buckets_older_than_a_chart_reaches_are_dropped() -> None:
    """A rollout that ended is charted until its counts are as old as the pool keeps
    them; then what the cache kept of it goes too."""
    pool = MemoryStatsPool(clock=lambda: now)
    cache = SeriesCache(settle_seconds(FLUSH))
    now = T0 + 100.0
    for slot in range(T0, T0 + 101):
        await add(pool, batch(slot, "stable", 1))
    await charts(pool, cache, now, 900, 15)
    kept = cache.buckets
    assert kept > 0
    now += SERIES_SECONDS + 120  # the rollout ended; nothing new came
    await cache.read(pool, KEY, "other", span(now, 60, 1), now)
    assert cache.buckets < kept
    assert cache.buckets == 60 - int(settle_seconds(FLUSH)) - 1  # the other's settled ones


class Flaky(Recording):
    """A pool whose store goes down and comes back."""

    down = False

    async def read_buckets(self, *args: Any, **kwargs: Any) -> dict[int, dict[str, ArmStats]]:
        if self.down:
            raise ConnectionError("Connection refused")
        return await super().read_buckets(*args, **kwargs)


async def test_what_replicas_kept_through_a_store_outage_shows_after_it() -> None:
    """The store was down: replicas kept their counts and flush them on their next flush
    after it is back, into seconds old enough to look settled. A read between the store's
    return and that flush keeps none of them."""
    pool = MemoryStatsPool(clock=lambda: now)
    flaky = Flaky(pool)
    cache = SeriesCache(settle_seconds(FLUSH))
    now = T0 + 100.2
    for slot in range(T0, T0 + 101):
        await add(pool, batch(slot, "stable", 1))
    cut = span(now, 60, 1)
    flaky.down = True
    with pytest.raises(ConnectionError):
        await cache.read(flaky, KEY, "r1", cut, now)  # type: ignore[arg-type]
    flaky.down = False
    now += 30  # the store is back; another replica's 30 s are not in it yet
    through = await cache.read(flaky, KEY, "r1", span(now, 60, 1), now)  # type: ignore[arg-type]
    assert sum(a.requests for arms in through.values() for a in arms.values()) == 30
    for slot in range(T0 + 101, T0 + 131):  # its next flush
        await add(pool, batch(slot, "canary", 2))
    now += FLUSH
    through_, straight = await charts(pool, cache, now, 60, 1)
    assert through_ == straight
    assert sum(p["arms"]["canary"]["requests"] for p in through_) == 60


async def test_a_kept_point_costs_what_docs_operations_says() -> None:
    """docs/operations.md, "Memory": 2.3-3.2 KiB per point of two arms at 100 requests/s;
    this fails at twice that."""
    rng = random.Random(3)
    pool = MemoryStatsPool(clock=lambda: now)
    now = T0 + 1000.0
    part = RolloutBatch()
    for slot in range(T0, T0 + 1001):
        for i in range(100):
            part.arm(slot, ARMS[i % 2]).add_call(
                failed=i % 50 == 0,
                duration=rng.lognormvariate(-1.2, 0.5),
                ttft=None,
                output_tokens=200,
                finish_reason="stop",
            )
    await add(pool, part)
    cache = SeriesCache(settle_seconds(FLUSH))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        await cache.read(pool, KEY, "r1", span(now, 900, 15), now)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert cache.buckets >= 55
    assert grown / cache.buckets < 2 * 3.2 * 1024
