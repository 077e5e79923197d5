"""A PostgreSQL server back empty, part by part: the cluster wiped and the database made
again by an operator (as the last test of tests/integration/test_replicas_on_postgres.py
does to the registry), or the deployment's schema dropped. The parts that share analysis,
feedback and shadow state through it keep working on their very next calls: each finds its
tables gone, makes them again (empty) and does what it was asked, with nothing of before
read back and nothing lost of what it was given after."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state import AnalysisState
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.analysis.window import RolloutBatch
from proxy.feedback import Answered
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.prompt_key import PromptKey
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.sink_postgres import PostgresPairSink
from proxy.usage.counts import UsageCounts, UsageKey
from proxy.usage.usage_postgres import PostgresUsageLedger
from tests.component.test_shadow_sink_redis import eventually, pair
from tests.pg.pg_parts import new_schema, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.registry.pg_stores import drop_schema
from tests.registry.test_analysis_parts import verdict

fresh_postgres_server = postgres_server_fixture("function")

SLUG = PromptKey("greet")
ROLLOUT = "r-1"
COMPONENTS = [
    "analysis_lease",
    "analysis_pool",
    "analysis_state",
    "feedback_index",
    "shadow_pairs",
    "tenant_usage",
]


@dataclass
class Parts:
    stats: PostgresStatsPool
    lease: PostgresLease
    state: PostgresStateStore
    index: PostgresRequestIndex
    sink: PostgresPairSink
    usage: PostgresUsageLedger
    sink_registry: CollectorRegistry
    index_errors: list[str]

    def pairs_written(self) -> float:
        labels = {"outcome": "written"}
        value = self.sink_registry.get_sample_value("promptproxy_shadow_pairs_total", labels)
        return value or 0.0


@contextlib.asynccontextmanager
async def opened_parts(pool: AsyncConnectionPool, schema: str) -> AsyncIterator[Parts]:
    """Every analysis, feedback, shadow and usage part of one replica, on its pool."""
    registry = CollectorRegistry()
    errors: list[str] = []
    parts = Parts(
        stats=PostgresStatsPool(pool, schema=schema),
        lease=PostgresLease(pool, schema=schema, replica="replica-a", seconds=30),
        state=PostgresStateStore(pool, schema=schema),
        index=PostgresRequestIndex(pool, schema=schema, ttl=3600, on_error=errors.append),
        sink=PostgresPairSink(
            pool, schema=schema, max_entries=100, queue_size=100, metrics=ShadowMetrics(registry)
        ),
        usage=PostgresUsageLedger(pool, schema=schema, keep_days=35),
        sink_registry=registry,
        index_errors=errors,
    )
    try:
        yield parts
    finally:
        await parts.sink.close()
        await parts.index.close()


def one_call(arm: str, at: float) -> RolloutBatch:
    batch = RolloutBatch()
    batch.arm(int(at), arm).add_call(
        failed=False, duration=0.2, ttft=None, output_tokens=10, finish_reason="stop"
    )
    return batch


async def use_every_part(parts: Parts, n: int) -> None:
    """Round ``n``: each part stores something and reads back exactly what was stored
    since the server was last emptied (round ``n`` alone, or rounds before it)."""
    now = time.time()
    await parts.stats.add({(SLUG, ROLLOUT): one_call("canary", now)}, keep_seconds=60)
    window = await parts.stats.read(SLUG, ROLLOUT, now - 60, now + 60)
    assert window.arm("canary").requests == n

    assert await parts.lease.holder(SLUG) == (None if n == 1 else "replica-a")
    assert await parts.lease.hold(SLUG)
    assert await parts.lease.holder(SLUG) == "replica-a"

    state = AnalysisState(ROLLOUT, failures=0, step_started_at=now, next_at=now + 60)
    await parts.state.save(SLUG, state, verdict(ROLLOUT, n))
    assert await parts.state.load(SLUG) == (state, [verdict(ROLLOUT, m) for m in range(n, 0, -1)])

    request_id = f"req-{n}"
    parts.index.remember(request_id, Answered(SLUG, "2", "canary", ROLLOUT, now))
    await parts.index.flush()
    assert parts.index.pending == 0
    assert parts.index_errors == []
    assert await parts.index.lookup(request_id) == Answered(SLUG, "2", "canary", ROLLOUT, now)
    # Round n + 1's was written only before the server was emptied, if at all.
    assert await parts.index.lookup(f"req-{n + 1}") is None
    assert await parts.index.first_feedback(request_id, "thumbs_up")
    assert not await parts.index.first_feedback(request_id, "thumbs_up")

    minute = int(now) // 60
    await parts.usage.add({UsageKey("acme", SLUG.slug, "", minute): UsageCounts(1)})
    used = await parts.usage.read("acme", minute - 1, minute + 1)
    assert used[(SLUG.slug, "")].requests == n

    written = parts.pairs_written()
    parts.sink.add(pair(n, now, slug=SLUG.slug))
    await eventually(lambda: parts.pairs_written() == written + 1)
    assert [p["pair_id"] for p in await parts.sink.read(SLUG, None, 10)] == [
        f"p{m}" for m in range(1, n + 1)
    ]


async def components(pool: AsyncConnectionPool) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT component FROM schema_versions ORDER BY component")
        return [name for (name,) in await cur.fetchall()]


@pytest.mark.parametrize("how", ["cluster wiped", "schema dropped"])
async def test_every_part_makes_its_tables_again_on_a_server_back_empty(
    fresh_postgres_server: PostgresServer, how: str
) -> None:
    url, schema = fresh_postgres_server.new_database(), new_schema()
    async with replica_pools(url, 1, schema=schema) as [pool], opened_parts(pool, schema) as parts:
        await use_every_part(parts, 1)
        await use_every_part(parts, 2)

        if how == "cluster wiped":
            await asyncio.to_thread(fresh_postgres_server.wipe)
            # Every database went with the cluster; an operator makes the replicas' again.
            await asyncio.to_thread(fresh_postgres_server.create_database, url.rpartition("/")[2])
        else:
            await drop_schema(url, schema)

        # The very next calls work: no error, the tables made again, empty.
        await use_every_part(parts, 1)
        assert await components(pool) == COMPONENTS
        await use_every_part(parts, 2)
