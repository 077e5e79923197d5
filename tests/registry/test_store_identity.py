"""A store that lost its data is not an empty registry (both stores).

A store instance binds to the generation it first reads or creates. Emptied (FLUSHALL, a
deleted file), replaced (another registry) or put back to an older copy, the store raises
``StoreReplaced`` on ``snapshot`` and refuses every write atomically: nothing is written,
so version numbers can never restart at 1 in an emptied store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest
import redis.asyncio

from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import Status
from proxy.registry.store import PromptStore, StoreReplaced
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import T0, draft, push


def _drop_wal(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _flushall(factory: StoreFactory) -> None:
    client = redis.asyncio.Redis.from_url(factory.redis_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def _empty(factory: StoreFactory, tmp_path: Path) -> None:
    """What an operator's accident does: FLUSHALL, or the file gone (a lost volume)."""
    if factory.kind == "redis":
        await _flushall(factory)
    else:
        assert factory.db_path is not None
        factory.db_path.unlink()
        _drop_wal(factory.db_path)


async def _replace(factory: StoreFactory, tmp_path: Path) -> None:
    """Another registry where this one was: a wrong database, another volume."""
    if factory.kind == "redis":
        await _flushall(factory)
        other = await factory.new()
        await push(other, "someone else's prompt", slug="other")
    else:
        assert factory.db_path is not None
        other_path = tmp_path / "other.db"
        other = await EmbeddedStore.open(other_path)
        await push(other, "someone else's prompt", slug="other")
        await other.close()
        os.replace(other_path, factory.db_path)
        _drop_wal(factory.db_path)  # a replaced volume brings no stale WAL along


def _writes(store: PromptStore) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "create_version": lambda: store.create_version(draft("new"), "alice", T0),
        "promote": lambda: store.promote("greet", 1, "alice", "", T0),
        "rollback": lambda: store.rollback("greet", "alice", "", T0),
        "set_status": lambda: store.set_status("greet", 1, Status.CANDIDATE, "alice", "", T0),
    }


@pytest.mark.parametrize("accident", [_empty, _replace], ids=["emptied", "replaced"])
async def test_a_lost_store_is_reported_and_refuses_every_write(
    store_factory: StoreFactory,
    tmp_path: Path,
    accident: Callable[[StoreFactory, Path], Awaitable[None]],
) -> None:
    store = await store_factory.new()
    assert await push(store, "one", "two") == [1, 2]
    served = await store.snapshot()
    assert served.generation

    await accident(store_factory, tmp_path)

    with pytest.raises(StoreReplaced, match="emptied or replaced"):
        await store.snapshot()
    for name, write in _writes(store).items():
        with pytest.raises(StoreReplaced):
            await write()
        assert "greet" not in await store.list_slugs(), f"{name} wrote into the lost store"


async def test_a_process_that_never_saw_the_store_adopts_it(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """A fresh install (or a replica started after the accident) has nothing to compare
    with: it starts a generation with its first write, and keeps it."""
    store = await store_factory.new()
    assert (await store.snapshot()).generation is None or store_factory.kind == "embedded"
    await push(store, "one")
    first = (await store.snapshot()).generation
    assert first
    other = await store_factory.new()
    await push(other, "two")
    assert (await store.snapshot()).generation == (await other.snapshot()).generation == first


async def test_concurrent_first_writes_agree_on_one_generation(
    store_factory: StoreFactory,
) -> None:
    a, b = await store_factory.new(), await store_factory.new()
    await push(a, "from a", slug="a")
    await push(b, "from b", slug="b")
    assert (await a.snapshot()).generation == (await b.snapshot()).generation


async def test_an_older_copy_put_back_is_a_lost_store(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path)
    try:
        await push(store, "one")
        await store.snapshot()
        backup = tmp_path / "backup.db"
        with closing(sqlite3.connect(path)) as live, closing(sqlite3.connect(backup)) as copy:
            live.backup(copy)
        await push(store, "two", "three")
        await store.snapshot()
        os.replace(backup, path)
        _drop_wal(path)
        with pytest.raises(StoreReplaced, match="went back"):
            await store.snapshot()
        with pytest.raises(StoreReplaced, match="went back"):
            await store.create_version(draft("four"), "alice", time.time())
    finally:
        await store.close()
