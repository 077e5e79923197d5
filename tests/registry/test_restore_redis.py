"""A restore or import into Redis is all or nothing, answers what it did, and does not
destroy what it was not asked to replace (a wrong database's registry, an older copy's
audit log)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.errors import Conflict
from proxy.prompt_key import PromptKey
from proxy.registry.backup import RegistryImage
from proxy.registry.models import (
    TENANT_DELETE_ACTION,
    TENANT_SET_ACTION,
    PromptVersion,
    Status,
    Tenant,
    VersionDraft,
    tenant_audit_key,
)
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.redis_store import RedisStore
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import InvalidTransition, StoreReplaced
from tests.redis_server import RedisServer
from tests.registry.helpers import GREET, T0, push

BIG = PromptKey("big")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
async def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stores(redis_server: RedisServer, prefix: str) -> AsyncIterator[list[RedisStore]]:
    opened: list[RedisStore] = []
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


def _open(
    stores: list[RedisStore], server: RedisServer, prefix: str, op_timeout: float = 1.5
) -> RedisStore:
    store = RedisStore.from_url(server.url, prefix=prefix, op_timeout=op_timeout)
    stores.append(store)
    return store


def _big_image(count: int) -> RegistryImage:
    """``count`` versions of one prompt (two contents alternating, so checking the export
    compiles two templates, not thousands)."""
    numbered = {}
    for n in range(1, count + 1):
        draft = VersionDraft(key=BIG, template=f"Variant {n % 2}")
        version = draft.to_version(n, T0 + n)
        if n == count:
            version = PromptVersion(**{**_fields(version), "status": Status.PROD})
        numbered[n] = version
    image = RegistryImage("g-big", 7, {BIG: numbered})
    return RegistryImage.from_json(image.to_json())  # what an import reads


def _fields(version: PromptVersion) -> dict[str, Any]:
    return {name: getattr(version, name) for name in PromptVersion.__slots__}


async def _registry_keys(raw: redis.asyncio.Redis, prefix: str) -> dict[str, Any]:
    """Every key of the registry with what it holds (type and a digest of its value)."""
    found = {}
    async for key in raw.scan_iter(match=f"{prefix}*"):
        found[key] = await raw.dump(key)
    return found


async def test_a_large_import_is_applied_and_answered_as_applied(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore], raw: redis.asyncio.Redis
) -> None:
    """15,000 versions: writing them takes several times the per-operation timeout (here
    0.25 s, so the image needs not be huge); such an import used to be answered 'store
    unavailable' yet applied (or not at all, larger)."""
    store = _open(stores, redis_server, prefix, op_timeout=0.25)
    recovery = RegistryRecovery(store, SnapshotHolder(), lambda: T0)

    result = await recovery.import_image(_big_image(15_000), "ops", "drill")

    assert (result.versions, result.unchanged) == (15_000, False)
    # Checked with plain reads: a snapshot of 15,000 versions outlasts 0.25 s itself.
    assert await raw.hlen(store.keys.versions(BIG)) == 15_000
    assert await raw.hget(store.keys.status(BIG), "15000") == "prod"
    assert int(await raw.get(store.keys.revision)) == result.revision
    # Bound to the registry it wrote: the next push continues its numbering.
    other = _open(stores, redis_server, prefix)
    version, _ = await other.create_version(VersionDraft(BIG, "new"), "alice", T0)
    assert version.version == 15_001


async def test_a_restore_that_races_a_write_applies_nothing(
    redis_server: RedisServer,
    prefix: str,
    stores: list[RedisStore],
    raw: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _open(stores, redis_server, prefix)
    image = _big_image(50)
    stage = store._stage

    async def stage_then_a_write(*args: Any) -> Any:
        staged = await stage(*args)
        await raw.incr(store.keys.revision)  # what any write does
        return staged

    monkeypatch.setattr(store, "_stage", stage_then_a_write)
    await store.revision()  # opened: the first command records the key schema
    before = await _registry_keys(raw, prefix)

    with pytest.raises(InvalidTransition, match="changed while restoring"):
        await store.restore(image, None, 0, "ops", "", T0)

    after = await _registry_keys(raw, prefix)
    # No version, no audit, no staging key left: only the racing write's revision.
    assert set(after) - {store.keys.revision} == set(before)


async def test_a_restore_whose_answer_was_lost_is_reported_applied(
    redis_server: RedisServer,
    prefix: str,
    stores: list[RedisStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _open(stores, redis_server, prefix)
    flip = store._restore_flip

    async def flip_then_lose_the_answer(**kwargs: Any) -> Any:
        await flip(**kwargs)
        raise RedisConnectionError("connection lost reading the reply")

    monkeypatch.setattr(store, "_restore_flip", flip_then_lose_the_answer)

    revision = await store.restore(_big_image(10), None, 0, "ops", "", T0)

    snapshot = await store.snapshot()
    assert (snapshot.revision, snapshot.generation, len(snapshot.versions[BIG])) == (
        revision,
        "g-big",
        10,
    )


async def test_a_restore_into_another_registry_is_refused_unless_overwrite(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore]
) -> None:
    """A wrong database: its registry is someone else's, not ours to destroy."""
    theirs = _open(stores, redis_server, prefix)
    await push(theirs, "their prompt", slug="theirs")
    ours = _open(stores, redis_server, prefix)
    image = _big_image(3)
    found = await ours.generation()

    with pytest.raises(InvalidTransition, match="another registry"):
        await ours.restore(image, found, 0, "ops", "", T0)
    assert await theirs.list_keys() == [PromptKey("theirs")]
    assert len(await theirs.audit()) == 1

    await ours.restore(image, found, 0, "ops", "", T0, overwrite=True)
    assert await ours.list_keys() == [BIG]


async def _copy(raw: redis.asyncio.Redis, prefix: str) -> dict[str, Any]:
    return {key: await raw.dump(key) async for key in raw.scan_iter(match=f"{prefix}*")}


async def _put_back(raw: redis.asyncio.Redis, prefix: str, copy: dict[str, Any]) -> None:
    async for key in raw.scan_iter(match=f"{prefix}*"):
        await raw.delete(key)
    for key, value in copy.items():
        await raw.restore(key, 0, value, replace=True)


@pytest.mark.parametrize("seq_key", ["kept", "lost"])
async def test_restoring_over_an_older_copy_keeps_its_audit_log(
    redis_server: RedisServer,
    prefix: str,
    stores: list[RedisStore],
    raw: redis.asyncio.Redis,
    seq_key: str,
) -> None:
    """``lost``: the copy's audit counter is missing (a partial backup); the restore still
    numbers its entries after the copy's newest audit entry."""
    store = _open(stores, redis_server, prefix)
    await push(store, "one", "two")
    await store.promote(GREET, 1, "alice", "first prod", T0)
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)
    assert await refresher.load_once()
    older = await _copy(raw, prefix)
    await push(store, "three")
    await store.promote(GREET, 3, "alice", "", T0 + 1)
    assert await refresher.load_once()
    served = holder.current

    await _put_back(raw, prefix, older)  # an older backup put back
    if seq_key == "lost":
        await raw.delete(store.keys.audit_seq)
    assert not await refresher.load_once()
    assert holder.replaced is not None
    assert "went back" in holder.replaced

    recovery = RegistryRecovery(store, holder, lambda: T0 + 2)
    await recovery.restore_from_snapshot("ops", "old backup put back")

    restored = await store.snapshot()
    assert (restored.versions, restored.prod) == (served.versions, served.prod)
    audit = list(reversed(await store.audit(limit=100)))
    assert [(e.seq, e.action) for e in audit] == [
        (1, "create"),
        (2, "create"),
        (3, "promote"),
        (4, "restore"),
    ]
    assert audit[2].reason == "first prod"


async def test_restoring_over_a_newer_state_of_the_registry_is_refused(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore]
) -> None:
    """The same registry at a revision not older than the image: newer changes, not a lost
    store; only an explicit overwrite replaces them."""
    store = _open(stores, redis_server, prefix)
    await push(store, "one")
    snapshot = await store.snapshot()
    image = RegistryImage.from_snapshot(snapshot)
    await push(store, "two")

    with pytest.raises(InvalidTransition, match="newer changes"):
        await store.restore(image, snapshot.generation, 0, "ops", "", T0)
    assert len(await store.list_versions(GREET)) == 2
    recovery = RegistryRecovery(store, SnapshotHolder(), lambda: T0)
    with pytest.raises(Conflict) as refused:
        await recovery.import_image(image, "ops", "")
    assert refused.value.code == "registry_not_empty"


async def test_a_write_into_an_older_copy_put_back_is_refused_before_any_read(
    redis_server: RedisServer,
    prefix: str,
    stores: list[RedisStore],
    raw: redis.asyncio.Redis,
) -> None:
    """Same generation, lower revision: the write script itself refuses, not only the next
    snapshot read (writes went into the old copy until one happened)."""
    store = _open(stores, redis_server, prefix)
    await push(store, "one")
    older = await _copy(raw, prefix)
    await push(store, "two", "three")
    await store.snapshot()  # this process has seen revision 3
    await _put_back(raw, prefix, older)

    with pytest.raises(StoreReplaced, match="went back from revision 3 to 1"):
        await store.create_version(VersionDraft(GREET, "four"), "alice", T0)
    assert len(await raw.hgetall(store.keys.versions(GREET))) == 1


ACME = Tenant("acme", "enterprise", (digest("sk-acme-1"), digest("sk-acme-2")))


async def test_an_export_imported_elsewhere_keeps_the_tenants_and_their_history(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore], raw: redis.asyncio.Redis
) -> None:
    source = _open(stores, redis_server, f"test-{uuid.uuid4().hex[:8]}:")
    await push(source, "one")
    await source.put_tenant(ACME, "alice", "signed", T0)
    await source.put_tenant(Tenant("acme", "pro", ACME.key_hashes), "bob", "", T0 + 1)
    await source.put_tenant(Tenant("gone", "free"), "alice", "", T0 + 2)
    await source.delete_tenant("gone", "alice", "left", T0 + 3)
    exported = await RegistryRecovery(source, SnapshotHolder(), lambda: T0).export()
    image = RegistryImage.from_json(exported.to_json())

    target = _open(stores, redis_server, prefix)
    await RegistryRecovery(target, SnapshotHolder(), lambda: T0 + 4).import_image(image, "ops", "")

    copy = await target.snapshot()
    assert copy.tenants == (await source.snapshot()).tenants == dict(image.tenants)
    assert set(copy.tenant_by_key_hash) == set(ACME.key_hashes)
    for tenant_id in ("acme", "gone"):
        key = tenant_audit_key(tenant_id)
        assert await target.audit(key) == await source.audit(key)
    assert await raw.smembers(target.keys.tenant_audits) == {"acme", "gone"}
    # It goes on from there: the keys are acme's, and a tenant's history continues.
    with pytest.raises(InvalidTransition, match="acme"):
        await target.put_tenant(Tenant("thief", "free", ACME.key_hashes[:1]), "m", "", T0 + 5)
    _, entry = await target.put_tenant(Tenant("gone", "free"), "alice", "back", T0 + 6)
    assert entry is not None
    before = await source.audit(tenant_audit_key("gone"))
    assert await target.audit(tenant_audit_key("gone")) == [entry, *before]


async def test_an_overwrite_with_another_registry_drops_the_tenants_and_their_history(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore], raw: redis.asyncio.Redis
) -> None:
    """Their audit streams go with the rest of the log, deleted tenants' too: one left
    behind would hold entry ids above the new log's, and refuse the next write for it."""
    store = _open(stores, redis_server, prefix)
    await push(store, "one")
    for i in range(4):
        await store.put_tenant(Tenant("acme", f"tier{i}", ACME.key_hashes), "alice", "", T0 + i)
    await store.put_tenant(Tenant("gone", "free"), "alice", "", T0 + 5)
    await store.delete_tenant("gone", "alice", "", T0 + 6)

    await store.restore(_big_image(3), await store.generation(), 0, "ops", "", T0, overwrite=True)

    assert await store.list_tenants() == []
    assert (await store.snapshot()).tenant_by_key_hash == {}
    for tenant_id in ("acme", "gone"):
        assert await store.audit(tenant_audit_key(tenant_id)) == []
    assert not await raw.exists(store.keys.tenants, store.keys.tenant_keys)
    assert not await raw.exists(store.keys.tenant_audits)
    _, entry = await store.put_tenant(Tenant("gone", "pro", ACME.key_hashes), "bob", "", T0 + 7)
    assert entry is not None
    assert [e.seq for e in await store.audit(tenant_audit_key("gone"))] == [entry.seq]


async def test_restoring_an_older_copy_keeps_the_tenants_history_and_its_records(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore], raw: redis.asyncio.Redis
) -> None:
    store = _open(stores, redis_server, prefix)
    await push(store, "one")
    await store.put_tenant(ACME, "alice", "", T0)
    image = RegistryImage.from_snapshot(await store.snapshot())
    await store.delete_tenant("acme", "bob", "", T0 + 1)
    await store.put_tenant(Tenant("initech", "pro", ACME.key_hashes[:1]), "bob", "", T0 + 2)
    initech_history = await store.audit(tenant_audit_key("initech"))

    generation = await store.generation()
    await store.restore(image, generation, 0, "ops", "", T0 + 3, overwrite=True)

    snapshot = await store.snapshot()
    assert snapshot.tenants == dict(image.tenants)
    assert set(snapshot.tenant_by_key_hash) == set(ACME.key_hashes)
    # The log is this registry's: kept, the tenants' streams too.
    assert await store.audit(tenant_audit_key("initech")) == initech_history
    assert [e.action for e in await store.audit(tenant_audit_key("acme"))] == [
        TENANT_DELETE_ACTION,
        TENANT_SET_ACTION,
    ]
    assert await raw.smembers(store.keys.tenant_audits) == {"acme", "initech"}
    _, entry = await store.put_tenant(Tenant("initech", "free"), "bob", "", T0 + 4)
    assert entry is not None
    assert len(await store.audit(tenant_audit_key("initech"))) == 2
