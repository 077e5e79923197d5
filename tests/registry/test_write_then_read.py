"""Reads that follow a write: a write that worked is answered as done even when loading it
here finds the store lost (it used to be a 500 after the write), and an export is the
snapshot and audit log of one revision even when a write lands while it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import RegistrySnapshot
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreReplaced
from tests.registry.helpers import GREET, draft


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


class WriteDuringAuditRead:
    """A push lands between an export's snapshot read and its audit read."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store
        self.writes = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def audit(self, *args: Any) -> Any:
        if self.writes:
            self.writes -= 1
            await self._store.create_version(draft("pushed meanwhile"), "bob", 2.0)
        return await self._store.audit(*args)


async def test_an_export_is_one_revision_even_when_a_write_lands_while_reading(
    tmp_path: Path,
) -> None:
    store = await EmbeddedStore.open(tmp_path / "registry.db")
    try:
        await store.create_version(draft("hello"), "alice", 1.0)
        racing: Any = WriteDuringAuditRead(store)

        image = await RegistryRecovery(racing, SnapshotHolder()).export()

        assert image.revision == 2
        assert sorted(image.versions[GREET]) == [1, 2]
        assert [e.seq for e in image.audit] == [1, 2]  # the audit of that same revision
    finally:
        await store.close()
