"""The tenant records of the store contract (``proxy.registry.store``), on every store."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from proxy.registry.backup import RegistryImage
from proxy.registry.models import (
    TENANT_DELETE_ACTION,
    TENANT_SET_ACTION,
    Tenant,
    tenant_audit_key,
)
from proxy.registry.store import InvalidTransition, PromptStore, TenantNotFound
from tests.registry.conftest import StoreFactory


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ACME = Tenant("acme", "enterprise", (digest("sk-acme-1"), digest("sk-acme-2")))


async def test_a_tenant_is_created_changed_and_deleted_with_its_audit(store: PromptStore) -> None:
    before = await store.revision()
    stored, entry = await store.put_tenant(ACME, "alice", "signed", 10.0)
    assert stored == Tenant("acme", "enterprise", ACME.key_hashes, 10.0)
    assert entry is not None
    assert (entry.action, entry.key, entry.actor, entry.reason) == (
        TENANT_SET_ACTION,
        tenant_audit_key("acme"),
        "alice",
        "signed",
    )
    assert entry.detail == {"tier": "enterprise", "from_tier": None, "api_keys": 2}
    assert await store.revision() > before
    assert await store.list_tenants() == [stored]
    assert (await store.snapshot()).tenants == {"acme": stored}

    moved, entry = await store.put_tenant(Tenant("acme", "pro"), "bob", "downgrade", 20.0)
    assert moved == Tenant("acme", "pro", (), 20.0)
    assert entry is not None
    assert entry.detail == {"tier": "pro", "from_tier": "enterprise", "api_keys": 0}
    snapshot = await store.snapshot()
    assert snapshot.tenants == {"acme": moved}
    assert snapshot.tenant_by_key_hash == {}

    revision = await store.revision()
    gone = await store.delete_tenant("acme", "carol", "left", 30.0)
    assert (gone.action, gone.key, gone.detail) == (
        TENANT_DELETE_ACTION,
        tenant_audit_key("acme"),
        {"tier": None, "from_tier": "pro", "api_keys": 0},
    )
    assert await store.revision() > revision
    assert await store.list_tenants() == []
    history = [e.action for e in await store.audit(tenant_audit_key("acme"))]
    assert history == [TENANT_DELETE_ACTION, TENANT_SET_ACTION, TENANT_SET_ACTION]


async def test_the_same_record_again_writes_nothing(store: PromptStore) -> None:
    stored, _ = await store.put_tenant(ACME, "alice", "", 10.0)
    revision = await store.revision()
    reordered = Tenant("acme", "enterprise", tuple(reversed(ACME.key_hashes)))
    again, entry = await store.put_tenant(reordered, "bob", "", 20.0)
    assert (again, entry) == (stored, None)
    assert await store.revision() == revision
    assert len(await store.audit(tenant_audit_key("acme"))) == 1


async def test_one_api_key_names_one_tenant(store: PromptStore) -> None:
    await store.put_tenant(ACME, "alice", "", 10.0)
    revision = await store.revision()
    thief = Tenant("globex", "free", (digest("sk-globex"), digest("sk-acme-2")))
    with pytest.raises(InvalidTransition, match="acme"):
        await store.put_tenant(thief, "mallory", "", 20.0)
    assert await store.revision() == revision  # nothing written
    assert [t.id for t in await store.list_tenants()] == ["acme"]
    # Once acme lets go of the key, another tenant may have it.
    await store.put_tenant(Tenant("acme", "enterprise", (digest("sk-acme-1"),)), "a", "", 30.0)
    taken, _ = await store.put_tenant(thief, "bob", "", 40.0)
    snapshot = await store.snapshot()
    assert snapshot.tenant_by_key_hash[digest("sk-acme-2")] == taken
    assert snapshot.tenant_by_key_hash[digest("sk-acme-1")].id == "acme"


async def test_deleting_a_tenant_frees_its_keys(store: PromptStore) -> None:
    await store.put_tenant(ACME, "alice", "", 10.0)
    await store.delete_tenant("acme", "alice", "", 20.0)
    other, _ = await store.put_tenant(Tenant("initech", "pro", ACME.key_hashes), "b", "", 30.0)
    assert (await store.snapshot()).tenant_by_key_hash == dict.fromkeys(ACME.key_hashes, other)


async def test_deleting_an_unknown_tenant_is_not_found(store: PromptStore) -> None:
    revision = await store.revision()
    with pytest.raises(TenantNotFound):
        await store.delete_tenant("nobody", "alice", "", 10.0)
    assert await store.revision() == revision


async def test_another_replica_sees_a_tenant_change(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    other = await store_factory.new()
    known = await store.revision()
    waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
    await asyncio.sleep(0.1)
    await other.put_tenant(ACME, "alice", "", 10.0)
    assert await asyncio.wait_for(waiter, timeout=5.0) > known
    assert (await store.snapshot()).tenants["acme"].tier == "enterprise"


async def test_concurrent_puts_of_one_key_leave_one_owner(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    stores = [store, *[await store_factory.new() for _ in range(3)]]
    shared = digest("sk-shared")
    results = await asyncio.gather(
        *(
            s.put_tenant(Tenant(f"t{i}", "free", (shared,)), "x", "", 10.0)
            for i, s in enumerate(stores)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert all(isinstance(r, InvalidTransition) for r in results if r not in won)
    assert len((await store.snapshot()).tenant_by_key_hash) == 1


async def test_a_restore_brings_the_tenants_back(store_factory: StoreFactory) -> None:
    first = await store_factory.new()
    await first.put_tenant(ACME, "alice", "", 10.0)
    await first.put_tenant(Tenant("globex", "free"), "alice", "", 11.0)
    image = RegistryImage.from_json(RegistryImage.from_snapshot(await first.snapshot()).to_json())
    assert set(image.tenants) == {"acme", "globex"}
    await first.delete_tenant("globex", "alice", "", 12.0)
    await first.put_tenant(Tenant("initech", "pro"), "alice", "", 13.0)
    generation = await first.generation()
    await first.restore(
        image,
        generation,
        await first.revision(),
        "ops",
        "back to before",
        20.0,
        overwrite=store_factory.kind == "redis",
    )
    assert (await first.snapshot()).tenants == dict(image.tenants)
