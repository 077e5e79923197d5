"""The analysis parts that replicas share, on PostgreSQL (twins of test_analysis_redis.py, on
a private server): the stats pool adds up what every replica flushes (the same window as the
in-memory pool), the lease has exactly one holder and passes on when its holder stops
renewing or lets go, and the analysis state with its last verdicts survives for whoever
holds the lease next. Then what a killed connection, a restart and an outage do to each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from proxy.analysis.analyser import TICK_SECONDS, Analyser
from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.policy import AnalysisPolicy
from proxy.analysis.pool import MemoryStatsPool
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state import MAX_VERDICTS, AnalysisState
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.analysis.window import RolloutBatch, RolloutKey, WindowRecorder
from proxy.config import AnalysisConfig
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.pg.session import PostgresUnavailable
from proxy.registry.models import RegistrySnapshot, Rollout, RolloutMode, Status, StickyKey
from proxy.registry.service import RegistryService
from tests.pg.pg_parts import crash, frozen, new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.registry.test_analysis_redis import (
    Records,
    assert_same_window,
    replica_batches,
    verdict,
)

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


async def test_the_postgres_pool_gives_the_same_window_as_the_memory_pool(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    memory = MemoryStatsPool()
    replicas = [await PostgresStatsPool.open(pool, schema=schema) for pool in pools]
    base = int(time.time())
    for round_ in range(2):
        for replica, pool in enumerate(replicas):
            await pool.add(replica_batches(replica, base + round_), keep_seconds=30)
            await memory.add(replica_batches(replica, base + round_), keep_seconds=30)

    for start, end in [(base, base + 5), (base + 1, base + 3), (base + 0.5, base + 2.9)]:
        want = await memory.read("greet", "r-1", start, end)
        assert want.arm("stable").requests > 0
        for pool in replicas:
            assert_same_window(await pool.read("greet", "r-1", start, end), want)
    outside = await replicas[0].read("greet", "r-1", base - 10, base)
    assert outside.arms == {}
    assert outside.noise.total("text_distance") == 2 * 2 * 3
    assert_same_window(
        await replicas[1].read("greet", "r-0", base, base + 5),
        await memory.read("greet", "r-0", base, base + 5),
    )
    assert (await replicas[0].read("greet", "r-9", base, base + 5)).arms == {}


async def test_replicas_adding_at_once_lose_no_increment(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    """Many flushes of the same seconds at once, from two pools: every count arrives, and
    no two flushes deadlock (rows are written in key order)."""
    replicas = [await PostgresStatsPool.open(pool, schema=schema) for pool in pools]
    base = int(time.time())

    def batch(reverse: bool) -> dict[RolloutKey, RolloutBatch]:
        b = RolloutBatch()
        slots = range(base, base + 5)
        for slot in reversed(slots) if reverse else slots:
            for arm in ("stable", "canary", "shadow"):
                b.arm(slot, arm).add_call(
                    failed=False, duration=0.2, ttft=None, output_tokens=10, finish_reason="stop"
                )
        return {("greet", "r-1"): b, ("other", "r-1"): b}

    flushes = [replicas[i % 2].add(batch(i % 3 == 0), keep_seconds=30) for i in range(40)]
    await asyncio.gather(*flushes)

    window = await replicas[0].read("greet", "r-1", base, base + 5)
    for arm in ("stable", "canary", "shadow"):
        assert window.arm(arm).requests == 40 * 5
        assert window.arm(arm).answer_tokens.total == 40 * 5 * 10


async def test_pool_rows_honour_the_schema_and_expire(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    pool = await PostgresStatsPool.open(pools[0], schema=schema)
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
    assert (await pool.read("greet", "r-1", base, base + 5)).arms == {}
    assert (await pool.read("greet", "r-0", base, base + 5)).arm("stable").requests == 1
    pool._purged_at = 0.0  # the next flush purges (they do every few seconds)
    await pool.add(replica_batches(1, base + 100), keep_seconds=30)
    assert await rows(pools[0], "SELECT 1 FROM analysis_counts WHERE expires_at < now()") == []
    assert (await pool.read("greet", "r-1", base + 100, base + 105)).arm("stable").requests > 0


# -- the lease -------------------------------------------------------------------------------


async def leases(
    pools: list[AsyncConnectionPool], schema: str, seconds: float
) -> tuple[PostgresLease, PostgresLease]:
    a = await PostgresLease.open(pools[0], schema=schema, replica="replica-a", seconds=seconds)
    b = await PostgresLease.open(pools[1], schema=schema, replica="replica-b", seconds=seconds)
    return a, b


async def test_exactly_one_replica_holds_the_lease(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    a, b = await leases(pools, schema, 5)

    results = await asyncio.gather(*(lease.hold("greet") for lease in (a, b, a, b) * 5))

    winner = "replica-a" if results[0] else "replica-b"
    assert results == [results[0], not results[0]] * 10
    assert await a.holder("greet") == await b.holder("greet") == winner
    assert await b.hold("other") is True
    assert await a.hold("other") is False
    assert await a.holder("nothing") is None


async def test_another_replica_takes_over_when_the_holder_stops_renewing(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    a, b = await leases(pools, schema, 2)
    assert await a.hold("greet")
    started = time.monotonic()
    while True:
        assert not await b.hold("greet")
        assert await a.hold("greet")
        stopped = time.monotonic()
        if stopped - started > 2.2:
            break
        await asyncio.sleep(0.2)

    while not await b.hold("greet"):
        assert time.monotonic() - stopped < 3.0, "no takeover"
        await asyncio.sleep(0.05)
    took = time.monotonic() - stopped

    assert 1.9 < took < 2.5
    assert await a.holder("greet") == "replica-b"
    assert not await a.hold("greet")


async def test_release_hands_over_at_once_and_only_the_holder_can_release(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    a, b = await leases(pools, schema, 30)
    assert await a.hold("greet")

    await b.release("greet")
    assert await a.holder("greet") == "replica-a"
    assert not await b.hold("greet")

    await a.release("greet")
    assert await b.holder("greet") is None
    assert await b.hold("greet")
    assert await a.holder("greet") == "replica-b"


async def test_a_killed_connection_neither_frees_nor_loses_the_lease(
    postgres_server: PostgresServer, pools: list[AsyncConnectionPool], schema: str
) -> None:
    """The lease is a row, not a session lock: killing every connection (the holder's
    included) hands nothing over, and the holder renews on a fresh pooled connection."""
    a, b = await leases(pools, schema, 30)
    assert await a.hold("greet")
    for _ in range(3):
        assert postgres_server.terminate_backends() > 0
        assert not await b.hold("greet")  # the next call after the kill succeeds...
        assert await a.hold("greet")  # ...on both pools, and a still holds it
        assert await b.holder("greet") == "replica-a"


async def test_the_lease_outlives_a_server_restart_with_one_holder(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), schema=schema) as pools:
        a, b = await leases(pools, schema, 30)
        assert await a.hold("greet")
        assert not await b.hold("greet")

        fresh_postgres_server.restart()
        assert not await b.hold("greet")
        assert await a.hold("greet")
        assert await a.holder("greet") == await b.holder("greet") == "replica-a"


async def test_lease_calls_fail_fast_while_the_server_is_down_or_frozen(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    """Each call ends within its deadline with PostgresUnavailable (the analyser then counts
    the replica as not leading), and the lease works again once the server is back."""
    async with replica_pools(fresh_postgres_server.new_database(), schema=schema) as pools:
        a = await PostgresLease.open(
            pools[0], schema=schema, replica="replica-a", seconds=30, op_timeout=1.0
        )
        assert await a.hold("greet")
        with frozen(fresh_postgres_server):
            await fails_fast(a)
        await wait_until_back(a)
        assert await a.hold("greet")

        crash(fresh_postgres_server)
        try:
            await fails_fast(a)
        finally:
            fresh_postgres_server.start()
        await wait_until_back(a)
        assert await a.hold("greet")


async def fails_fast(lease: PostgresLease) -> None:
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(PostgresUnavailable, match="analysis lease"):
            await lease.hold("greet")
        assert time.monotonic() - started < 1.0 + 1.5


async def wait_until_back(lease: PostgresLease) -> None:
    """The pool reconnects in the background, with its own back-off."""
    for _ in range(100):
        try:
            await lease.holder("greet")
            return
        except PostgresUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the lease did not work again within 10 s")


# -- the state store -------------------------------------------------------------------------


async def test_state_is_shared_and_verdicts_are_newest_first_capped(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    mine, theirs = [await PostgresStateStore.open(pool, schema=schema) for pool in pools]
    assert await theirs.load("greet") == (None, [])
    state = AnalysisState("r-1", failures=0, step_started_at=1000.25, next_at=1060.5)
    await mine.save("greet", state)
    assert await theirs.load("greet") == (state, [])

    for n in range(MAX_VERDICTS + 5):
        state.failures = n
        await (mine if n % 2 else theirs).save("greet", state, verdict("r-1", n))

    loaded, verdicts = await theirs.load("greet")
    assert loaded == AnalysisState("r-1", MAX_VERDICTS + 4, 1000.25, 1060.5)
    assert MAX_VERDICTS == 20
    assert [v["n"] for v in verdicts] == list(range(MAX_VERDICTS + 4, 4, -1))
    stored = await rows(pools[0], "SELECT jsonb_array_length(verdicts) FROM analysis_state")
    assert stored == [(MAX_VERDICTS,)]
    state.next_at = 2000.0
    await mine.save("greet", state)
    assert len((await theirs.load("greet"))[1]) == MAX_VERDICTS
    assert await mine.load("other") == (None, [])
    [(ttl,)] = await rows(pools[0], f"SELECT {TTL} FROM analysis_state")
    assert 7 * 86_400 - 5 < ttl <= 7 * 86_400


async def test_a_new_rollout_starts_a_fresh_verdict_list(
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    store = await PostgresStateStore.open(pools[0], schema=schema)
    old = AnalysisState("r-1", failures=2, step_started_at=1000.0, next_at=1010.0)
    for n in range(3):
        await store.save("greet", old, verdict("r-1", n))

    new = AnalysisState("r-2", failures=0, step_started_at=2000.0, next_at=2010.0)
    await store.save("greet", new)
    assert await store.load("greet") == (new, [])

    await store.save("greet", new, verdict("r-2", 7))
    state, verdicts = await (await PostgresStateStore.open(pools[1], schema=schema)).load("greet")
    assert state == new
    assert verdicts == [verdict("r-2", 7)]


async def test_an_expired_state_is_gone(pools: list[AsyncConnectionPool], schema: str) -> None:
    store = await PostgresStateStore.open(pools[0], schema=schema)
    old = AnalysisState("r-1", failures=2, step_started_at=1000.0, next_at=1010.0)
    await store.save("greet", old, verdict("r-1", 1))
    await rows(pools[0], "UPDATE analysis_state SET expires_at = now() RETURNING 1")

    assert await store.load("greet") == (None, [])
    # Saved again, the state starts a fresh verdict list, as on a Redis whose keys expired.
    await store.save("greet", old, verdict("r-1", 2))
    assert await store.load("greet") == (old, [verdict("r-1", 2)])


async def test_the_parts_work_on_the_next_call_after_connections_are_killed(
    postgres_server: PostgresServer, pools: list[AsyncConnectionPool], schema: str
) -> None:
    stats = await PostgresStatsPool.open(pools[0], schema=schema)
    state = await PostgresStateStore.open(pools[0], schema=schema)
    base = int(time.time())
    await stats.add(replica_batches(0, base), keep_seconds=30)
    saved = AnalysisState("r-1", failures=1, step_started_at=1000.0, next_at=1010.0)
    await state.save("greet", saved)

    assert postgres_server.terminate_backends() > 0
    await stats.add(replica_batches(0, base), keep_seconds=30)  # no error: a fresh connection
    assert postgres_server.terminate_backends() > 0
    window = await stats.read("greet", "r-1", base, base + 5)
    assert window.arm("stable").requests == 2 * sum(
        stats.requests
        for slot in replica_batches(0, base)[("greet", "r-1")].slots.values()
        for name, stats in slot.items()
        if name == "stable"
    )
    assert postgres_server.terminate_backends() > 0
    assert await state.load("greet") == (saved, [])


# -- an outage, as the analyser sees it ------------------------------------------------------


async def test_a_lasting_postgres_outage_is_logged_at_error_level(
    fresh_postgres_server: PostgresServer, schema: str
) -> None:
    policy = AnalysisPolicy(interval=60, min_samples=10)
    now = time.time()
    rollout = Rollout(
        slug="greet",
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
    snapshot = RegistrySnapshot(revision=1, versions={}, prod={}, rollouts={"greet": rollout})
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema=schema) as [pool]:
        analyser = Analyser(
            config=AnalysisConfig(),
            snapshot=lambda: snapshot,
            registry=cast(RegistryService, None),  # never reached: no verdict is due
            recorder=WindowRecorder(time.time),
            pool=await PostgresStatsPool.open(pool, schema=schema),
            lease=await PostgresLease.open(
                pool, schema=schema, replica="replica-a", seconds=5, op_timeout=0.5
            ),
            state=await PostgresStateStore.open(pool, schema=schema),
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
            crash(fresh_postgres_server)
            started = time.monotonic()
            for _ in range(8):
                await analyser.tick()
            # Each tick gives up within the lease call's deadline, never hangs.
            assert time.monotonic() - started < 8 * (0.5 + 1.0)
        finally:
            logger.removeHandler(records)
            logger.setLevel(level)

    warnings = [r for r in records.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 8
    assert [r.levelno for r in warnings][3:] == [logging.ERROR] * 5


# -- takeover, as the analysers see it (the in-process twin of test_analysis_takeover.py) ----


def analysed_rollout() -> RegistrySnapshot:
    """A rollout with a policy whose first verdict is an hour away: the analysers only take,
    renew and release the lease, so no registry is needed."""
    now = time.time()
    rollout = Rollout(
        slug="greet",
        id="r-1",
        candidate=2,
        mode=RolloutMode.CANARY,
        basis_points=1000,
        sticky=StickyKey.parse("none"),
        started_at=now,
        updated_at=now,
        actor="alice",
        restore_status=Status.DRAFT,
        analysis=AnalysisPolicy(interval=3600, min_samples=10),
    )
    return RegistrySnapshot(revision=1, versions={}, prod={}, rollouts={"greet": rollout})


class Replica:
    def __init__(self, analyser: Analyser, metrics: ProxyMetrics) -> None:
        self.analyser = analyser
        self.metrics = metrics

    @property
    def leads(self) -> bool:
        labels = {"slug": "greet"}
        value = self.metrics.registry.get_sample_value("promptproxy_analysis_leader", labels)
        return value == 1.0


async def replica(pool: AsyncConnectionPool, schema: str, name: str, seconds: float) -> Replica:
    snapshot = analysed_rollout()
    metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
    analyser = Analyser(
        config=AnalysisConfig(lease_seconds=seconds),
        snapshot=lambda: snapshot,
        registry=cast(RegistryService, None),
        recorder=WindowRecorder(time.time),
        pool=await PostgresStatsPool.open(pool, schema=schema),
        lease=await PostgresLease.open(pool, schema=schema, replica=name, seconds=seconds),
        state=await PostgresStateStore.open(pool, schema=schema),
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
    pools: list[AsyncConnectionPool], schema: str
) -> None:
    seconds = 2.0
    a = await replica(pools[0], schema, "a", seconds)
    b = await replica(pools[1], schema, "b", seconds)
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
    newcomer = await replica(pools[0], schema, "c", seconds)
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
