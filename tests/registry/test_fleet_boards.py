"""The fleet boards on a real redis-server, a real PostgreSQL and a real SQLite file: what one
process writes, another reads, with ages from one clock; gone replicas are forgotten."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from proxy.registry.fleet import FleetBoard, FleetError, ReplicaBeat
from proxy.registry.fleet_embedded import EmbeddedFleetBoard, board_path
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.fleet_redis import RedisFleetBoard
from tests.redis_server import RedisServer
from tests.registry.pg_stores import open_pool


def beat(name: str, revision: int) -> ReplicaBeat:
    return ReplicaBeat(name, "host", 7, "0.1.0", revision, 1.5, 0.25, True)


@pytest.fixture(params=["embedded", "redis", "postgres"])
async def boards(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[FleetBoard, FleetBoard]]:
    """Two boards on one backend: two processes' views of it."""
    if request.param == "embedded":
        path = board_path(tmp_path / "registry.db")
        yield EmbeddedFleetBoard(path, 60.0), EmbeddedFleetBoard(path, 60.0)
        return
    if request.param == "postgres":
        url: str = request.getfixturevalue("registry_postgres_url")
        schema = f"test_{uuid.uuid4().hex[:8]}"
        pools = [await open_pool(url, schema), await open_pool(url, schema)]
        try:
            yield (
                await PostgresBoard.open(pools[0], schema=schema, forget_seconds=60.0),
                await PostgresBoard.open(pools[1], schema=schema, forget_seconds=60.0),
            )
        finally:
            for pool in pools:
                await pool.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    clients = [Redis.from_url(server.url), Redis.from_url(server.url)]
    try:
        yield RedisFleetBoard(clients[0], prefix, 60.0), RedisFleetBoard(clients[1], prefix, 60.0)
    finally:
        for client in clients:
            await client.aclose()


async def test_what_one_process_publishes_another_reads(
    boards: tuple[FleetBoard, FleetBoard],
) -> None:
    mine, theirs = boards
    assert (await theirs.read()).entries == []
    await mine.publish(beat("a", 3))
    await theirs.publish(beat("b", 4))
    await asyncio.sleep(0.05)
    read = await mine.read()
    by_name = {b.replica: (b, at) for b, at in read.entries}
    assert by_name["a"][0] == beat("a", 3)
    assert by_name["b"][0].revision == 4
    assert all(0.04 <= read.now - at < 5 for _, at in by_name.values())
    await mine.publish(beat("a", 5))  # a heartbeat replaces the entry
    read = await theirs.read()
    assert sorted((b.replica, b.revision) for b, _ in read.entries) == [("a", 5), ("b", 4)]
    await theirs.remove("b")
    assert [b.replica for b, _ in (await mine.read()).entries] == ["a"]


def test_the_embedded_board_sits_beside_the_registry_file(tmp_path: Path) -> None:
    assert board_path(tmp_path / "registry.db") == tmp_path / "registry.fleet.db"
    assert board_path(tmp_path / "reg") == tmp_path / "reg.fleet.db"


async def test_entries_of_replicas_gone_long_ago_are_forgotten(tmp_path: Path) -> None:
    now = [1000.0]
    board = EmbeddedFleetBoard(tmp_path / "f.db", 60.0, clock=lambda: now[0])
    await board.publish(beat("old", 1))
    now[0] += 61
    await board.publish(beat("new", 2))
    assert [b.replica for b, _ in (await board.read()).entries] == ["new"]


async def test_redis_board_forgets_gone_replicas(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    try:
        board = RedisFleetBoard(client, prefix, 60.0)
        await board.publish(beat("old", 1))
        # As if "old" last beat two minutes ago (server time, in ms).
        seconds, _micros = await client.time()
        await client.hset(f"{prefix}fleet:beat", "old", seconds * 1000 - 120_000)
        await board.publish(beat("new", 2))
        assert [b.replica for b, _ in (await board.read()).entries] == ["new"]
        assert 0 < await client.pttl(f"{prefix}fleet:info") <= 60_000
    finally:
        await client.aclose()


async def test_a_dead_redis_is_a_fleet_error() -> None:
    # Nothing listens on port 1.
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(FleetError):
            await RedisFleetBoard(client, "x:", 60.0).read()
    finally:
        await client.aclose()


def _delete_files(folder: Path) -> None:
    for leftover in folder.iterdir():
        leftover.unlink()


async def test_the_embedded_board_comes_back_after_its_file_is_deleted(tmp_path: Path) -> None:
    # A lost volume: the board file (and its WAL) vanish under running replicas, whose
    # heartbeats must write the board again, not fail with "no such table" forever.
    path = board_path(tmp_path / "data" / "registry.db")
    mine, theirs = EmbeddedFleetBoard(path, 60.0), EmbeddedFleetBoard(path, 60.0)
    await mine.publish(beat("a", 1))
    await theirs.publish(beat("b", 1))
    _delete_files(path.parent)
    path.parent.rmdir()
    await mine.publish(beat("a", 2))
    await theirs.publish(beat("b", 2))
    read = await theirs.read()
    assert sorted((b.replica, b.revision) for b, _ in read.entries) == [("a", 2), ("b", 2)]


async def test_the_embedded_board_recovers_from_a_file_replaced_by_an_empty_one(
    tmp_path: Path,
) -> None:
    path = board_path(tmp_path / "registry.db")
    board = EmbeddedFleetBoard(path, 60.0)
    await board.publish(beat("a", 1))
    _delete_files(tmp_path)
    path.touch()  # exists, but holds no table
    await board.publish(beat("a", 2))
    assert [(b.replica, b.revision) for b, _ in (await board.read()).entries] == [("a", 2)]


async def test_beats_carry_the_registry_they_serve(boards: tuple[FleetBoard, FleetBoard]) -> None:
    mine, theirs = boards
    sent = ReplicaBeat(
        "a", "host", 7, "0.1.0", 9, 1.5, 0.25, False, generation="g1", state="replaced", prompts=4
    )
    await mine.publish(sent)
    [(got, _)] = (await theirs.read()).entries
    assert got == sent
