"""The eval runs of every backend keep the same promise (``proxy.evals.runs.EvalRunStore``):
a run reads back exactly as it was added; a slug's listing is newest first (by
``finished_at``, then id), filtered by candidate when asked, at most ``limit`` long, with
summaries but without details; a slug keeps its newest ``keep_runs``; adding an id again
changes nothing; a detail over the limit is refused and nothing is written; runs outlive the
store object (and, for PostgreSQL, a server restart); a store that cannot be reached says
so with ``EvalRunsUnavailable``, the registry's ``StoreUnavailable``.

Each backend runs the same tests: the embedded SQLite file, a private redis-server and a
private PostgreSQL (started by the tests). Two store objects on one place are two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from proxy.evals.runs import (
    DEFAULT_MAX_DETAIL_BYTES,
    EvalRun,
    EvalRunError,
    EvalRunStore,
    EvalRunsUnavailable,
    EvalRunTooLarge,
)
from proxy.pg.connect import new_pool
from proxy.registry.store import StoreUnavailable
from tests.pg.pg_parts import new_schema
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.processes import free_port
from tests.redis_server import RedisServer, redis_server_fixture

postgres_server = postgres_server_fixture("module")
fresh_postgres_server = postgres_server_fixture("function")
redis_server = redis_server_fixture("module")

KINDS = ["sqlite", "redis", "postgresql"]
T0 = 1_765_000_000.0
SLUG = "support-reply"


@dataclass
class Place:
    """Where one backend keeps runs; ``open`` makes another store object on it (its own
    connection or pool, as another replica or a restarted process would have)."""

    kind: str
    opener: Callable[..., Awaitable[EvalRunStore]]
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def open(self, **options: Any) -> EvalRunStore:
        store = await self.opener(**options)
        self.closers.append(store.close)
        return store


async def open_sqlite(path: Path, **options: Any) -> EvalRunStore:
    from proxy.evals.runs_sqlite import SqliteEvalRunStore

    return SqliteEvalRunStore(path, **options)


@contextlib.asynccontextmanager
async def place_of(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Place]:
    # Imported here: each backend's store imports its driver only when it is used.
    closers: list[Callable[[], Awaitable[Any]]] = []
    if kind == "sqlite":
        path = tmp_path / "registry.evals.db"

        async def opener(**options: Any) -> EvalRunStore:
            return await open_sqlite(path, **options)

    elif kind == "redis":
        from proxy.evals.runs_redis import RedisEvalRunStore

        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"evals-{uuid.uuid4().hex[:8]}:"

        async def opener(**options: Any) -> EvalRunStore:
            client = Redis.from_url(server.url)
            closers.append(client.aclose)
            return RedisEvalRunStore(client, prefix, **options)

    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url, schema = pg.new_database(), new_schema()

        async def opener(**options: Any) -> EvalRunStore:
            return await open_postgres(url, schema, closers, **options)

    place = Place(kind, opener)
    try:
        yield place
    finally:
        for close in reversed(place.closers + closers):
            await close()


async def open_postgres(
    url: str, schema: str, closers: list[Callable[[], Awaitable[Any]]], **options: Any
) -> EvalRunStore:
    from proxy.evals.runs_postgres import PostgresEvalRunStore

    pool: AsyncConnectionPool = new_pool(url, schema=schema, max_size=2)
    await pool.open(wait=True, timeout=10)
    closers.append(pool.close)
    return PostgresEvalRunStore(pool, schema=schema, **options)


@pytest.fixture(params=KINDS)
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    async with place_of(request.param, request, tmp_path) as made:
        yield made


@pytest.fixture
async def store(place: Place) -> EvalRunStore:
    return await place.open()


_serial = iter(range(10**9))


def run(
    slug: str = SLUG,
    candidate: int = 2,
    finished_at: float = T0,
    run_id: str | None = None,
    **changes: Any,
) -> EvalRun:
    number = next(_serial)
    made = EvalRun(
        id=run_id or f"{int(finished_at * 1000):013d}-{number:08x}",
        slug=slug,
        candidate=candidate,
        baseline=1,
        kind="eval",
        actor="alice",
        started_at=finished_at - 30.0,
        finished_at=finished_at,
        suite_name="support-reply.eval.yaml",
        suite_sha256="0" * 64,
        judges=(("judge.tone", 3),),
        passed=True,
        summary={"pass_rate": 0.9, "cases": 10, "n": number},
        detail={"cases": [{"name": f"case {number}", "passed": True}]},
    )
    return replace(made, **changes) if changes else made


def ids(runs: list[EvalRun]) -> list[str]:
    return [r.id for r in runs]


def newest_first(runs: list[EvalRun]) -> list[str]:
    return ids(sorted(runs, key=lambda r: r.order, reverse=True))


# -- the contract ---------------------------------------------------------------------------


async def test_a_run_reads_back_exactly_with_its_detail(store: EvalRunStore) -> None:
    added = run(
        slug="tier=gold/support-réponse@claude-日本",
        candidate=7,
        baseline=None,
        kind="judge_agreement",
        actor="cli:zoë 🚀",
        started_at=T0 - 0.001,
        finished_at=T0 + 0.123456789,
        suite_name="réponse.eval.yaml",
        judges=(("judge.tone", 3), ("judge.faits", 12)),
        passed=False,
        summary={"pass_rate": 0.1 + 0.2, "interval": [0.05, 0.6], "by_case": {"é": 1}},
        detail={
            "cases": [
                {"answer": "a\x00b — «ok» 返金", "score": None, "big": 2**53 + 1},
                {"nested": {"a": [1, {"b": [True, False, 1e-300, -0.0, 1.5e300]}]}},
            ],
            "": "an empty key",
        },
    )
    await store.add(added)
    got = await store.get(added.id)
    assert got == added
    assert got is not None
    assert got.judges == (("judge.tone", 3), ("judge.faits", 12))
    assert got.summary["pass_rate"] == 0.1 + 0.2  # not rounded on the way
    assert await store.get("1765000000000-ffffffff") is None


async def test_a_listing_is_newest_first_with_summaries_but_no_details(
    store: EvalRunStore,
) -> None:
    rng = random.Random(11)
    # Ties on finished_at: the id decides. Added in no particular order.
    runs = [run(finished_at=T0 + rng.choice([0, 1, 2, 2.5])) for _ in range(12)]
    runs += [run(finished_at=T0 + 1, run_id=f"tie-{letter}") for letter in "bca"]
    for r in rng.sample(runs, len(runs)):
        await store.add(r)
    listed = await store.list(SLUG)
    assert ids(listed) == newest_first(runs)
    by_id = {r.id: r for r in runs}
    for got in listed:
        assert got.detail == {}
        assert got == replace(by_id[got.id], detail={})
    full = await store.get(listed[0].id)
    assert full is not None
    assert full.detail == by_id[listed[0].id].detail


async def test_a_listing_is_the_slugs_own_and_filters_by_candidate(store: EvalRunStore) -> None:
    # Slugs that could share a key prefix or a delimiter with SLUG.
    slugs = [SLUG, "support", "support-reply@claude", "support-reply:2", "2:support-reply"]
    runs = [
        run(slug=slug, candidate=candidate, finished_at=T0 + i)
        for i, (slug, candidate) in enumerate(
            (slug, candidate) for slug in slugs for candidate in (2, 3, 12) for _ in range(2)
        )
    ]
    for r in runs:
        await store.add(r)
    for slug in slugs:
        mine = [r for r in runs if r.slug == slug]
        assert ids(await store.list(slug)) == newest_first(mine)
        for candidate in (2, 3, 12):
            wanted = newest_first([r for r in mine if r.candidate == candidate])
            assert ids(await store.list(slug, candidate=candidate)) == wanted
        assert await store.list(slug, candidate=4) == []
    assert await store.list("no-such-slug") == []


async def test_a_listing_stops_at_its_limit(store: EvalRunStore) -> None:
    runs = [run(candidate=2 + i % 2, finished_at=T0 + i) for i in range(9)]
    for r in runs:
        await store.add(r)
    assert ids(await store.list(SLUG, limit=3)) == newest_first(runs)[:3]
    assert ids(await store.list(SLUG, limit=1)) == [runs[-1].id]
    threes = [r for r in runs if r.candidate == 3]
    assert ids(await store.list(SLUG, candidate=3, limit=2)) == newest_first(threes)[:2]
    assert len(await store.list(SLUG)) == 9  # the default limit is 50
    with pytest.raises(EvalRunError, match="limit"):
        await store.list(SLUG, limit=0)


async def test_a_slug_keeps_its_newest_runs(place: Place) -> None:
    store = await place.open(keep_runs=4)
    runs = [run(candidate=2 + i % 2, finished_at=T0 + i) for i in range(7)]
    other = [run(slug="billing", finished_at=T0 - 100 + i) for i in range(3)]
    for r in runs + other:
        await store.add(r)
    kept = newest_first(runs)[:4]
    assert ids(await store.list(SLUG)) == kept
    for candidate in (2, 3):
        wanted = [i for i in kept if next(r for r in runs if r.id == i).candidate == candidate]
        assert ids(await store.list(SLUG, candidate=candidate)) == wanted
    for gone in runs[:3]:
        assert await store.get(gone.id) is None
    assert ids(await store.list("billing")) == newest_first(other)  # another slug's own
    # Older than every run kept: deleted by its own add.
    late = run(finished_at=T0 - 1)
    await store.add(late)
    assert await store.get(late.id) is None
    assert ids(await store.list(SLUG)) == kept


async def test_replicas_adding_at_once_keep_exactly_the_newest(place: Place) -> None:
    stores = [await place.open(keep_runs=5) for _ in range(2)]
    runs = [run(finished_at=T0 + i) for i in range(24)]
    await asyncio.gather(*(stores[i % 2].add(r) for i, r in enumerate(runs)))
    assert ids(await stores[0].list(SLUG)) == newest_first(runs)[:5]


async def test_adding_an_id_again_changes_nothing(store: EvalRunStore) -> None:
    first = run()
    await store.add(first)
    again = replace(first, finished_at=T0 + 5, passed=False, summary={"changed": 1}, detail={})
    await store.add(again)
    assert await store.get(first.id) == first
    assert await store.list(SLUG) == [replace(first, detail={})]
    await store.add(first)  # an add whose answer was lost, sent again
    assert await store.list(SLUG) == [replace(first, detail={})]


async def test_a_detail_over_the_limit_is_refused_and_nothing_written(place: Place) -> None:
    store = await place.open()
    # Just under the default limit is stored whole (a ~2 MiB value through each driver).
    under = run(detail={"text": "x" * (DEFAULT_MAX_DETAIL_BYTES - 11)})
    await store.add(under)
    assert await store.get(under.id) == under
    over = run(detail={"text": "x" * (DEFAULT_MAX_DETAIL_BYTES - 10)})
    with pytest.raises(EvalRunTooLarge, match="detail is 2,097,153 bytes encoded"):
        await store.add(over)
    assert await store.get(over.id) is None
    small = await place.open(max_detail_bytes=1000)
    refused = run(detail={"cases": ["y" * 1000]})
    with pytest.raises(EvalRunTooLarge, match="over the store's limit of 1,000"):
        await small.add(refused)
    assert await small.get(refused.id) is None
    assert ids(await small.list(SLUG)) == [under.id]


async def test_runs_outlive_the_store_object(place: Place) -> None:
    first = await place.open()
    runs = [run(finished_at=T0 + i) for i in range(3)]
    for r in runs:
        await first.add(r)
    await first.close()
    with pytest.raises(EvalRunsUnavailable, match="closed"):
        await first.get(runs[0].id)
    second = await place.open()
    assert ids(await second.list(SLUG)) == newest_first(runs)
    assert await second.get(runs[1].id) == runs[1]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_store_that_cannot_be_reached_says_so(kind: str, tmp_path: Path) -> None:
    closers: list[Callable[[], Awaitable[Any]]] = []
    if kind == "sqlite":
        (tmp_path / "a-file").write_text("not a folder")
        store = await open_sqlite(tmp_path / "a-file" / "registry.evals.db")
    elif kind == "redis":
        from proxy.evals.runs_redis import RedisEvalRunStore

        client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        closers.append(client.aclose)
        store = RedisEvalRunStore(client, "nobody:", op_timeout=1.0)
    else:
        from proxy.evals.runs_postgres import PostgresEvalRunStore

        url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
        pool: AsyncConnectionPool = new_pool(url, schema="nothing", max_size=1)
        await pool.open(wait=False)
        closers.append(pool.close)
        store = PostgresEvalRunStore(pool, schema="nothing", op_timeout=1.0)
    try:
        for call in (store.add(run()), store.get("some-id"), store.list(SLUG)):
            with pytest.raises(EvalRunsUnavailable) as raised:
                await call
            assert isinstance(raised.value, StoreUnavailable)  # answered 503 like the registry
    finally:
        await store.close()
        for close in closers:
            await close()


async def test_postgresql_runs_outlive_a_server_restart(
    fresh_postgres_server: PostgresServer,
) -> None:
    closers: list[Callable[[], Awaitable[Any]]] = []
    url, schema = fresh_postgres_server.new_database(), new_schema()
    try:
        store = await open_postgres(url, schema, closers)
        before = run()
        await store.add(before)
        fresh_postgres_server.restart()
        # The same store object: its pooled connection died with the server.
        assert await store.get(before.id) == before
        after = run(finished_at=T0 + 1)
        await store.add(after)
        reopened = await open_postgres(url, schema, closers)
        assert ids(await reopened.list(SLUG)) == [after.id, before.id]
    finally:
        for close in reversed(closers):
            await close()
