"""RedisPairSink on a private redis-server: capped streams per slug, shared by replicas,
and a Redis outage that costs dropped (counted) pairs, never a blocked or failed caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.config import ShadowSinkConfig
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta, SinkUnavailable
from proxy.shadow.sink_redis import RedisPairSink
from tests.redis_server import RedisServer, running_redis

PREFIX = "test:"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


def pair(n: int, ts: float, slug: str = "support") -> Pair:
    meta = PairMeta(
        f"p{n}", PromptKey(slug), "ro", ShadowKind.CANDIDATE.value, f"r{n}", Route.CHAT.value, True
    )
    return Pair.build(meta, ArmResult(version=1, text="a"), ArmResult(version=2, text="b"), ts)


class Sink:
    def __init__(self, url: str, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.sink = RedisPairSink(
            url, PREFIX, ShadowSinkConfig.model_validate(config), ShadowMetrics(self.registry)
        )

    def count(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        return self.registry.get_sample_value("promptproxy_shadow_pairs_total", labels) or 0.0


@pytest.fixture
async def make_sink(redis_server: RedisServer) -> AsyncIterator[Callable[..., Sink]]:
    made: list[Sink] = []

    def make(**config: Any) -> Sink:
        made.append(Sink(redis_server.url, **config))
        return made[-1]

    yield make
    for sink in made:
        await sink.sink.close()


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(1500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 15 s")


async def test_pairs_go_to_one_stream_per_slug_and_read_back_oldest_first(
    redis_server: RedisServer, make_sink: Callable[..., Sink]
) -> None:
    s = make_sink()
    for n in range(10):
        s.sink.add(pair(n, 1000.0 + n, slug="support" if n < 8 else "billing"))
    await eventually(lambda: s.count("written") == 10)
    got = await s.sink.read(PromptKey("support"), None, 100)
    assert [p["pair_id"] for p in got] == [f"p{n}" for n in range(8)]
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("billing"), None, 100)] == [
        "p8",
        "p9",
    ]
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("support"), None, 3)] == [
        "p5",
        "p6",
        "p7",
    ]
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("support"), 1002.0, 2)] == [
        "p2",
        "p3",
    ]
    assert await s.sink.read(PromptKey("nobody"), None, 10) == []

    client = Redis.from_url(redis_server.url)
    try:
        assert await client.xlen(f"{PREFIX}{{shadow}}:pairs:support") == 8
    finally:
        await client.aclose()


async def test_each_stream_is_capped(
    redis_server: RedisServer, make_sink: Callable[..., Sink]
) -> None:
    s = make_sink(redis_max_entries=100)
    for n in range(1500):
        s.sink.add(pair(n, 1000.0 + n))
    await eventually(lambda: s.count("written") == 1500)
    client = Redis.from_url(redis_server.url)
    try:
        length = await client.xlen(f"{PREFIX}{{shadow}}:pairs:support")
    finally:
        await client.aclose()
    # MAXLEN ~ trims whole stream nodes, so a little above the cap, never the whole history.
    assert 100 <= length < 300
    newest = await s.sink.read(PromptKey("support"), None, 5)
    assert [p["pair_id"] for p in newest] == [f"p{n}" for n in range(1495, 1500)]


async def test_replicas_share_one_view_and_follow_sees_new_pairs(
    make_sink: Callable[..., Sink],
) -> None:
    here, there = make_sink(), make_sink()
    for n in range(3):
        here.sink.add(pair(n, 1000.0 + n))
    await eventually(lambda: here.count("written") == 3)
    seen: list[str] = []

    async def watch() -> None:
        async for record in here.sink.follow(PromptKey("support"), 1001.0):
            seen.append(record["pair_id"])

    watcher = asyncio.create_task(watch())
    try:
        await eventually(lambda: seen == ["p1", "p2"])
        there.sink.add(pair(3, 1003.0))  # written by another replica
        there.sink.add(pair(4, 1004.0, slug="billing"))
        await eventually(lambda: seen == ["p1", "p2", "p3"])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_follow_without_since_starts_at_the_end(make_sink: Callable[..., Sink]) -> None:
    s = make_sink()
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)
    seen: list[str] = []

    async def watch() -> None:
        async for record in s.sink.follow(PromptKey("support"), None):
            seen.append(record["pair_id"])

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)
        s.sink.add(pair(1, 1001.0))
        await eventually(lambda: seen == ["p1"])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_redis_killed_drops_and_counts_then_recovers(
    redis_server: RedisServer, make_sink: Callable[..., Sink]
) -> None:
    s = make_sink()
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)

    redis_server.kill()
    for n in range(1, 21):
        s.sink.add(pair(n, 1000.0 + n))  # returns at once; nothing raises into the caller
    await eventually(lambda: s.count("sink_dropped") == 20)
    with pytest.raises(SinkUnavailable):
        await s.sink.read(PromptKey("support"), None, 10)

    redis_server.start()  # an empty server at the same address
    for n in range(21, 26):
        s.sink.add(pair(n, 1000.0 + n))
    await eventually(lambda: s.count("written") == 6)
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("support"), None, 10)] == [
        f"p{n}" for n in range(21, 26)
    ]


async def test_a_full_queue_drops_instead_of_growing(
    redis_server: RedisServer, make_sink: Callable[..., Sink]
) -> None:
    s = make_sink(queue_size=10)
    redis_server.pause()  # accepts connections, answers nothing: writes hang until timeout
    try:
        for n in range(100):
            s.sink.add(pair(n, 1000.0 + n))
        assert s.sink.pending <= 10
        assert s.count("sink_dropped") >= 90 - 1  # the writer may hold one batch
    finally:
        redis_server.resume()


async def test_close_flushes_what_is_queued(make_sink: Callable[..., Sink]) -> None:
    s = make_sink()
    for n in range(50):
        s.sink.add(pair(n, 1000.0 + n))
    await s.sink.close()
    assert s.count("written") == 50
    s.sink.add(pair(99, 2000.0))
    assert s.count("sink_dropped") == 1
