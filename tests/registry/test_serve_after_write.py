"""A write that worked is answered as done even when loading it here finds the store lost
(``RegistryService._serve_here`` never raises): it used to be a 500 after the write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import RegistrySnapshot
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreReplaced
from tests.registry.helpers import draft


class LostAfterWrite:
    """The store: every write works, then the read that follows finds it replaced (another
    process's restore or an operator's mistake in between)."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def snapshot(self) -> RegistrySnapshot:
        raise StoreReplaced("the registry store holds generation x, not ...: replaced")


async def test_a_push_whose_snapshot_read_finds_the_store_lost_still_answers(
    tmp_path: Path,
) -> None:
    store = await EmbeddedStore.open(tmp_path / "registry.db")
    try:
        lost: Any = LostAfterWrite(store)
        holder = SnapshotHolder()
        refresher = SnapshotRefresher(lost, holder)
        service = RegistryService(lost, serve=refresher.serve)

        version, created = await service.push(draft("hello"), "alice")
        served = await service.served()

        assert (version.version, created) == (1, True)
        assert (served.revision, served.here) == (1, False)
        assert holder.replaced is not None  # reported, not raised
    finally:
        await store.close()
