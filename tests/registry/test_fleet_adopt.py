"""A process started after the store lost its data does not start a new registry (both
stores): it reads the fleet board before it binds, expects the generation the live
replicas serve, stays not ready and refuses writes, and joins once a restore brings the
registry back. The same path with real processes on Redis:
tests/integration/test_registry_lost_newcomer.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from proxy.errors import Conflict
from proxy.registry.bootstrap import start_registry
from proxy.registry.fleet import Fleet
from proxy.registry.fleet_adopt import adopt_fleet_generation
from proxy.registry.fleet_embedded import EmbeddedFleetBoard
from proxy.registry.fleet_heartbeat import AppliedSignal, Heartbeat
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import PromptStore
from proxy.tasks import BackgroundTasks
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import GREET, T0, draft, push
from tests.registry.pg_stores import drop_schema


@dataclass
class Replica:
    store: PromptStore
    holder: SnapshotHolder
    refresher: SnapshotRefresher
    service: RegistryService
    heartbeat: Heartbeat
    fleet: Fleet
    tasks: BackgroundTasks


def _replica(name: str, store: PromptStore, board_file: Path) -> Replica:
    board = EmbeddedFleetBoard(board_file, 60.0)
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder, max_wait=0.05)
    heartbeat = Heartbeat(board, name, holder, AppliedSignal(), 60.0)
    fleet = Fleet(board, name, 5.0, local=heartbeat.beat)
    service = RegistryService(store, serve=refresher.serve, fleet=fleet)
    return Replica(store, holder, refresher, service, heartbeat, fleet, BackgroundTasks())


async def _empty(factory: StoreFactory) -> None:
    """FLUSHALL, the registry file gone (a lost volume), or the server back empty."""
    if factory.kind == "redis":
        client = redis.asyncio.Redis.from_url(factory.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
    elif factory.kind == "postgres":
        await drop_schema(factory.postgres_url, factory.prefix)
    else:
        assert factory.db_path is not None
        _delete_db(factory.db_path)


def _delete_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _until(what: Callable[[], bool], never: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not what():
        assert time.monotonic() < deadline, never
        await asyncio.sleep(0.02)


@pytest.fixture
async def survivor(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Replica]:
    """A replica that served three prompts, then the store lost them; it has heartbeated
    since (the board is not the store's: here a file, which a FLUSHALL leaves alone)."""
    a = _replica("a", await store_factory.new(), tmp_path / "fleet.db")
    await push(a.store, "one", "two", slug="greet")
    await push(a.store, "hello", slug="other")
    await push(a.store, "bye", slug="third")
    await a.store.promote(GREET, 2, "alice", "", T0)
    assert await a.refresher.load_once()
    await _empty(store_factory)
    assert not await a.refresher.load_once()
    assert a.holder.replaced is not None
    assert await a.heartbeat.publish()
    yield a
    await a.tasks.close()


@pytest.mark.parametrize("bootstrap", [True, False], ids=["bootstrap_dir", "no_bootstrap"])
async def test_a_replica_started_after_the_loss_waits_for_the_restore(
    store_factory: StoreFactory, survivor: Replica, tmp_path: Path, bootstrap: bool
) -> None:
    folder = None
    if bootstrap:
        folder = tmp_path / "prompts"
        folder.mkdir()
        (folder / "greet.md").write_text("---\nauthor: test\n---\ntwo\n")
    b = _replica("b", await store_factory.new(), tmp_path / "fleet.db")
    try:
        await start_registry(
            b.service,
            b.refresher,
            b.holder,
            b.tasks,
            folder,
            adopt=lambda: adopt_fleet_generation(b.store, b.fleet),
        )
        # Not a new registry: nothing to serve, so not ready; the loss reported; writes
        # refused like on the survivor; no generation stamped into the emptied Redis.
        await _until(lambda: b.holder.replaced is not None, "the newcomer never saw the loss")
        assert not b.holder.ready
        assert b.holder.current.empty
        with pytest.raises(Conflict) as refused:
            await b.service.push(draft("a new registry at v1?", slug="greet"), "bob")
        assert refused.value.code == "registry_store_replaced"
        if store_factory.kind != "embedded":
            assert await b.store.generation() is None  # nothing stamped into the emptied store
        assert b.heartbeat.beat().state == "replaced"

        recovery = RegistryRecovery(survivor.store, survivor.holder, lambda: T0)
        result = await recovery.restore_from_snapshot("ops", "FLUSHALL")
        assert result.generation == survivor.holder.current.generation

        await _until(
            lambda: b.holder.ready and b.holder.current.revision >= result.revision,
            "the newcomer never served the restored registry",
        )
        assert b.holder.replaced is None
        served = b.holder.current
        assert served.generation == survivor.holder.current.generation
        assert [key.text for key in sorted(served.versions)] == ["greet", "other", "third"]
        assert served.prod == {GREET: 2}  # the bootstrap's identical push changed nothing
        assert await b.store.generation() == served.generation
    finally:
        await b.tasks.close()


async def test_a_store_holding_the_fleets_registry_is_bound_as_usual(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    a = _replica("a", await store_factory.new(), tmp_path / "fleet.db")
    await push(a.store, "one")
    assert await a.refresher.load_once()
    assert await a.heartbeat.publish()
    b = _replica("b", await store_factory.new(), tmp_path / "fleet.db")
    assert await adopt_fleet_generation(b.store, b.fleet) is None
    assert await b.refresher.load_once()
    assert b.holder.current.generation == a.holder.current.generation
    version, created = await b.service.push(draft("two"), "bob")
    assert (version.version, created) == (2, True)


async def test_a_fresh_install_with_nobody_on_the_board_starts_its_registry(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    b = _replica("b", await store_factory.new(), tmp_path / "fleet.db")
    assert await adopt_fleet_generation(b.store, b.fleet) is None
    version, _ = await b.service.push(draft("one"), "bob")
    assert version.version == 1
