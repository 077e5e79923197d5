"""The captured calls of every backend keep the same promise
(``proxy.capture.records.CaptureStore``): a capture reads back exactly as it was added; a
slug's read is oldest first (by ``at``, then id), ``since <= at < until``, at most ``limit``
long; ``count`` agrees; adding an id again changes nothing; a batch is written whole, and a
batch holding a capture over ``max_bytes`` is refused with nothing of it written; a slug
keeps its newest ``keep_per_slug`` and nothing older than ``keep_hours`` (by the store's
clock, which the tests hold); captures outlive the store object; a store that cannot be
reached says so with ``CapturesUnavailable``, the registry's ``StoreUnavailable``; on
PostgreSQL, captures outlive a server restart.

Each backend runs the same tests: the embedded SQLite file, a private redis-server and a
private PostgreSQL (started by the tests). Two store objects on one place are two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from proxy.capture.records import (
    DEFAULT_MAX_BYTES,
    Capture,
    CaptureError,
    CaptureStore,
    CapturesUnavailable,
    CaptureTooLarge,
    encode,
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
HOUR = 3600.0
SLUG = "support-reply"
#: Everything before this is long gone by any store's reckoning.
EVER = 0.0


class Clock:
    """The store's clock, held by the test: an hour after T0 unless moved."""

    def __init__(self) -> None:
        self.now = T0 + HOUR

    def __call__(self) -> float:
        return self.now


@dataclass
class Place:
    """Where one backend keeps captures; ``open`` makes another store object on it (its own
    connection or pool, as another replica or a restarted process would have), on the
    place's clock."""

    kind: str
    opener: Callable[..., Awaitable[CaptureStore]]
    clock: Clock = field(default_factory=Clock)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def open(self, **options: Any) -> CaptureStore:
        store = await self.opener(clock=self.clock, **options)
        self.closers.append(store.close)
        return store


async def open_sqlite(path: Path, **options: Any) -> CaptureStore:
    from proxy.capture.captures_sqlite import SqliteCaptureStore

    return SqliteCaptureStore(path, **options)


async def open_postgres(
    url: str, schema: str, closers: list[Callable[[], Awaitable[Any]]], **options: Any
) -> CaptureStore:
    from proxy.capture.captures_postgres import PostgresCaptureStore

    pool: AsyncConnectionPool = new_pool(url, schema=schema, max_size=2)
    await pool.open(wait=True, timeout=10)
    closers.append(pool.close)
    return PostgresCaptureStore(pool, schema=schema, **options)


@contextlib.asynccontextmanager
async def place_of(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Place]:
    # Imported here: each backend's store imports its driver only when it is used.
    closers: list[Callable[[], Awaitable[Any]]] = []
    if kind == "sqlite":
        path = tmp_path / "registry.captures.db"

        async def opener(**options: Any) -> CaptureStore:
            return await open_sqlite(path, **options)

    elif kind == "redis":
        from proxy.capture.captures_redis import RedisCaptureStore

        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"captures-{uuid.uuid4().hex[:8]}:"

        async def opener(**options: Any) -> CaptureStore:
            client = Redis.from_url(server.url)
            closers.append(client.aclose)
            return RedisCaptureStore(client, prefix, **options)

    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url, schema = pg.new_database(), new_schema()

        async def opener(**options: Any) -> CaptureStore:
            return await open_postgres(url, schema, closers, **options)

    place = Place(kind, opener)
    try:
        yield place
    finally:
        for close in reversed(place.closers + closers):
            await close()


@pytest.fixture(params=KINDS)
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    async with place_of(request.param, request, tmp_path) as made:
        yield made


@pytest.fixture
async def store(place: Place) -> CaptureStore:
    return await place.open()


_serial = iter(range(10**9))


def capture(
    slug: str = SLUG, at: float = T0, capture_id: str | None = None, **changes: Any
) -> Capture:
    number = next(_serial)
    made = Capture(
        id=capture_id or f"{int(at * 1000):013d}-{number:08x}",
        slug=slug,
        version=3,
        arm="stable",
        rollout_id="ro-1",
        layers="base@3",
        tenant="acme",
        prompt_hash="ab" * 32,
        model="gpt-4o-mini",
        request={"messages": [{"role": "user", "content": f"question {number}"}]},
        answer={"text": f"answer {number}", "finish_reason": "stop", "status": 200},
        at=at,
    )
    return replace(made, **changes) if changes else made


def ids(captures: list[Capture]) -> list[str]:
    return [c.id for c in captures]


def oldest_first(captures: list[Capture]) -> list[str]:
    return ids(sorted(captures, key=lambda c: c.order))


# -- the contract ---------------------------------------------------------------------------


async def test_a_capture_reads_back_exactly(store: CaptureStore) -> None:
    added = capture(
        slug="tier=gold/support-réponse@claude-日本",
        version=12,
        arm="canary",
        rollout_id="ro-ü",
        layers="guardrails@2,tier:gold@1,base@12",
        tenant="zoë 🚀",
        model="claude-3-5-sonnet",
        request={
            "messages": [
                {"role": "system", "content": "ignored"},
                {"role": "user", "content": "a\x00b — «ok» 返金"},
            ],
            "prompt_variables": {"name": "Zoë", "": "an empty key", "n": 2**53 + 1},
            "params": {"temperature": 0.1 + 0.2, "stop": ["\n"], "tiny": 1e-300, "z": -0.0},
        },
        answer={
            "text": "réponse 🚀",
            "finish_reason": "tool_calls",
            "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": '{"a": [1]}'}}],
            "status": 200,
            "nested": {"a": [1, {"b": [True, False, None, 1.5e300]}]},
        },
        at=T0 + 0.123456789,
    )
    bare = capture(rollout_id=None, layers=None, tenant=None, prompt_hash=None, model=None)
    await store.add([added, bare])
    assert await store.read(added.slug, since=EVER) == [added]
    assert await store.read(SLUG, since=EVER) == [bare]
    got = (await store.read(added.slug, since=EVER))[0]
    assert got.at == T0 + 0.123456789  # not rounded on the way
    assert got.request["params"]["temperature"] == 0.1 + 0.2


async def test_a_read_is_oldest_first_by_at_then_id(store: CaptureStore) -> None:
    rng = random.Random(8)
    # Ties on at: the id decides. Added in no particular order, over several batches.
    captures = [capture(at=T0 + rng.choice([0, 1, 2, 2.5])) for _ in range(12)]
    captures += [capture(at=T0 + 1, capture_id=f"tie-{letter}") for letter in "bca"]
    shuffled = rng.sample(captures, len(captures))
    for start in range(0, len(shuffled), 4):
        await store.add(shuffled[start : start + 4])
    assert ids(await store.read(SLUG, since=EVER)) == oldest_first(captures)
    assert await store.count(SLUG, since=EVER) == len(captures)


async def test_a_read_keeps_to_its_slug_and_bounds(store: CaptureStore) -> None:
    # Slugs that could share a key prefix or a delimiter with SLUG.
    slugs = [SLUG, "support", "support-reply@claude", "support-reply:2", "tier=gold/" + SLUG]
    captures = [capture(slug=slug, at=T0 + i) for slug in slugs for i in range(6)]
    await store.add(captures)
    for slug in slugs:
        mine = [c for c in captures if c.slug == slug]
        assert ids(await store.read(slug, since=EVER)) == oldest_first(mine)
        # since is included, until is not.
        assert ids(await store.read(slug, since=T0 + 2)) == oldest_first(mine)[2:]
        assert ids(await store.read(slug, since=T0 + 1, until=T0 + 4)) == oldest_first(mine)[1:4]
        assert ids(await store.read(slug, since=T0 + 1.5, until=T0 + 3.5)) == [
            mine[2].id,
            mine[3].id,
        ]
        assert await store.read(slug, since=T0 + 3, until=T0 + 3) == []
        assert await store.read(slug, since=T0 + 6) == []
        assert await store.count(slug, since=T0 + 2) == 4
        assert await store.count(slug, since=T0 + 6) == 0
    assert await store.read("no-such-slug", since=EVER) == []
    assert await store.count("no-such-slug", since=EVER) == 0


async def test_a_read_stops_at_its_limit(store: CaptureStore) -> None:
    captures = [capture(at=T0 + i) for i in range(9)]
    await store.add(captures)
    assert ids(await store.read(SLUG, since=EVER, limit=3)) == ids(captures[:3])
    assert ids(await store.read(SLUG, since=T0 + 4, limit=2)) == ids(captures[4:6])
    assert ids(await store.read(SLUG, since=EVER, limit=1)) == [captures[0].id]
    assert len(await store.read(SLUG, since=EVER)) == 9  # the default limit is 1000
    with pytest.raises(CaptureError, match="limit"):
        await store.read(SLUG, since=EVER, limit=0)


async def test_adding_an_id_again_changes_nothing(store: CaptureStore) -> None:
    first = capture()
    await store.add([first])
    changed = replace(first, at=T0 + 5, version=9, answer={"text": "changed"})
    await store.add([changed])
    assert await store.read(SLUG, since=EVER) == [first]
    # A batch whose answer was lost, sent again; and one id twice in a batch: the first kept.
    batch = [capture(at=T0 + 1), capture(at=T0 + 2)]
    await store.add(batch)
    await store.add(batch)
    twice = capture(at=T0 + 3)
    await store.add([twice, replace(twice, answer={"text": "the second"})])
    assert await store.read(SLUG, since=EVER) == [first, *batch, twice]
    assert await store.count(SLUG, since=EVER) == 4
    await store.add([])  # nothing to write, nothing raised
    assert await store.count(SLUG, since=EVER) == 4


async def test_a_slug_keeps_its_newest_captures(place: Place) -> None:
    store = await place.open(keep_per_slug=4)
    captures = [capture(at=T0 + i) for i in range(7)]
    other = [capture(slug="billing", at=T0 - 100 + i) for i in range(3)]
    await store.add(captures[:3] + other)
    await store.add(captures[3:5])
    await store.add(captures[5:])
    kept = ids(captures[3:])
    assert ids(await store.read(SLUG, since=EVER)) == kept
    assert await store.count(SLUG, since=EVER) == 4
    assert ids(await store.read("billing", since=EVER)) == ids(other)  # another slug's own
    # Older than every capture kept: deleted by its own add.
    await store.add([capture(at=T0 - 1)])
    assert ids(await store.read(SLUG, since=EVER)) == kept
    # A batch larger than what is kept: its newest stay.
    bigger = [capture(at=T0 + 10 + i) for i in range(6)]
    await store.add(list(reversed(bigger)))
    assert ids(await store.read(SLUG, since=EVER)) == ids(bigger[2:])


async def test_replicas_adding_at_once_keep_exactly_the_newest(place: Place) -> None:
    stores = [await place.open(keep_per_slug=5) for _ in range(2)]
    captures = [capture(slug=("a", "b")[i % 2], at=T0 + i) for i in range(40)]
    batches = [captures[i : i + 3] for i in range(0, len(captures), 3)]
    await asyncio.gather(*(stores[i % 2].add(batch) for i, batch in enumerate(batches)))
    for slug in ("a", "b"):
        mine = [c for c in captures if c.slug == slug]
        assert ids(await stores[0].read(slug, since=EVER)) == ids(mine[-5:])


async def test_nothing_older_than_keep_hours_is_read_or_kept(place: Place) -> None:
    store = await place.open(keep_hours=2)
    clock = place.clock  # at T0 + 1 h: T0 - 1 h is the oldest kept
    already_gone = capture(at=T0 - HOUR - 1)
    # A minute left: not at the very edge, as Redis expires keys on its own clock.
    edge = capture(at=T0 - HOUR + 60)
    young = [capture(at=T0 + i) for i in range(3)]
    await store.add([already_gone, edge, *young])  # the first is not written
    assert ids(await store.read(SLUG, since=EVER)) == ids([edge, *young])
    assert await store.count(SLUG, since=EVER) == 4

    # Time passes: whatever is over two hours old is gone from reads and counts at once,
    # before any add (Redis: before its key's expiry, which the tests do not wait for).
    clock.now = T0 + 2 * HOUR + 1.5  # T0 + 1.5 s is the oldest kept
    assert ids(await store.read(SLUG, since=EVER)) == ids(young[2:])
    assert await store.count(SLUG, since=EVER) == 1
    assert ids(await store.read(SLUG, since=EVER, until=T0 + 2)) == []

    # The next add deletes them: with the clock put back, they stay gone.
    late = capture(at=T0 + 2 * HOUR)
    await store.add([late])
    clock.now = T0 + HOUR
    assert ids(await store.read(SLUG, since=EVER)) == ids([young[2], late])
    assert await store.count(SLUG, since=EVER) == 2


async def test_a_capture_over_the_limit_is_refused_with_its_whole_batch(place: Place) -> None:
    store = await place.open()
    # Just under the default limit is stored whole (a 64 KiB value through each driver).
    base = capture(answer={"text": ""})
    under = replace(base, answer={"text": "x" * (DEFAULT_MAX_BYTES - len(encode(base)))})
    assert len(encode(under)) == DEFAULT_MAX_BYTES
    await store.add([under])
    assert await store.read(SLUG, since=EVER) == [under]
    over_id = "1765000000000-ffffffff"  # as long as under's
    over = replace(under, id=over_id, answer={"text": under.answer["text"] + "y"})
    fine = [capture(at=T0 + 1), capture(slug="billing", at=T0 + 2)]
    with pytest.raises(
        CaptureTooLarge, match=f"capture {over_id}: {DEFAULT_MAX_BYTES + 1:,} bytes"
    ):
        await store.add([fine[0], over, fine[1]])
    assert ids(await store.read(SLUG, since=EVER)) == [under.id]
    assert await store.read("billing", since=EVER) == []

    small = await place.open(max_bytes=1000)
    with pytest.raises(CaptureTooLarge, match="over the store's limit of 1,000"):
        await small.add([capture(request={"messages": ["y" * 1000]})])
    with pytest.raises(CaptureTooLarge):
        await small.add([under])  # what another store took, this one refuses
    assert await small.count(SLUG, since=EVER) == 1


async def test_captures_outlive_the_store_object(place: Place) -> None:
    first = await place.open()
    captures = [capture(at=T0 + i) for i in range(3)]
    await first.add(captures)
    await first.close()
    for call in (
        first.add([capture()]),
        first.read(SLUG, since=EVER),
        first.count(SLUG, since=EVER),
    ):
        with pytest.raises(CapturesUnavailable, match="closed"):
            await call
    await first.close()  # idempotent
    second = await place.open()
    assert await second.read(SLUG, since=EVER) == captures


@pytest.mark.parametrize("kind", KINDS)
async def test_a_store_that_cannot_be_reached_says_so(kind: str, tmp_path: Path) -> None:
    closers: list[Callable[[], Awaitable[Any]]] = []
    store: CaptureStore
    if kind == "sqlite":
        (tmp_path / "a-file").write_text("not a folder")
        store = await open_sqlite(tmp_path / "a-file" / "registry.captures.db")
    elif kind == "redis":
        from proxy.capture.captures_redis import RedisCaptureStore

        client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        closers.append(client.aclose)
        store = RedisCaptureStore(client, "nobody:", op_timeout=1.0)
    else:
        from proxy.capture.captures_postgres import PostgresCaptureStore

        url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
        pool: AsyncConnectionPool = new_pool(url, schema="nothing", max_size=1)
        await pool.open(wait=False)
        closers.append(pool.close)
        store = PostgresCaptureStore(pool, schema="nothing", op_timeout=1.0)
    try:
        now = capture(at=time.time())
        for call in (
            store.add([now]),
            store.read(SLUG, since=EVER),
            store.count(SLUG, since=EVER),
        ):
            with pytest.raises(CapturesUnavailable) as raised:
                await call
            assert isinstance(raised.value, StoreUnavailable)  # answered 503 like the registry
    finally:
        await store.close()
        for close in closers:
            await close()


async def test_postgresql_captures_outlive_a_server_restart(
    fresh_postgres_server: PostgresServer,
) -> None:
    closers: list[Callable[[], Awaitable[Any]]] = []
    url, schema = fresh_postgres_server.new_database(), new_schema()
    clock = Clock()
    try:
        store = await open_postgres(url, schema, closers, clock=clock)
        before = capture()
        await store.add([before])
        fresh_postgres_server.restart()
        # The same store object: its pooled connection died with the server.
        assert await store.read(SLUG, since=EVER) == [before]
        after = capture(at=T0 + 1)
        await store.add([after])
        reopened = await open_postgres(url, schema, closers, clock=clock)
        assert await reopened.read(SLUG, since=EVER) == [before, after]
    finally:
        for close in reversed(closers):
            await close()
