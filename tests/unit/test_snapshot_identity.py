"""The refresher in front of a store that lost its data (real embedded store, its file
replaced under it): it keeps serving, records why, stops confirming the snapshot (so
staleness grows), and recovers by itself once the store is restored."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.backup import RegistryImage
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import VersionDraft
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from tests.unit.test_snapshot import until


def _replace_file(source: Path, target: Path) -> None:
    os.replace(source, target)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)


async def test_the_refresher_keeps_serving_a_replaced_store_until_it_is_restored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    store = await EmbeddedStore.open(path, poll_interval=0.01)
    other = await EmbeddedStore.open(tmp_path / "other.db")
    await other.close()
    try:
        version, _ = await store.create_version(VersionDraft(PromptKey("greet"), "hi"), "t", 1.0)
        await store.promote(PromptKey("greet"), version.version, "t", "", 2.0)
        holder = SnapshotHolder()
        refresher = SnapshotRefresher(store, holder, max_wait=0.05)
        assert await refresher.load_once()
        served = holder.current
        task = asyncio.create_task(refresher.run())
        try:
            confirmed = holder.confirmed_at
            _replace_file(tmp_path / "other.db", path)
            await until(lambda: holder.replaced is not None)
            assert holder.current is served
            assert holder.healthy  # reachable: registry_up stays 1
            await asyncio.sleep(0.2)  # several refresher rounds: none confirms the snapshot
            assert holder.confirmed_at == confirmed
            assert holder.replaced is not None

            image = RegistryImage.from_snapshot(served)
            await store.restore(image, await store.generation(), served.revision, "ops", "", 3.0)
            await until(lambda: holder.replaced is None)
            assert holder.current.versions == served.versions
            assert holder.confirmed_at > confirmed
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await store.close()
