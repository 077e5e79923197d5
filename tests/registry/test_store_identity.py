"""A store that lost its data is not an empty registry (every store).

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from proxy.errors import Conflict
from proxy.registry.backup import RESTORE_ACTION, ImageError, RegistryImage
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.history import RolloutAt, state_at
from proxy.registry.models import (
    RegistrySnapshot,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
)
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import InvalidTransition, PromptStore, StoreReplaced
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import GREET, OTHER, T0, draft, push, start
from tests.registry.pg_stores import drop_schema


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
    """What an operator's accident does: FLUSHALL, the file gone (a lost volume), or a
    PostgreSQL server back empty (the schema gone)."""
    if factory.kind == "redis":
        await _flushall(factory)
    elif factory.kind == "postgres":
        await drop_schema(factory.postgres_url, factory.prefix)
    else:
        assert factory.db_path is not None
        factory.db_path.unlink()
        _drop_wal(factory.db_path)


async def _replace(factory: StoreFactory, tmp_path: Path) -> None:
    """Another registry where this one was: a wrong database, another volume."""
    if factory.kind in ("redis", "postgres"):
        await _empty(factory, tmp_path)
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


Accident = Callable[[StoreFactory, Path], Awaitable[None]]
#: Each test marked with it runs once per way of losing the store.
every_accident = pytest.mark.parametrize(
    "accident", [_empty, _replace], ids=["emptied", "replaced"]
)


def _writes(store: PromptStore) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "create_version": lambda: store.create_version(draft("new"), "alice", T0),
        "promote": lambda: store.promote(GREET, 1, "alice", "", T0),
        "rollback": lambda: store.rollback(GREET, "alice", "", T0),
        "set_status": lambda: store.set_status(GREET, 1, Status.CANDIDATE, "alice", "", T0),
    }


@every_accident
async def test_a_lost_store_is_reported_and_refuses_every_write(
    store_factory: StoreFactory, tmp_path: Path, accident: Accident
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
        assert "greet" not in await store.list_keys(), f"{name} wrote into the lost store"
    if accident is _empty and store_factory.kind != "embedded":
        assert await store.generation() is None  # no new registry started either


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


# -- recovery: restore from a replica's snapshot, export and import ---------------------------


async def _served(store: PromptStore) -> RegistrySnapshot:
    """A registry with a history: prod v2 after v1, a canary of v3, a draft v4."""
    await push(store, "one", "two", "three", "four")
    await store.promote(GREET, 1, "alice", "", T0)
    await store.promote(GREET, 2, "alice", "", T0 + 1)
    await store.start_rollout(
        GREET,
        "r1",
        3,
        RolloutMode.CANARY,
        2500,
        StickyKey.parse("user"),
        "bob",
        "",
        T0 + 2,
    )
    await push(store, "hello", slug="other")
    return await store.snapshot()


def _replica(store: PromptStore) -> tuple[SnapshotHolder, SnapshotRefresher, RegistryRecovery]:
    holder = SnapshotHolder()
    return holder, SnapshotRefresher(store, holder), RegistryRecovery(store, holder, lambda: T0)


@every_accident
async def test_a_replica_keeps_serving_a_lost_store_and_restores_it(
    store_factory: StoreFactory, tmp_path: Path, accident: Accident
) -> None:
    store = await store_factory.new()
    served = await _served(store)
    holder, refresher, recovery = _replica(store)
    assert await refresher.load_once()
    assert holder.replaced is None

    await accident(store_factory, tmp_path)
    if store_factory.kind == "embedded" and accident is _replace:
        # The file refuses to delete history: the operator moves the stranger away first.
        assert store_factory.db_path is not None
        store_factory.db_path.unlink()
        _drop_wal(store_factory.db_path)

    assert not await refresher.load_once()
    assert holder.replaced is not None
    assert "emptied or replaced" in holder.replaced
    assert holder.current == served  # still serving every prompt
    assert holder.healthy  # the store answers: registry_up stays 1, the problem is its data
    with pytest.raises(Conflict) as refused:
        await RegistryService(store).push(draft("pushed into the void"), "alice")
    assert refused.value.code == "registry_store_replaced"
    assert "restore" in refused.value.message

    # A server's store can be replaced whole; the embedded file's history cannot.
    overwrite = store_factory.kind != "embedded" and accident is _replace
    if overwrite:
        # Another registry's prompts: only an explicit overwrite replaces them.
        with pytest.raises(Conflict) as refused:
            await recovery.restore_from_snapshot("ops", "FLUSHALL by mistake")
        assert refused.value.code == "registry_not_empty"
        assert "another registry" in refused.value.message
        assert await store.list_keys() == [OTHER]
    result = await recovery.restore_from_snapshot("ops", "FLUSHALL by mistake", overwrite=overwrite)

    assert result.generation == served.generation
    assert result.revision > served.revision
    assert await refresher.load_once()
    assert holder.replaced is None
    restored = await store.snapshot()
    assert (restored.versions, restored.prod, restored.rollouts, restored.generation) == (
        served.versions,
        served.prod,
        served.rollouts,
        served.generation,
    )
    entry = (await store.audit(GREET, limit=1))[0]
    assert (entry.action, entry.actor) == ("restore", "ops")
    assert "snapshot of a replica" in entry.reason
    assert "FLUSHALL by mistake" in entry.reason
    # A snapshot has no audit log: rollback history starts at the restore, on both stores.
    with pytest.raises(InvalidTransition, match="v2 is prod and there is no former prod"):
        await store.rollback(GREET, "ops", "", T0 + 9)
    # Numbering continues: version numbers never restart.
    version, created = await store.create_version(draft("five"), "alice", T0 + 9)
    assert (version.version, created) == (5, True)
    # Other instances bound to the registry (other replicas) accept it again by themselves.
    other = await store_factory.new()
    assert (await other.snapshot()).generation == served.generation


async def test_restore_is_refused_while_the_store_is_the_served_registry(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    await _served(store)
    _, refresher, recovery = _replica(store)
    assert await refresher.load_once()
    with pytest.raises(Conflict) as refused:
        await recovery.restore_from_snapshot("ops", "")
    assert refused.value.code == "registry_not_lost"


async def test_export_then_import_into_an_empty_store_is_the_same_registry(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory.new()
    await _served(store)
    await store.abort_rollout(GREET, "bob", "", T0 + 3)
    await store.promote(GREET, 3, "alice", "", T0 + 4)
    _, _, recovery = _replica(store)
    exported = await recovery.export()
    raw = exported.to_json()
    original_audit = list(reversed(await store.audit(limit=1000)))

    target = await EmbeddedStore.open(tmp_path / "imported.db")
    try:
        _, _, into = _replica(target)
        result = await into.import_image(RegistryImage.from_json(raw), "ops", "disaster drill")
        assert (result.prompts, result.versions, result.unchanged) == (2, 5, False)
        source, copy = await store.snapshot(), await target.snapshot()
        assert (copy.versions, copy.prod, copy.rollouts, copy.generation) == (
            source.versions,
            source.prod,
            source.rollouts,
            source.generation,
        )
        audit = list(reversed(await target.audit(limit=1000)))
        assert audit[: len(original_audit)] == original_audit
        assert {e.action for e in audit[len(original_audit) :]} == {"restore"}
        # Importing the same content again changes nothing.
        revision = await target.revision()
        assert (await into.import_image(RegistryImage.from_json(raw), "ops", "")).unchanged
        assert await target.revision() == revision
        # The rollback history came along: both roll back to the same version.
        assert (await target.rollback(GREET, "ops", "", T0 + 5)).version == 2
        assert (await store.rollback(GREET, "ops", "", T0 + 5)).version == 2
    finally:
        await target.close()


async def test_import_into_a_store_with_other_prompts_is_refused(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new()
    await _served(store)
    _, _, recovery = _replica(store)
    exported = await recovery.export()
    assert (await recovery.import_image(exported, "ops", "")).unchanged
    await push(store, "changed")
    with pytest.raises(Conflict) as refused:
        await recovery.import_image(exported, "ops", "")
    assert refused.value.code == "registry_not_empty"


def test_an_export_in_another_format_is_refused() -> None:
    with pytest.raises(ImageError, match="format"):
        RegistryImage.from_json(b'{"format": "something-else/9"}')
    sha = draft("t", slug="a").content_sha256()
    with pytest.raises(ImageError, match="gaps"):
        RegistryImage.from_json(
            b'{"format": "promptproxy-registry/1", "generation": "g", "revision": 1, '
            b'"versions": [{"slug": "a", "version": 2, "template": "t", "created_at": 1, '
            b'"sha256": "' + sha.encode() + b'", "status": "draft"}]}'
        )


SEGMENT = RolloutSegment(tiers=("pro", "enterprise"), tenants=("acme",))


async def test_an_export_carries_each_rollouts_segment_into_a_new_store(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory.new()
    await push(store, "one", "two")
    await push(store, "hello", "hi", slug="other")
    await store.promote(GREET, 1, "alice", "", T0)
    segmented, _ = await start(store, segment=SEGMENT, at=T0 + 2)
    everyone, _ = await start(store, slug="other", at=T0 + 3)
    raw = (await _replica(store)[2].export()).to_json()

    # In the file as the API shows a rollout, null for none; read back equal.
    assert [r["segment"] for r in orjson.loads(raw)["rollouts"]] == [SEGMENT.to_dict(), None]
    image = RegistryImage.from_json(raw)
    assert image.rollouts == {GREET: segmented, OTHER: everyone}

    # Into an empty store of the same kind (another file, prefix or schema).
    into = StoreFactory(
        store_factory.kind,
        db_path=tmp_path / "copy" / "registry.db",
        redis_url=store_factory.redis_url,
        postgres_url=store_factory.postgres_url,
    )
    try:
        target = await into.new()
        recovery = RegistryRecovery(target, SnapshotHolder(), lambda: T0 + 100)
        await recovery.import_image(image, "ops", "drill")
        assert (await target.snapshot()).rollouts == {GREET: segmented, OTHER: everyone}
        assert await target.get_rollout(GREET) == segmented
        assert (await recovery.import_image(image, "ops", "")).unchanged
        # What ran, from the imported log and from the restore entry alone (a restore
        # from a snapshot has no log before it).
        entries = list(await target.audit(GREET, limit=1000))
        assert state_at(entries, T0 + 50).rollout == _rollout_at(segmented, T0 + 2)
        restore = [e for e in entries if e.action == RESTORE_ACTION]
        assert state_at(restore, T0 + 100).rollout == _rollout_at(segmented, T0 + 2)
        assert state_at(list(await target.audit(OTHER)), T0 + 100).rollout == _rollout_at(
            everyone, T0 + 3
        )
    finally:
        await into.close_all()


def _rollout_at(rollout: Rollout, started_at: float) -> RolloutAt:
    return RolloutAt(
        rollout.id,
        rollout.candidate,
        rollout.mode.value,
        rollout.percent,
        str(rollout.sticky),
        started_at,
        started_at,
        rollout.segment,
    )


def _image_with_segment(segment: Any) -> bytes:
    """An export of greet v1 in a rollout whose ``segment`` is ``segment``."""
    version = replace(draft("t").to_version(1, T0), status=Status.CANDIDATE)
    rollout = Rollout(
        GREET, "r", 1, RolloutMode.CANARY, 100, StickyKey.parse("user"), T0, T0, "a", Status.DRAFT
    )
    data = orjson.loads(RegistryImage("g", 1, {GREET: {1: version}}, {GREET: rollout}).to_json())
    if segment is _ABSENT:
        del data["rollouts"][0]["segment"]
    else:
        data["rollouts"][0]["segment"] = segment
    return orjson.dumps(data)


_ABSENT = object()


@pytest.mark.parametrize(
    "segment",
    [
        "pro",
        ["pro"],
        {"tiers": "pro"},
        {"tiers": [1]},
        {"tenants": None},
        {},
        {"tiers": [], "tenants": []},
        {"tiers": ["has space"]},
        {"tiers": ["pro"], "tier": ["free"]},
    ],
)
def test_an_export_with_a_malformed_segment_is_refused_naming_it(segment: Any) -> None:
    with pytest.raises(ImageError) as refused:
        RegistryImage.from_json(_image_with_segment(segment))
    assert refused.value.param == "rollouts[0].segment"


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        (_ABSENT, None),  # an export from before segments
        (None, None),
        ({"tenants": ["globex", "acme", "acme"]}, RolloutSegment(tenants=("acme", "globex"))),
        ({"tiers": ["pro"], "tenants": []}, RolloutSegment(tiers=("pro",))),
    ],
    ids=["absent", "null", "tenants", "tiers"],
)
def test_an_export_reads_a_segment_as_the_api_would_take_it(
    segment: Any, expected: RolloutSegment | None
) -> None:
    image = RegistryImage.from_json(_image_with_segment(segment))
    assert image.rollouts[GREET].segment == expected


async def test_an_export_older_than_the_served_registry_is_not_imported(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Importing it would number the next push v5 again, a v5 that already named other
    content: the replica that served v5 refuses and points at the snapshot restore."""
    store = await store_factory.new()
    await _served(store)
    _, refresher, recovery = _replica(store)
    old_export = await recovery.export()
    await push(store, "five")
    assert await refresher.load_once()
    await _empty(store_factory, tmp_path)
    assert not await refresher.load_once()

    with pytest.raises(Conflict) as refused:
        await recovery.import_image(old_export, "ops", "")
    assert refused.value.code == "export_older_than_served"
    assert "greet v5 (export: v4)" in refused.value.message
    await recovery.restore_from_snapshot("ops", "")
    version, _ = await store.create_version(draft("six"), "alice", T0)
    assert version.version == 6


async def test_history_after_a_restore_from_a_replica_says_what_was_running(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """A snapshot has no audit log: the restore entry is where history starts, so it must
    say what ran (prod v1 and a 10 % canary of v2), not 'nothing'."""
    store = await store_factory.new()
    await push(store, "one", "two")
    await store.promote(GREET, 1, "alice", "", T0)
    await store.start_rollout(
        GREET,
        "r1",
        2,
        RolloutMode.CANARY,
        1000,
        StickyKey.parse("user"),
        "bob",
        "",
        T0 + 1,
    )
    holder = SnapshotHolder()
    assert await SnapshotRefresher(store, holder).load_once()
    await _empty(store_factory, tmp_path)
    assert not await SnapshotRefresher(store, holder).load_once()
    await RegistryRecovery(store, holder, lambda: T0 + 10).restore_from_snapshot("ops", "")

    state = await RegistryService(store).state_at(GREET, T0 + 20)

    assert state.prod_version == 1
    assert state.rollout is not None
    assert (state.rollout.id, state.rollout.candidate, state.rollout.mode) == ("r1", 2, "canary")
    assert (state.rollout.percent, state.rollout.sticky) == (10.0, "user")
    assert state.rollout.started_at == T0 + 1
    # Before the restore, history knows nothing (the log starts there).
    assert (await RegistryService(store).state_at(GREET, T0 + 5)).prod_version is None


async def test_restoring_over_an_older_copy_of_the_file_keeps_its_audit_log(
    tmp_path: Path,
) -> None:
    """An older copy of the registry file put back: the restore brings its versions and
    statuses forward and keeps its audit log (moving the file away would have lost it)."""
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path)
    try:
        await push(store, "one", "two")
        await store.promote(GREET, 1, "alice", "first prod", T0)
        holder, refresher, _ = _replica(store)
        assert await refresher.load_once()
        backup = tmp_path / "backup.db"
        with closing(sqlite3.connect(path)) as live, closing(sqlite3.connect(backup)) as copy:
            live.backup(copy)
        await push(store, "three")
        await store.promote(GREET, 3, "alice", "", T0 + 1)
        await store.start_rollout(
            GREET,
            "r1",
            2,
            RolloutMode.CANARY,
            500,
            StickyKey.parse("user"),
            "bob",
            "",
            T0 + 2,
        )
        assert await refresher.load_once()
        served = holder.current
        os.replace(backup, path)
        _drop_wal(path)
        assert not await refresher.load_once()

        await RegistryRecovery(store, holder, lambda: T0 + 3).restore_from_snapshot("ops", "")

        restored = await store.snapshot()
        assert (restored.versions, restored.prod, restored.rollouts) == (
            served.versions,
            served.prod,
            served.rollouts,
        )
        audit = list(reversed(await store.audit(limit=100)))
        assert [(e.seq, e.action) for e in audit] == [
            (1, "create"),
            (2, "create"),
            (3, "promote"),
            (4, "restore"),
        ]
        assert audit[2].reason == "first prod"
    finally:
        await store.close()
