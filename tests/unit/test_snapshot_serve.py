"""``SnapshotRefresher.serve``: an admin write makes its own process serve it before it
answers, and a slower read that started before the write never takes it back."""

from __future__ import annotations

import asyncio

from proxy.prompt_key import PromptKey
from proxy.registry.models import RegistrySnapshot
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreUnavailable

P = PromptKey("p")


class SlowStore:
    """A store whose revision moves on ``write()``; a read can be held mid-flight."""

    def __init__(self) -> None:
        self.revision_now = 1
        self.hold_next_read: asyncio.Event | None = None
        self.down = False

    def write(self) -> None:
        self.revision_now += 1

    async def snapshot(self) -> RegistrySnapshot:
        if self.down:
            raise StoreUnavailable("down")
        revision = self.revision_now  # what the store holds when the read starts
        gate, self.hold_next_read = self.hold_next_read, None
        if gate is not None:
            await gate.wait()
        return RegistrySnapshot(revision, {P: {}}, {P: revision})


async def test_serve_loads_the_written_revision_at_once() -> None:
    store = SlowStore()
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)  # type: ignore[arg-type]
    assert await refresher.load_once()
    store.write()
    assert holder.current.revision == 1
    assert await refresher.serve(2)
    assert holder.current.revision == 2


async def test_a_read_started_before_the_write_does_not_undo_it() -> None:
    store = SlowStore()
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)  # type: ignore[arg-type]
    gate = asyncio.Event()
    store.hold_next_read = gate
    background = asyncio.create_task(refresher.load_once())  # reads revision 1, held
    await asyncio.sleep(0)
    store.write()  # revision 2, written through this process
    serving = asyncio.create_task(refresher.serve(2))
    await asyncio.sleep(0.01)
    gate.set()
    assert await serving
    assert await background
    assert holder.current.revision == 2
    assert holder.current.prod == {P: 2}


async def test_serve_reports_a_store_failure_instead_of_raising() -> None:
    store = SlowStore()
    errors: list[str] = []
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, on_error=errors.append)  # type: ignore[arg-type]
    assert await refresher.load_once()
    store.write()
    store.down = True
    assert not await refresher.serve(2)
    assert holder.current.revision == 1
    assert errors == ["snapshot"]
