"""A restore from a replica looks at the fleet: a live replica that served a newer snapshot
of the registry is the one to restore from, and no revision number is handed out twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import Conflict
from proxy.registry.fleet import BoardRead, Fleet, ReplicaBeat
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import T0, push
from tests.registry.test_store_identity import _empty

NOW = 1000.0


class Board:
    """Fixed heartbeats: name -> (revision, seconds since its last beat)."""

    def __init__(self, beats: dict[str, tuple[int, float]]) -> None:
        self.beats = beats

    async def read(self) -> BoardRead:
        entries = [
            (ReplicaBeat(name, "host", 1, "0.1.0", revision, 1.0, 0.1, True), NOW - age)
            for name, (revision, age) in self.beats.items()
        ]
        return BoardRead(NOW, entries)

    async def publish(self, beat: ReplicaBeat) -> None:
        raise NotImplementedError

    async def remove(self, replica: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def test_a_restore_from_a_staler_replica_is_refused_naming_the_fresher_one(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory.new()
    await push(store, "one", "two")
    holder = SnapshotHolder()
    assert await SnapshotRefresher(store, holder).load_once()
    served = holder.current.revision
    await _empty(store_factory, tmp_path)
    assert not await SnapshotRefresher(store, holder).load_once()
    board = Board({"me": (served, 0.5), "b": (served + 3, 0.5), "gone": (served + 9, 60.0)})
    recovery = RegistryRecovery(store, holder, lambda: T0, fleet=Fleet(board, "me", 5.0))

    with pytest.raises(Conflict) as refused:
        await recovery.restore_from_snapshot("ops", "")

    assert refused.value.code == "fresher_replica"
    assert f"Replica b serves a newer snapshot of this registry (revision {served + 3})" in (
        refused.value.message
    )
    assert await store.list_keys() == []  # nothing written

    # Once b is gone too (not live), this replica's snapshot is the newest left; the new
    # revision goes above every revision on the board, the dead replica's included.
    board.beats["b"] = (served + 3, 60.0)
    result = await recovery.restore_from_snapshot("ops", "")
    assert result.revision == served + 10


async def test_an_import_goes_above_every_revision_on_the_board(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory.new()
    await push(store, "one")
    holder = SnapshotHolder()
    recovery = RegistryRecovery(store, holder, lambda: T0)
    export = await recovery.export()
    await _empty(store_factory, tmp_path)
    store = await store_factory.new()  # a fresh process: it never saw the registry
    board = Board({"me": (0, 0.5), "old": (export.revision + 40, 60.0)})
    into = RegistryRecovery(store, SnapshotHolder(), lambda: T0, fleet=Fleet(board, "me", 5.0))

    result = await into.import_image(export, "ops", "")

    assert result.revision == export.revision + 41
