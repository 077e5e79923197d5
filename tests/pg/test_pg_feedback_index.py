"""PostgresRequestIndex on a private server (the index parts of test_feedback.py, and the
twin of the Redis index's close tests): an answer remembered on one replica takes feedback
on another, once per name, until its expiry; expired rows are never returned and are deleted
in bounded batches; an outage costs a 503 on the feedback call, never a blocked request, and
the answers wait (bounded) to be written."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from proxy import feedback_postgres
from proxy.analysis.window import WindowRecorder
from proxy.config import FeedbackConfig
from proxy.errors import NotFound, ServiceUnavailable
from proxy.feedback import Answered, FeedbackService
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.metrics import ProxyMetrics
from proxy.pg.session import PostgresUnavailable
from proxy.prompt_key import PromptKey
from tests.pg.pg_parts import crash, frozen, replica_pools
from tests.postgres_server import PostgresServer, postgres_server_fixture

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")

TTL = 3600.0


class Replica:
    """One proxy's view: its index, and the FeedbackService that answers /v1/feedback."""

    def __init__(self, index: PostgresRequestIndex) -> None:
        self.index = index
        self.errors: list[str] = []
        self.recorder = WindowRecorder(time.time)
        self.metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o-mini"])
        self.service = FeedbackService(
            FeedbackConfig(ttl_seconds=TTL), index, self.metrics, self.recorder
        )

    def feedback_counted(self, arm: str, name: str) -> float:
        return sum(
            stats.feedback[name].n
            for batch in self.recorder.drain().values()
            for arms in batch.slots.values()
            for arm_name, stats in arms.items()
            if arm_name == arm and name in stats.feedback
        )


async def open_replica(
    pool: AsyncConnectionPool, schema: str, *, start: bool = True, **options: Any
) -> Replica:
    errors: list[str] = []
    index = PostgresRequestIndex(
        pool, schema=schema, ttl=options.pop("ttl", TTL), on_error=errors.append, **options
    )
    if start:
        index.start()
    replica = Replica(index)
    replica.errors = errors
    return replica


def answered(arm: str = "canary", rollout_id: str | None = "r-1") -> Answered:
    version = "2" if arm == "canary" else "1"
    return Answered(PromptKey("support"), version, arm, rollout_id, time.time())


async def execute(pool: AsyncConnectionPool, query: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(query.encode())
        return await cur.fetchall() if cur.description else []


#: Each test has a database of its own.
SCHEMA = "feedback"


@pytest.fixture
async def pools(postgres_server: PostgresServer) -> AsyncIterator[list[AsyncConnectionPool]]:
    async with replica_pools(postgres_server.new_database(), schema=SCHEMA) as opened:
        yield opened


@pytest.fixture
async def replicas(pools: list[AsyncConnectionPool]) -> AsyncIterator[list[Replica]]:
    opened = [await open_replica(pool, SCHEMA, start=False) for pool in pools]
    yield opened
    for replica in opened:
        await replica.index.close()


async def test_feedback_reaches_the_answer_through_any_replica_once_per_name(
    replicas: list[Replica],
) -> None:
    here, there = replicas
    ids = {f"req-{i:03d}": answered("canary" if i % 2 else "stable") for i in range(20)}
    for request_id, answer in ids.items():
        here.index.remember(request_id, answer)
    # Not written yet: this replica answers from what it has pending, the other cannot.
    assert await here.index.lookup("req-001") == ids["req-001"]
    assert await there.index.lookup("req-001") is None
    await here.index.flush()
    assert here.index.pending == 0

    for request_id, answer in ids.items():
        body = await there.service.record(request_id, "escalated", 1)
        assert (body["slug"], str(body["version"]), body["arm"]) == (
            "support",
            answer.version,
            answer.arm,
        )
        assert body["recorded"] is True
    assert await there.index.lookup("req-000") == ids["req-000"]  # every field kept

    # A retried POST, on either replica, is acknowledged and not counted twice.
    assert (await here.service.record("req-001", "escalated", 1))["recorded"] is False
    assert (await there.service.record("req-001", "escalated", 1))["recorded"] is False
    assert (await here.service.record("req-001", "thumbs_down", 1))["recorded"] is True
    assert there.feedback_counted("canary", "escalated") == 10
    assert there.feedback_counted("stable", "escalated") == 0  # drained with the canary's
    assert here.feedback_counted("canary", "thumbs_down") == 1
    assert here.feedback_counted("canary", "escalated") == 0

    with pytest.raises(NotFound, match="req-never-seen"):
        await there.service.record("req-never-seen", "thumbs_down", 1)


async def test_an_answer_written_twice_keeps_the_newest(replicas: list[Replica]) -> None:
    here, there = replicas
    here.index.remember("req-1", answered("stable", None))
    await here.index.flush()
    there.index.remember("req-1", answered("canary"))
    await there.index.flush()
    got = await here.index.lookup("req-1")
    assert got is not None
    assert (got.arm, got.rollout_id) == ("canary", "r-1")


async def test_expired_answers_and_feedback_are_gone(
    pools: list[AsyncConnectionPool], replicas: list[Replica]
) -> None:
    here, _ = replicas
    here.index.remember("req-old", answered())
    here.index.remember("req-new", answered())
    await here.index.flush()
    assert await here.index.first_feedback("req-old", "escalated") is True
    [(ttl,)] = await execute(
        pools[0],
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM feedback_answers "
        "WHERE request_id = 'req-new'",
    )
    assert TTL - 5 < ttl <= TTL

    await execute(
        pools[0],
        "UPDATE feedback_answers SET expires_at = now() WHERE request_id = 'req-old'",
    )
    await execute(pools[0], "UPDATE feedback_given SET expires_at = now()")
    with pytest.raises(NotFound, match="older than 3600 seconds"):
        await here.service.record("req-old", "escalated", 1)
    assert await here.index.lookup("req-new") is not None
    # An expired (request id, name) counts as new, as an expired Redis key does.
    assert await here.index.first_feedback("req-old", "escalated") is True
    assert await here.index.first_feedback("req-old", "escalated") is False


async def test_expired_rows_are_deleted_in_bounded_batches(
    pools: list[AsyncConnectionPool], replicas: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feedback_postgres, "PURGE_LIMIT", 10)
    here, _ = replicas
    for n in range(25):
        here.index.remember(f"req-{n}", answered())
    await here.index.flush()
    await execute(pools[0], "UPDATE feedback_answers SET expires_at = now() - interval '1 s'")
    here.index.remember("req-live", answered())
    await here.index.flush()

    deleted = [await here.index.purge() for _ in range(5)]
    # Ten at a time while a backlog remains; then the next purge waits its turn.
    assert deleted == [10, 10, 5, 0, 0]
    assert await execute(pools[0], "SELECT request_id FROM feedback_answers") == [("req-live",)]


async def test_the_next_call_after_connections_are_killed_succeeds(
    postgres_server: PostgresServer, replicas: list[Replica]
) -> None:
    here, there = replicas
    here.index.remember("req-1", answered())
    await here.index.flush()
    assert await there.index.lookup("req-1") is not None
    assert postgres_server.terminate_backends() > 0
    assert await there.index.lookup("req-1") is not None
    assert postgres_server.terminate_backends() > 0
    here.index.remember("req-2", answered())
    await here.index.flush()
    assert here.errors == []
    assert postgres_server.terminate_backends() > 0
    assert (await there.service.record("req-2", "escalated", 1))["recorded"] is True


@pytest.mark.parametrize("fault", ["crash", "freeze"])
async def test_an_outage_costs_a_503_and_the_answers_wait_to_be_written(
    fresh_postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setattr(feedback_postgres, "_FLUSH_SECONDS", 0.05)
    async with replica_pools(fresh_postgres_server.new_database(), schema=SCHEMA) as pools:
        replica = await open_replica(pools[0], SCHEMA, op_timeout=0.5)
        other = await open_replica(pools[1], SCHEMA, start=False)
        try:
            replica.index.remember("req-1", answered())
            await until_found(other, "req-1")

            with contextlib.ExitStack() as outage:
                if fault == "crash":
                    crash(fresh_postgres_server)
                    outage.callback(fresh_postgres_server.start)
                else:
                    outage.enter_context(frozen(fresh_postgres_server))
                started = time.monotonic()
                for n in range(2, 50):
                    replica.index.remember(f"req-{n}", answered())  # never blocks
                assert time.monotonic() - started < 0.05
                started = time.monotonic()
                with pytest.raises(ServiceUnavailable, match="unreachable"):
                    await replica.service.record("req-1", "escalated", 1)
                assert time.monotonic() - started < 0.5 + 1.5
                for _ in range(100):
                    if replica.errors:
                        break  # a flush failed, and said so
                    await asyncio.sleep(0.05)
                assert set(replica.errors) == {"request_index"}

            # Back: the answers that waited are written by the flush loop.
            await until_found(other, "req-49")
            for n in range(2, 50):
                assert await other.index.lookup(f"req-{n}") is not None
            assert (await other.service.record("req-49", "escalated", 1))["recorded"] is True
        finally:
            await replica.index.close()


async def until_found(replica: Replica, request_id: str) -> None:
    """Written by another replica's flush loop. After an outage the pool reconnects with
    its own back-off, which grew meanwhile."""
    for _ in range(300):
        with contextlib.suppress(PostgresUnavailable):
            if await replica.index.lookup(request_id) is not None:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} was not written within 30 s")


async def test_close_writes_what_is_pending(
    pools: list[AsyncConnectionPool], replicas: list[Replica]
) -> None:
    index = PostgresRequestIndex(pools[0], schema=SCHEMA, ttl=TTL, on_error=lambda op: None)
    index.start()
    for n in range(10):
        index.remember(f"req-close-{n}", answered())
    await index.close()
    assert await replicas[1].index.lookup("req-close-9") is not None


async def test_close_against_a_frozen_server_is_bounded(
    fresh_postgres_server: PostgresServer,
) -> None:
    async with replica_pools(fresh_postgres_server.new_database(), 1, schema=SCHEMA) as [pool]:
        index = PostgresRequestIndex(pool, schema=SCHEMA, ttl=TTL, on_error=lambda op: None)
        index.start()
        with frozen(fresh_postgres_server):
            index.remember("req-1", answered())
            started = time.monotonic()
            await index.close()
            assert time.monotonic() - started < 1.0 + 1.0 + 1.5
            with pytest.raises(PostgresUnavailable):
                await index.lookup("req-2")
