"""One store, every part: `open_backend` opens the backend `registry.store` names, and that
backend alone decides where each piece of shared state lives.

Embedded: everything in this process (memory, the SQLite files, pair files). Redis: every
part on the one Redis, so a second replica sees what the first wrote (lease, analysis state
and pool, request index, fleet board, pairs); one ``close`` flushes what is queued and leaves
no connection behind (counted with CLIENT LIST on a private redis-server).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.analysis.lease import LocalLease, RedisLease
from proxy.analysis.lease_postgres import PostgresLease
from proxy.analysis.pool import MemoryStatsPool, RedisStatsPool
from proxy.analysis.pool_postgres import PostgresStatsPool
from proxy.analysis.state import AnalysisState, MemoryStateStore, RedisStateStore
from proxy.analysis.state_postgres import PostgresStateStore
from proxy.analysis.window import RolloutBatch
from proxy.backends.kinds import KINDS, describe_store
from proxy.backends.open import open_backend
from proxy.capture.captures_postgres import PostgresCaptureStore
from proxy.capture.captures_redis import RedisCaptureStore
from proxy.capture.captures_sqlite import SqliteCaptureStore
from proxy.capture.records import Capture, CapturesUnavailable, new_capture_id
from proxy.config import ProxyConfig, Settings
from proxy.evals.runs import EvalRun, EvalRunsUnavailable
from proxy.evals.runs_postgres import PostgresEvalRunStore
from proxy.evals.runs_redis import RedisEvalRunStore
from proxy.evals.runs_sqlite import SqliteEvalRunStore
from proxy.feedback import Answered, MemoryRequestIndex, RedisRequestIndex
from proxy.feedback_postgres import PostgresRequestIndex
from proxy.models import Route
from proxy.preflight import StartupError
from proxy.prompt_key import PromptKey
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.fleet import ReplicaBeat
from proxy.registry.fleet_embedded import EmbeddedFleetBoard
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.fleet_redis import RedisFleetBoard
from proxy.registry.postgres_store import PostgresStore
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import StoreUnavailable
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta
from proxy.shadow.sink_files import FilePairSink
from proxy.shadow.sink_postgres import PostgresPairSink
from proxy.shadow.sink_redis import RedisPairSink
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, running_redis
from tests.support import make_settings

SLUG = "support"
KEY = PromptKey(SLUG)

postgres_server = postgres_server_fixture("module")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def redis_settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    prefix = f"backend-{uuid.uuid4().hex[:8]}:"
    return make_settings(
        **{"registry.store": redis_server.url, "registry.redis_prefix": prefix, **overrides}
    )


def beat(replica: str) -> ReplicaBeat:
    return ReplicaBeat(replica, "host", 7, "0.1.0", 3, 1.5, 0.25, True)


def pair(n: int) -> Pair:
    meta = PairMeta(f"p{n}", KEY, "ro", ShadowKind.CANDIDATE.value, f"r{n}", Route.CHAT.value, True)
    return Pair.build(meta, ArmResult(version=1, text="a"), ArmResult(version=2, text="b"), 1.0)


def answered() -> Answered:
    return Answered(KEY, "2", "canary", "ro", time.time())


def eval_run() -> EvalRun:
    now = time.time()
    return EvalRun(
        id=f"{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}",
        slug=SLUG,
        candidate=2,
        baseline=1,
        kind="eval",
        actor="me",
        started_at=now - 1,
        finished_at=now,
        suite_name="support.eval.yaml",
        suite_sha256="0" * 64,
        judges=(),
        passed=True,
        summary={"pass_rate": 1.0},
        detail={"cases": []},
    )


def captured() -> Capture:
    now = time.time()
    return Capture(
        id=new_capture_id(now),
        slug=SLUG,
        version=2,
        arm="canary",
        rollout_id="ro",
        layers="base@2",
        tenant=None,
        prompt_hash="0" * 64,
        model="gpt-4o-mini",
        request={"messages": [{"role": "user", "content": "hi"}]},
        answer={"text": "hello", "finish_reason": "stop", "status": 200},
        at=now,
    )


def batch(requests: int) -> RolloutBatch:
    counts = RolloutBatch()
    counts.arm(int(time.time()), "canary").requests = requests
    return counts


async def promptproxy_clients(raw: Redis) -> dict[str, int]:
    """Connections the proxy has open on the server, by client name."""
    names: dict[str, int] = {}
    for client in await raw.client_list():
        name = client.get("name") or ""
        if name.startswith("promptproxy"):
            names[name] = names.get(name, 0) + 1
    return names


# -- embedded ------------------------------------------------------------------------------


async def test_the_embedded_backend_keeps_every_part_in_this_process(tmp_path: Path) -> None:
    settings = make_settings(
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
        }
    )
    async with await open_backend(settings, replica="me") as backend:
        assert not backend.shared
        assert backend.describe() == f"embedded:{tmp_path / 'registry.db'}"
        assert isinstance(backend.store, EmbeddedStore)
        assert isinstance(backend.board, EmbeddedFleetBoard)
        assert isinstance(backend.pool, MemoryStatsPool)
        assert isinstance(backend.lease, LocalLease)
        assert isinstance(backend.state, MemoryStateStore)
        assert isinstance(backend.index, MemoryRequestIndex)
        assert isinstance(backend.pairs, FilePairSink)
        assert isinstance(backend.evals, SqliteEvalRunStore)
        assert isinstance(backend.captures, SqliteCaptureStore)
        assert backend.lease.replica == "me"
        await backend.board.publish(beat("me"))
        backend.pairs.add(pair(1))
        run = eval_run()
        await backend.evals.add(run)
        call = captured()
        await backend.captures.add([call])
    # Closed: the queued pair is on disk, the registry file is released.
    assert [r["pair_id"] for r in await backend.pairs.read(KEY, None, 10)] == ["p1"]
    with pytest.raises(StoreUnavailable):
        await backend.store.revision()
    assert (tmp_path / "registry.fleet.db").exists()
    with pytest.raises(EvalRunsUnavailable):
        await backend.evals.get(run.id)
    with pytest.raises(CapturesUnavailable):
        await backend.captures.count(SLUG, since=0)
    async with await open_backend(settings, replica="me") as again:
        assert await again.evals.get(run.id) == run  # in registry.evals.db, kept
        assert await again.captures.read(SLUG, since=0) == [call]  # registry.captures.db
    await backend.close()  # again: nothing left to close, nothing raised


# -- Redis ---------------------------------------------------------------------------------


async def two_replicas_share_every_part(
    settings: Settings, kinds: tuple[type, ...], captures_kind: type
) -> None:
    """Two replicas on one shared store: every part is of the backend's kind, and what one
    writes the other reads (lease, analysis state and pool, request index, fleet board,
    pairs, eval runs, captured calls, the change notification)."""
    mine = await open_backend(settings, replica="replica-a")
    theirs = await open_backend(settings, replica="replica-b")
    try:
        assert mine.shared
        parts = (mine.store, mine.board, mine.pool, mine.lease, mine.state, mine.index)
        assert [type(p) for p in (*parts, mine.pairs, mine.evals)] == list(kinds)
        assert type(mine.captures) is captures_kind

        assert await mine.lease.hold(KEY)
        assert not await theirs.lease.hold(KEY)
        assert await theirs.lease.holder(KEY) == "replica-a"

        await mine.state.save(
            KEY, AnalysisState("ro", 2, 1.0, 2.0), {"rollout_id": "ro", "verdict": "hold"}
        )
        state, verdicts = await theirs.state.load(KEY)
        assert state is not None
        assert state.failures == 2
        assert verdicts == [{"rollout_id": "ro", "verdict": "hold"}]

        await mine.pool.add({(KEY, "ro"): batch(3)}, keep_seconds=60)
        await theirs.pool.add({(KEY, "ro"): batch(4)}, keep_seconds=60)
        now = time.time()
        window = await mine.pool.read(KEY, "ro", now - 5, now + 5)
        assert window.arm("canary").requests == 7

        mine.index.remember("req-1", answered())
        await mine.index.flush()  # type: ignore[attr-defined]
        found = await theirs.index.lookup("req-1")
        assert found is not None
        assert found.version == "2"

        await mine.board.publish(beat("replica-a"))
        assert [b.replica for b, _ in (await theirs.board.read()).entries] == ["replica-a"]

        run = eval_run()
        await mine.evals.add(run)
        assert await theirs.evals.list(SLUG) == [replace(run, detail={})]

        call = captured()
        await mine.captures.add([call])
        assert await theirs.captures.read(SLUG, since=0) == [call]

        revision = await mine.store.revision()
        await mine.store.wait_for_change(revision, 0.05)  # the change notification, subscribed
        mine.pairs.add(pair(1))
    finally:
        await mine.close()  # flushes the queued pair
        await theirs.close()
    async with await open_backend(settings, replica="replica-c") as later:
        assert [r["pair_id"] for r in await later.pairs.read(KEY, None, 10)] == ["p1"]


async def test_the_redis_backend_puts_every_part_on_the_one_redis(
    redis_server: RedisServer, raw: Redis
) -> None:
    settings = redis_settings(redis_server)
    prefix = settings.config.registry.redis_prefix
    await two_replicas_share_every_part(
        settings,
        (
            RedisStore,
            RedisFleetBoard,
            RedisStatsPool,
            RedisLease,
            RedisStateStore,
            RedisRequestIndex,
            RedisPairSink,
            RedisEvalRunStore,
        ),
        RedisCaptureStore,
    )
    # Every part wrote to this one Redis, under the deployment's prefix.
    keys = set(await raw.keys(f"{prefix}*"))
    assert {
        f"{prefix}{{analysis}}:lease:{SLUG}",
        f"{prefix}{{analysis}}:state:{SLUG}",
        f"{prefix}{{analysis}}:verdicts:{SLUG}",
        f"{prefix}answer:req-1",
        f"{prefix}fleet:beat",
        f"{prefix}{{shadow}}:pairs:{SLUG}",
        f"{prefix}{{evals}}:slug:{SLUG}",
        f"{prefix}{{captures}}:slug:{SLUG}",
    } <= keys
    assert any(key.startswith(f"{prefix}{{analysis}}:w:{SLUG}:ro:") for key in keys)


async def test_closing_the_redis_backend_leaves_no_connection_behind(
    redis_server: RedisServer, raw: Redis
) -> None:
    settings = redis_settings(redis_server)
    assert await promptproxy_clients(raw) == {}
    backend = await open_backend(settings, replica="me")
    # Use every part, so every client holds a connection (the registry's two: commands
    # and the change-notification subscription).
    revision = await backend.store.revision()
    await backend.store.wait_for_change(revision, 0.05)
    await backend.board.publish(beat("me"))
    await backend.lease.hold(KEY)
    await backend.state.load(KEY)
    await backend.pool.read(KEY, "ro", 0, 1)
    await backend.index.first_feedback("req-1", "thumbs_up")
    backend.pairs.add(pair(1))
    await backend.pairs.read(KEY, None, 1)
    opened = await promptproxy_clients(raw)
    # One shared client for the board, pool, lease, state and request index (used one after
    # another here, so one connection), the registry's own, the sink's writer and reader.
    assert opened["promptproxy-analysis"] == 1
    assert opened["promptproxy-registry"] == 2
    assert set(opened) == {
        "promptproxy-analysis",
        "promptproxy-registry",
        "promptproxy-shadow-writer",
        "promptproxy-shadow-reader",
    }

    await backend.close()
    assert await promptproxy_clients(raw) == {}
    await backend.close()  # idempotent


async def test_many_backends_opened_and_closed_leak_nothing(
    redis_server: RedisServer, raw: Redis
) -> None:
    settings = redis_settings(redis_server)
    for n in range(5):
        async with await open_backend(settings, replica=f"r{n}") as backend:
            await backend.lease.hold(KEY)
            await backend.store.revision()
            backend.pairs.add(pair(n))
    assert await promptproxy_clients(raw) == {}


async def test_the_pair_counters_are_the_ones_handed_in(redis_server: RedisServer) -> None:
    registry = CollectorRegistry()
    settings = redis_settings(redis_server)
    backend = await open_backend(settings, replica="me", pair_metrics=ShadowMetrics(registry))
    backend.pairs.add(pair(1))
    await backend.close()
    written = registry.get_sample_value("promptproxy_shadow_pairs_total", {"outcome": "written"})
    assert written == 1


def test_describe_never_shows_credentials() -> None:
    assert describe_store("redis://user:s3cret@127.0.0.1:1/0?password=x") == (
        "redis://127.0.0.1:1/0"
    )
    assert describe_store("postgresql://app:pw@db.internal:5432/prompts") == (
        "postgresql://db.internal:5432/prompts"
    )
    assert describe_store("embedded:/var/lib/promptproxy/registry.db") == (
        "embedded:/var/lib/promptproxy/registry.db"
    )


# -- refused at open -----------------------------------------------------------------------


async def test_the_postgresql_backend_puts_every_part_in_the_one_database(
    postgres_server: PostgresServer,
) -> None:
    settings = make_settings(**{"registry.store": postgres_server.new_database()})
    await two_replicas_share_every_part(
        settings,
        (
            PostgresStore,
            PostgresBoard,
            PostgresStatsPool,
            PostgresLease,
            PostgresStateStore,
            PostgresRequestIndex,
            PostgresPairSink,
            PostgresEvalRunStore,
        ),
        PostgresCaptureStore,
    )


async def test_closing_the_postgresql_backend_leaves_no_connection_behind(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database()
    database = url.rpartition("/")[2]
    settings = make_settings(**{"registry.store": url})

    def connections() -> int:
        import psycopg

        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone()
        return int(row[0]) if row else 0

    for n in range(3):
        backend = await open_backend(settings, replica=f"r{n}")
        revision = await backend.store.revision()
        await backend.store.wait_for_change(revision, 0.05)  # the LISTEN connection is up
        await backend.lease.hold(KEY)
        backend.pairs.add(pair(n))
        assert connections() >= 2
        await backend.close()
        await backend.close()  # idempotent
        # A server process leaves pg_stat_activity a moment after its client has gone.
        for _ in range(50):
            if connections() == 0:
                break
            await asyncio.sleep(0.1)
        assert connections() == 0


async def test_settings_not_built_by_load_config_are_refused_too(
    redis_server: RedisServer,
) -> None:
    config = ProxyConfig.model_validate(
        {"registry": {"store": redis_server.url}, "shadow": {"sink": {"kind": "files"}}}
    )
    with pytest.raises(StartupError, match=r"shadow\.sink\.kind: `files`"):
        await open_backend(Settings(config=config, upstream_api_key=None), replica="me")


def test_every_backend_module_opens_with_the_same_signature() -> None:
    for kind in KINDS:
        try:
            module = importlib.import_module(kind.module)
        except ModuleNotFoundError:
            continue  # a backend this build does not have (tested above)
        opener = module.open_backend
        assert inspect.iscoroutinefunction(opener)
        assert list(inspect.signature(opener).parameters) == ["settings", "context"]
