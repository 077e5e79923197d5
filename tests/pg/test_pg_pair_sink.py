"""PostgresPairSink on a private server (twin of test_shadow_sink_redis.py): pairs per slug,
capped, shared by replicas, followed live; an outage costs dropped (counted) pairs, never a
blocked or failed caller, and reads fail fast with SinkUnavailable."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from proxy.config import ShadowSinkConfig
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pairs import SinkUnavailable
from proxy.shadow.sink_postgres import PostgresPairSink
from tests.component.test_shadow_sink_redis import eventually, pair
from tests.pg.pg_parts import crash, frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")

DEFAULTS = ShadowSinkConfig()


@dataclass
class Sink:
    sink: PostgresPairSink
    registry: CollectorRegistry

    def count(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        return self.registry.get_sample_value("promptproxy_shadow_pairs_total", labels) or 0.0


MakeSink = Callable[..., Awaitable[Sink]]


@dataclass
class Backend:
    server: PostgresServer
    pools: list[AsyncConnectionPool]
    schema: str

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        async with self.pools[0].connection() as conn:
            cur = await conn.execute(query.encode())
            return await cur.fetchall()


async def _backend(server: PostgresServer) -> AsyncIterator[Backend]:
    schema = new_schema()
    async with replica_pools(server.new_database(), schema=schema) as pools:
        yield Backend(server, pools, schema)


@pytest.fixture
async def backend(postgres_server: PostgresServer) -> AsyncIterator[Backend]:
    async for opened in _backend(postgres_server):
        yield opened


@pytest.fixture
async def fault_backend(fresh_postgres_server: PostgresServer) -> AsyncIterator[Backend]:
    """On a server of its own, which the test stops, kills or freezes."""
    async for opened in _backend(fresh_postgres_server):
        yield opened


def sink_maker(backend: Backend, made: list[Sink]) -> MakeSink:
    async def make(replica: int = 0, **config: Any) -> Sink:
        registry = CollectorRegistry()
        sink = PostgresPairSink(
            backend.pools[replica],
            schema=backend.schema,
            max_entries=config.get("max_entries", DEFAULTS.max_entries),
            queue_size=config.get("queue_size", DEFAULTS.queue_size),
            metrics=ShadowMetrics(registry),
            op_timeout=1.0,
        )
        made.append(Sink(sink, registry))
        return made[-1]

    return make


@pytest.fixture
async def make_sink(backend: Backend) -> AsyncIterator[MakeSink]:
    made: list[Sink] = []
    yield sink_maker(backend, made)
    for s in made:
        await s.sink.close()


@pytest.fixture
async def make_fault_sink(fault_backend: Backend) -> AsyncIterator[MakeSink]:
    made: list[Sink] = []
    yield sink_maker(fault_backend, made)
    for s in made:
        await s.sink.close()


async def test_pairs_go_to_their_slug_and_read_back_oldest_first(
    backend: Backend, make_sink: MakeSink
) -> None:
    s = await make_sink()
    for n in range(10):
        s.sink.add(pair(n, 1000.0 + n, slug="support" if n < 8 else "billing"))
    await eventually(lambda: s.count("written") == 10)
    got = await s.sink.read(PromptKey("support"), None, 100)
    assert [p["pair_id"] for p in got] == [f"p{n}" for n in range(8)]
    assert got[0] == pair(0, 1000.0).to_dict()  # the record as written, key order kept
    assert list(got[0]) == list(pair(0, 1000.0).to_dict())
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
    assert await backend.rows(
        "SELECT slug, count(*) FROM shadow_pairs GROUP BY slug ORDER BY slug"
    ) == [("billing", 2), ("support", 8)]


async def test_reads_of_one_rollout_count_only_its_pairs(make_sink: MakeSink) -> None:
    s = await make_sink()
    for n in range(12):
        p = pair(n, 1000.0 + n)
        s.sink.add(p if n % 3 else dataclasses.replace(p, rollout_id="other"))
    await eventually(lambda: s.count("written") == 12)
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("support"), None, 3, "other")] == [
        "p3",
        "p6",
        "p9",
    ]
    assert [p["pair_id"] for p in await s.sink.read(PromptKey("support"), 1001.0, 2, "other")] == [
        "p3",
        "p6",
    ]
    assert len(await s.sink.read(PromptKey("support"), None, 100, "ro")) == 8


async def test_each_slug_is_capped_oldest_dropped(backend: Backend, make_sink: MakeSink) -> None:
    s = await make_sink(max_entries=100)
    for n in range(1500):
        s.sink.add(pair(n, 1000.0 + n))
    s.sink.add(pair(9999, 5000.0, slug="billing"))
    await eventually(lambda: s.count("written") == 1501)
    # Exactly the cap (Redis' MAXLEN ~ keeps a little more): the newest 100.
    assert await backend.rows(
        "SELECT slug, count(*), min(n), max(n) FROM shadow_pairs GROUP BY slug ORDER BY slug"
    ) == [("billing", 1, 1, 1), ("support", 100, 1401, 1500)]
    newest = await s.sink.read(PromptKey("support"), None, 5)
    assert [p["pair_id"] for p in newest] == [f"p{n}" for n in range(1495, 1500)]
    oldest = await s.sink.read(PromptKey("support"), 0.0, 1)
    assert [p["pair_id"] for p in oldest] == ["p1400"]


async def test_replicas_writing_at_once_share_one_numbering_and_one_cap(
    backend: Backend, make_sink: MakeSink
) -> None:
    here, there = await make_sink(0, max_entries=150), await make_sink(1, max_entries=150)
    for n in range(400):
        (here if n % 2 else there).sink.add(pair(n, 1000.0 + n))
    await eventually(lambda: here.count("written") + there.count("written") == 400)
    [(count, low, high)] = await backend.rows("SELECT count(*), min(n), max(n) FROM shadow_pairs")
    assert (count, low, high) == (150, 251, 400)


async def test_replicas_share_one_view_and_follow_sees_new_pairs(make_sink: MakeSink) -> None:
    here, there = await make_sink(0), await make_sink(1)
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
        there.sink.add(pair(5, 999.0))  # recorded before `since`: not followed
        there.sink.add(pair(6, 1006.0))
        await eventually(lambda: seen == ["p1", "p2", "p3", "p6"])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_follow_without_since_starts_at_the_end(make_sink: MakeSink) -> None:
    s = await make_sink()
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


async def test_follow_ends_when_the_sink_closes(make_sink: MakeSink) -> None:
    s = await make_sink()

    async def watch() -> list[dict[str, Any]]:
        return [record async for record in s.sink.follow(PromptKey("support"), None)]

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await s.sink.close()
    async with asyncio.timeout(5):
        assert await watcher == []


async def test_killed_connections_cost_nothing(backend: Backend, make_sink: MakeSink) -> None:
    s = await make_sink()
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)
    assert backend.server.terminate_backends() > 0
    for n in range(1, 6):
        s.sink.add(pair(n, 1000.0 + n))
    await eventually(lambda: s.count("written") == 6)
    assert backend.server.terminate_backends() > 0
    assert len(await s.sink.read(PromptKey("support"), None, 10)) == 6
    assert s.count("sink_dropped") == 0


async def test_a_crashed_server_drops_and_counts_then_recovers(
    fault_backend: Backend, make_fault_sink: MakeSink
) -> None:
    s = await make_fault_sink()
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)
    seen: list[str] = []

    async def watch() -> None:
        async for record in s.sink.follow(PromptKey("support"), None):
            seen.append(record["pair_id"])

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)  # the follower is live
        crash(fault_backend.server)
        for n in range(1, 21):
            s.sink.add(pair(n, 1000.0 + n))  # returns at once; nothing raises into the caller
        await eventually(lambda: s.count("sink_dropped") == 20)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="shadow pairs"):
            await s.sink.read(PromptKey("support"), None, 10)
        assert time.monotonic() - started < 1.0 + 3.0 + 1.5  # the read's deadline, and grace

        fault_backend.server.start()  # the same data: PostgreSQL keeps what it committed
        # The pool reconnects with its own back-off, which grew during the outage.
        await reconnected(s)
        for n in range(21, 26):
            s.sink.add(pair(n, 1000.0 + n))
        await eventually(lambda: seen[-1:] == ["p25"])  # the follower rode the outage out
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await eventually(lambda: s.count("written") + s.count("sink_dropped") == 26)
    records = await s.sink.read(PromptKey("support"), None, 10)
    assert [p["pair_id"] for p in records] == ["p0", *(f"p{n}" for n in range(21, 26))]
    assert s.count("written") == 6


async def reconnected(s: Sink) -> None:
    for _ in range(300):
        try:
            await s.sink.read(PromptKey("support"), None, 1)
            return
        except SinkUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the sink did not read again within 30 s of the server's start")


async def test_a_full_queue_drops_instead_of_growing(
    fault_backend: Backend, make_fault_sink: MakeSink
) -> None:
    s = await make_fault_sink(queue_size=10)
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)
    with frozen(fault_backend.server):  # connections open, nothing answers
        for n in range(1, 101):
            s.sink.add(pair(n, 1000.0 + n))
        assert s.sink.pending <= 10
        assert s.count("sink_dropped") >= 90 - 1  # the writer may hold one batch
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            await s.sink.read(PromptKey("support"), None, 10)
        assert time.monotonic() - started < 1.0 + 3.0 + 1.5


async def test_close_flushes_what_is_queued(make_sink: MakeSink) -> None:
    s = await make_sink()
    for n in range(50):
        s.sink.add(pair(n, 1000.0 + n))
    await s.sink.close()
    assert s.count("written") == 50
    s.sink.add(pair(99, 2000.0))
    assert s.count("sink_dropped") == 1
    await s.sink.close()  # closed again (runner, then backend): nothing more happens
    assert (s.count("written"), s.count("sink_dropped")) == (50, 1)


async def test_close_against_a_frozen_server_is_bounded(
    fault_backend: Backend, make_fault_sink: MakeSink
) -> None:
    s = await make_fault_sink()
    s.sink.add(pair(0, 1000.0))
    await eventually(lambda: s.count("written") == 1)
    with frozen(fault_backend.server):
        for n in range(1, 31):
            s.sink.add(pair(n, 1000.0 + n))
        started = time.monotonic()
        await s.sink.close()
        assert time.monotonic() - started < 5.0 + 1.5
    assert s.count("written") + s.count("sink_dropped") == 31
