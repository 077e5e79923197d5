"""The in-process snapshot: what the request path reads while the store changes or fails."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from proxy.pipeline.resolve import slug_key
from proxy.prompt_key import InvalidPromptKey, PromptKey
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import RegistrySnapshot, VersionDraft
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreUnavailable

P = PromptKey("p")


class Flaky:
    """The real embedded store, with an off switch."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store
        self.down = False
        self.empty = False
        self.bugs = 0  # this many calls raise an error no store should raise

    async def snapshot(self) -> RegistrySnapshot:
        if self.down:
            raise StoreUnavailable("store is down")
        snap = await self.store.snapshot()
        return RegistrySnapshot(snap.revision + 1, {}, {}) if self.empty else snap

    async def wait_for_change(self, known: int, max_wait: float) -> int:
        if self.bugs:
            self.bugs -= 1
            raise AttributeError("'NoneType' object has no attribute 'read'")
        if self.down:
            raise StoreUnavailable("store is down")
        if self.empty:
            return (await self.store.revision()) + 1
        return await self.store.wait_for_change(known, max_wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    real = await EmbeddedStore.open(tmp_path / "r.db")
    yield Flaky(real)
    await real.close()


async def publish(store: Flaky, slug: str, text: str) -> int:
    version, _ = await store.create_version(VersionDraft(PromptKey(slug), text), "t", 1.0)
    await store.promote(PromptKey(slug), version.version, "t", "", 2.0)
    return version.version


async def until(predicate: Any, limit: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_empty_snapshot_never_replaces_a_non_empty_one() -> None:
    seen: list[int] = []
    holder = SnapshotHolder(on_apply=lambda s: seen.append(s.revision))
    assert holder.apply(RegistrySnapshot(1, {}, {}))  # empty at first is fine
    full = RegistrySnapshot(2, {PromptKey("a"): {}}, {})
    assert holder.apply(full)
    assert not holder.apply(RegistrySnapshot(3, {}, {}))
    assert holder.current is full
    assert seen == [1, 2]


async def test_refresher_follows_changes(store: Flaky) -> None:
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, max_wait=0.5)  # type: ignore[arg-type]
    task = asyncio.create_task(refresher.run())
    try:
        await publish(store, "p", "one")
        await until(lambda: holder.current.prod.get(P) == 1)
        await publish(store, "p", "two")
        await until(lambda: holder.current.prod.get(P) == 2)
    finally:
        task.cancel()


async def test_store_outage_keeps_serving_and_recovers(store: Flaky) -> None:
    errors: list[str] = []
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, max_wait=0.2, on_error=errors.append)  # type: ignore[arg-type]
    await publish(store, "p", "one")
    assert await refresher.load_once()
    task = asyncio.create_task(refresher.run())
    try:
        store.down = True
        await until(lambda: not holder.healthy)
        assert holder.current.prod == {P: 1}  # the last good snapshot
        assert errors
        await asyncio.sleep(0.3)
        assert holder.staleness >= 0.3
        store.down = False
        await publish(store, "p", "two")
        await until(lambda: holder.healthy and holder.current.prod.get(P) == 2)
    finally:
        task.cancel()


async def test_an_unexpected_error_does_not_end_the_refresher(store: Flaky) -> None:
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, max_wait=0.2)  # type: ignore[arg-type]
    await publish(store, "p", "one")
    assert await refresher.load_once()
    store.bugs = 3
    task = asyncio.create_task(refresher.run())
    try:
        await until(lambda: not holder.healthy)  # reported like an outage
        await until(lambda: store.bugs == 0)
        await publish(store, "p", "two")
        await until(lambda: holder.healthy and holder.current.prod.get(P) == 2)
        assert not task.done()
    finally:
        task.cancel()


async def test_reading_empty_does_not_spin_or_wipe(store: Flaky) -> None:
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, max_wait=0.2)  # type: ignore[arg-type]
    await publish(store, "p", "one")
    assert await refresher.load_once()
    calls = 0
    real_snapshot = store.snapshot

    async def counting() -> RegistrySnapshot:
        nonlocal calls
        calls += 1
        return await real_snapshot()

    store.snapshot = counting  # type: ignore[method-assign]
    store.empty = True
    task = asyncio.create_task(refresher.run())
    try:
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
    assert holder.current.prod == {P: 1}
    assert calls < 10  # refused once per revision, not in a tight loop


async def test_cold_start_with_the_store_down_is_not_loaded(store: Flaky) -> None:
    store.down = True
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)  # type: ignore[arg-type]
    assert not await refresher.load_once()
    assert not holder.loaded
    store.down = False
    assert await refresher.load_once()
    assert holder.loaded


async def test_a_snapshot_keys_every_table_by_the_same_key_objects(store: Flaky) -> None:
    await publish(store, "support", "You help.")
    await publish(store, "billing", "You bill.")
    snap = await store.snapshot()
    # The store builds each table from its own rows: equal keys, different objects.
    prod = dict(snap.prod)
    copied = RegistrySnapshot(
        snap.revision, snap.versions, {PromptKey(k.text): n for k, n in prod.items()}
    )
    versions_keys = {key.slug: key for key in copied.versions}
    assert set(copied.plain_keys) == {"support", "billing"}
    for slug, key in copied.plain_keys.items():
        assert key is versions_keys[slug]
    for key in copied.prod:
        assert key is versions_keys[key.slug]
    # A request naming a prompt by slug gets that object; an unknown slug a new, valid key.
    assert slug_key(copied, "support") is versions_keys["support"]
    assert slug_key(copied, "other") == PromptKey("other")
    with pytest.raises(InvalidPromptKey):
        slug_key(copied, "no spaces")
