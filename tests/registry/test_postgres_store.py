"""What only the PostgreSQL store (and board) has: its tables, locks, channel, connections.

The contract itself runs on PostgreSQL with the other stores (``store_factory``); here:
numbering under concurrent pushes from several replicas, the rules the database keeps by
itself, schemas as independent registries, the NOTIFY channel, the LISTEN connection, and
what a write and a wake-up cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from proxy.pg.connect import new_pool
from proxy.pg.migrate import Migration, SchemaTooNew, migrate
from proxy.prompt_key import PromptKey
from proxy.registry import lifecycle, postgres_schema
from proxy.registry.backup import RegistryImage
from proxy.registry.fleet import FleetError, ReplicaBeat
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.models import (
    TENANT_SET_ACTION,
    AuditEntry,
    PromptVersion,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
    VersionDraft,
    tenant_audit_key,
)
from proxy.registry.postgres_schema import VERSION_COLUMNS, change_channel
from proxy.registry.postgres_store import PostgresStore
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.snapshot import SnapshotHolder
from proxy.registry.store import (
    InvalidTransition,
    StoreUnavailable,
    VersionNotFound,
)
from tests.registry.helpers import GREET, T0, draft, push
from tests.registry.pg_stores import drop_schema, open_pool, open_store


@pytest.fixture
def schema() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def stores() -> AsyncIterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
async def raw(registry_postgres_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(
        registry_postgres_url, autocommit=True
    ) as conn:
        yield conn


async def _open(stores: list[PostgresStore], url: str, schema: str) -> PostgresStore:
    store = await open_store(url, schema)
    stores.append(store)
    return store


async def test_concurrent_pushes_from_three_replicas_are_numbered_1_to_24(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    replicas = [await _open(stores, registry_postgres_url, schema) for _ in range(3)]
    await replicas[0].revision()  # tables made before the race starts

    results = await asyncio.gather(
        *(
            replicas[i % 3].create_version(draft(f"variant {i}"), f"replica-{i % 3}", T0 + i)
            for i in range(24)
        )
    )

    assert all(created for _, created in results)
    assert sorted(v.version for v, _ in results) == list(range(1, 25))
    assert [v.version for v in await replicas[1].list_versions(GREET)] == list(range(1, 25))
    audit = await replicas[2].audit(limit=100)
    assert sorted(e.seq for e in audit) == list(range(1, 25))
    # Seq order is commit order: each create's entry names the next number.
    assert [e.version for e in reversed(audit)] == list(range(1, 25))
    assert await replicas[0].revision() == 24


async def test_the_database_keeps_the_rules_by_itself(
    registry_postgres_url: str,
    schema: str,
    stores: list[PostgresStore],
    raw: psycopg.AsyncConnection[Any],
) -> None:
    """Whatever a future code path (or a hand-written query) does: versions are immutable
    and never deleted, the audit log is append-only, one prod per prompt."""
    store = await _open(stores, registry_postgres_url, schema)
    await push(store, "one", "two")
    await store.promote(GREET, 1, "alice", "", T0)
    await raw.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    refused = {
        "edit a version": "UPDATE registry_versions SET body = '{}' WHERE version = 1",
        "delete a version": "DELETE FROM registry_versions WHERE version = 2",
        "edit the audit": "UPDATE registry_audit SET reason = 'nothing happened'",
        "delete the audit": "DELETE FROM registry_audit",
        "a second prod": "UPDATE registry_versions SET status = 'prod' WHERE version = 2",
    }
    for what, statement in refused.items():
        with pytest.raises(psycopg.errors.IntegrityError):
            await raw.execute(statement.encode())
        assert len(await store.list_versions(GREET)) == 2, what
    assert len(await store.audit()) == 3
    assert (await store.snapshot()).prod == {GREET: 1}


async def test_two_schemas_on_one_database_are_two_registries(
    registry_postgres_url: str, stores: list[PostgresStore]
) -> None:
    team_a = await _open(stores, registry_postgres_url, f"a_{uuid.uuid4().hex[:8]}")
    team_b = await _open(stores, registry_postgres_url, f"b_{uuid.uuid4().hex[:8]}")
    await push(team_a, "a1", "a2")
    await team_a.promote(GREET, 2, "x", "", T0)
    await push(team_b, "b1")

    assert [v.template for v in await team_b.list_versions(GREET)] == ["b1"]
    assert (await team_b.snapshot()).prod == {}
    assert await team_b.revision() == 1
    assert (await team_a.snapshot()).generation != (await team_b.snapshot()).generation
    assert team_a.channel != team_b.channel


async def test_every_write_notifies_the_schemas_channel_with_its_revision(
    registry_postgres_url: str,
    schema: str,
    stores: list[PostgresStore],
    raw: psycopg.AsyncConnection[Any],
) -> None:
    """The protocol other listeners (tools, another build) can rely on: channel
    ``<schema>.registry``, payload the new revision, sent at commit."""
    store = await _open(stores, registry_postgres_url, schema)
    assert store.channel == f"{schema}.registry"
    await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.channel)))

    await push(store, "one")
    await store.promote(GREET, 1, "alice", "", T0)
    with pytest.raises(InvalidTransition):  # refused: no change, no notification
        await store.promote(GREET, 1, "alice", "", T0)
    await push(store, "one")  # the same content: nothing written, no notification
    await push(store, "two")

    payloads = [n.payload async for n in raw.notifies(timeout=1.0, stop_after=3)]
    assert payloads == ["1", "2", "3"]
    assert {n.channel async for n in raw.notifies(timeout=0.2)} == set()


def test_channel_names_fit_postgresql_and_stay_distinct() -> None:
    long_a, long_b = "a" * 60 + "_one", "a" * 60 + "_two"
    assert change_channel("prod") == "prod.registry"
    assert len(change_channel(long_a)) <= 63
    assert change_channel(long_a) != change_channel(long_b)


async def test_a_schema_written_by_a_newer_promptproxy_is_refused(
    registry_postgres_url: str, schema: str
) -> None:
    pool = await open_pool(registry_postgres_url, schema)
    try:
        async with pool.connection() as conn:
            known = len(postgres_schema.MIGRATIONS)
            future = Migration(known + 1, "from the future", ("SELECT 1",))
            await migrate(
                conn,
                schema=schema,
                component="registry",
                steps=(*postgres_schema.MIGRATIONS, future),
            )
        with pytest.raises(SchemaTooNew, match=f"registry version {known + 1}"):
            await PostgresStore.open(pool, url=registry_postgres_url, schema=schema)
    finally:
        await pool.close()


async def test_a_nul_character_is_refused_before_anything_is_written(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    """PostgreSQL text cannot hold U+0000 (the other stores can): a clear refusal, not a
    write failing as if the server were down."""
    store = await _open(stores, registry_postgres_url, schema)
    await push(store, "one")
    revision = await store.revision()
    with pytest.raises(InvalidTransition, match="NUL"):
        await store.promote(GREET, 1, "alice", "because\x00", T0)
    with pytest.raises(InvalidTransition, match="NUL"):
        await store.create_version(draft("two", changelog="a\x00b"), "alice", T0)
    assert await store.revision() == revision
    # In the template (stored as JSON) it is kept, as by the other stores.
    version, _ = await store.create_version(draft("x\x00y"), "alice", T0)
    assert (await store.get_version(GREET, version.version)).template == "x\x00y"


def _image(count: int) -> RegistryImage:
    numbered = {}
    for n in range(1, count + 1):
        version = VersionDraft(key=PromptKey("big"), template=f"Variant {n % 2}").to_version(
            n, T0 + n
        )
        if n == count:
            version = PromptVersion(
                **{
                    **{k: getattr(version, k) for k in PromptVersion.__slots__},
                    "status": Status.PROD,
                }
            )
        numbered[n] = version
    return RegistryImage("g-big", 7, {PromptKey("big"): numbered})


async def test_a_large_import_is_one_transaction_that_fits_its_deadline(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, registry_postgres_url, schema)
    image = _image(15_000)

    started = time.monotonic()
    revision = await store.restore(image, None, 0, "ops", "drill", T0)
    print(f"restored 15,000 versions in {time.monotonic() - started:.2f}s")

    assert revision == 8
    snapshot = await store.snapshot()
    assert len(snapshot.versions[PromptKey("big")]) == 15_000
    assert snapshot.prod == {PromptKey("big"): 15_000}
    assert snapshot.generation == "g-big"
    version, _ = await store.create_version(VersionDraft(PromptKey("big"), "new"), "alice", T0)
    assert version.version == 15_001


async def test_close_ends_the_listen_connection_and_leaves_the_pool_to_its_owner(
    registry_postgres_url: str, schema: str, raw: psycopg.AsyncConnection[Any]
) -> None:
    pool = await open_pool(registry_postgres_url, schema)
    try:
        store = await PostgresStore.open(pool, url=registry_postgres_url, schema=schema)
        waiter = asyncio.create_task(store.wait_for_change(await store.revision(), 10.0))
        for _ in range(300):
            if store.listener.connected:
                break
            await asyncio.sleep(0.01)
        assert await _listeners(raw) == 1

        await store.close()

        with pytest.raises(StoreUnavailable, match="closed"):
            async with asyncio.timeout(3):
                await waiter
        for _ in range(100):  # the server notices a closed socket asynchronously
            if not await _listeners(raw):
                break
            await asyncio.sleep(0.02)
        assert await _listeners(raw) == 0
        async with pool.connection() as conn:  # still the caller's, still open
            await conn.execute("SELECT 1")
    finally:
        await pool.close()


async def _listeners(raw: psycopg.AsyncConnection[Any]) -> int:
    cur = await raw.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'promptproxy-registry-listen' AND datname = current_database()"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_cancelled_wait_leaves_the_store_usable(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, registry_postgres_url, schema)
    waiter = asyncio.create_task(store.wait_for_change(await store.revision(), 10.0))
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await push(store, "after")
    assert await store.wait_for_change(0, 1.0) == 1


async def test_what_a_write_and_a_wake_up_cost(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    """Measured, not asserted (the contract tests bound the wake-up): printed with -s."""
    writer = await _open(stores, registry_postgres_url, schema)
    reader = await _open(stores, registry_postgres_url, schema)
    await push(writer, "warm-up")
    await reader.wait_for_change(0, 1.0)
    writes, wakes = [], []
    for i in range(30):
        known = await reader.revision()
        waiter = asyncio.create_task(reader.wait_for_change(known, 5.0))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await writer.create_version(draft(f"v{i}"), "alice", T0)
        writes.append(time.perf_counter() - started)
        assert await waiter > known
        wakes.append(time.perf_counter() - started)
    print(
        f"create_version: median {statistics.median(writes) * 1000:.1f} ms, "
        f"max {max(writes) * 1000:.1f} ms; another replica woken: median "
        f"{statistics.median(wakes) * 1000:.1f} ms, max {max(wakes) * 1000:.1f} ms after "
        "the write began (30 writes)"
    )
    assert max(wakes) < 1.0


async def test_numbers_as_large_as_the_api_takes_are_kept(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, registry_postgres_url, schema)
    await push(store, "one")
    with pytest.raises(VersionNotFound):
        await store.get_version(GREET, 2**63 - 1)
    # An export's audit log may name any version number (its entries are history).
    image = RegistryImage(
        "g-1",
        5,
        {GREET: {1: draft("one").to_version(1, T0)}},
        audit=(AuditEntry(2**62, T0, "ops", "note", GREET, 2**63 - 1, None, None, "", 2**62),),
    )
    overwritten = await store.restore(
        image, await store.generation(), 0, "ops", "", T0, overwrite=True
    )
    assert overwritten == 6
    entry = (await store.audit(GREET, limit=2))[1]
    assert (entry.seq, entry.version, entry.previous_prod) == (2**62, 2**63 - 1, 2**62)


async def test_the_board_comes_back_after_its_schema_is_dropped(
    registry_postgres_url: str, schema: str
) -> None:
    pool = await open_pool(registry_postgres_url, schema)
    try:
        board = await PostgresBoard.open(pool, schema=schema, forget_seconds=60.0)
        await board.publish(ReplicaBeat("a", "host", 1, "0.1.0", 3, 1.0, 0.1, True))
        await drop_schema(registry_postgres_url, schema)  # a server back empty
        assert (await board.read()).entries == []
        await board.publish(ReplicaBeat("a", "host", 1, "0.1.0", 4, 1.0, 0.1, True))
        assert [b.revision for b, _ in (await board.read()).entries] == [4]
    finally:
        await pool.close()


async def test_a_dead_server_is_a_fleet_error() -> None:
    pool = new_pool("postgresql://promptproxy@127.0.0.1:1/none", schema="x")
    await pool.open(wait=False)
    try:
        board = PostgresBoard(pool, schema="x", forget_seconds=60.0, op_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(FleetError, match="PostgreSQL"):
            await board.read()
        assert time.monotonic() - started < 2.0
    finally:
        await pool.close()


# -- tenant records ---------------------------------------------------------------------------


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def _registry_version(raw: psycopg.AsyncConnection[Any], schema: str) -> int:
    cur = await raw.execute(
        sql.SQL("SELECT version FROM {}.schema_versions WHERE component = 'registry'").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_registry_from_before_tenants_is_migrated_once_and_keeps_its_data(
    registry_postgres_url: str,
    schema: str,
    stores: list[PostgresStore],
    raw: psycopg.AsyncConnection[Any],
) -> None:
    """Schema version 1 (no tenant tables), as a release before tenants left it: replicas
    of this build starting together bring it up to date once, and read it as it was."""
    v1 = postgres_schema.MIGRATIONS[:1]
    version = draft("one").to_version(1, T0)
    created = AuditEntry(
        1, T0, "alice", lifecycle.CREATE_ACTION, GREET, 1, None, Status.DRAFT, "", None
    )
    pool = await open_pool(registry_postgres_url, schema)
    try:
        async with pool.connection() as conn:
            assert await migrate(conn, schema=schema, component="registry", steps=v1) == 1
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO registry_versions ({VERSION_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    postgres_schema.version_row(version),
                )
                await conn.execute(
                    f"INSERT INTO registry_audit ({postgres_schema.AUDIT_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    postgres_schema.audit_row(created),
                )
                await conn.execute(
                    "UPDATE registry_state SET generation = 'g-v1', revision = 1, audit_seq = 1"
                )
    finally:
        await pool.close()

    replicas = await asyncio.gather(*(open_store(registry_postgres_url, schema) for _ in range(3)))
    stores.extend(replicas)

    assert await _registry_version(raw, schema) == len(postgres_schema.MIGRATIONS)
    snapshot = await replicas[0].snapshot()
    assert (snapshot.generation, snapshot.revision) == ("g-v1", 1)
    assert snapshot.versions == {GREET: {1: version}}
    assert snapshot.tenants == {}
    assert list(await replicas[0].audit()) == [created]
    # The new tables work, and the numbering goes on from the old rows.
    stored, entry = await replicas[1].put_tenant(
        Tenant("acme", "pro", (_key_hash("sk-acme"),)), "alice", "", T0 + 1
    )
    assert entry is not None
    assert entry.seq == 2
    assert await replicas[2].revision() == 2
    assert (await replicas[2].snapshot()).tenants == {"acme": stored}


#: The rollout columns of steps 1 and 2, frozen here: the module's list grows with the schema.
_ROLLOUT_COLUMNS_V2 = (
    "prompt_key, id, candidate, mode, basis_points, sticky, started_at, updated_at, actor, "
    "restore_status, analysis"
)


async def test_a_registry_from_before_segments_reads_its_rollout_as_reaching_everyone(
    registry_postgres_url: str,
    schema: str,
    stores: list[PostgresStore],
    raw: psycopg.AsyncConnection[Any],
) -> None:
    """Schema version 2 (no segment column) with a rollout running, as the release before
    segments left it: migrated on open, the rollout reads back with no segment, and a new
    rollout keeps one."""
    version = replace(draft("one").to_version(1, T0), status=Status.CANDIDATE)
    old = Rollout(
        GREET,
        "r-old",
        1,
        RolloutMode.CANARY,
        1000,
        StickyKey.parse("user"),
        T0,
        T0,
        "carol",
        Status.DRAFT,
    )
    pool = await open_pool(registry_postgres_url, schema)
    try:
        async with pool.connection() as conn:
            steps = postgres_schema.MIGRATIONS[:2]
            assert await migrate(conn, schema=schema, component="registry", steps=steps) == 2
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO registry_versions ({VERSION_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    postgres_schema.version_row(version),
                )
                await conn.execute(
                    f"INSERT INTO registry_rollouts ({_ROLLOUT_COLUMNS_V2}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)",
                    postgres_schema.rollout_row(old)[:10],
                )
                await conn.execute(
                    "UPDATE registry_state SET generation = 'g-v2', revision = 2, audit_seq = 0"
                )
    finally:
        await pool.close()

    store = await _open(stores, registry_postgres_url, schema)

    assert await _registry_version(raw, schema) == len(postgres_schema.MIGRATIONS) == 3
    assert await store.get_rollout(GREET) == old
    assert (await store.snapshot()).rollouts == {GREET: old}
    assert old.segment is None
    # Ending it and starting one with a segment works on the migrated table.
    await store.abort_rollout(GREET, "carol", "", T0 + 1)
    segment = RolloutSegment(tiers=("pro",))
    started, entry = await store.start_rollout(
        GREET,
        "r-new",
        1,
        RolloutMode.CANARY,
        500,
        StickyKey.parse("tenant"),
        "dan",
        "",
        T0 + 2,
        segment=segment,
    )
    assert started.segment == segment
    assert entry.detail is not None
    assert entry.detail["segment"] == {"tiers": ["pro"], "tenants": []}
    other = await _open(stores, registry_postgres_url, schema)
    assert await other.get_rollout(GREET) == started


async def test_the_database_gives_an_api_key_to_one_tenant_by_itself(
    registry_postgres_url: str,
    schema: str,
    stores: list[PostgresStore],
    raw: psycopg.AsyncConnection[Any],
) -> None:
    """Whatever a future code path (or a hand-written query) does: one tenant per key, no
    key without its tenant, and a tenant's keys go with it."""
    store = await _open(stores, registry_postgres_url, schema)
    key = _key_hash("sk-acme")
    await store.put_tenant(Tenant("acme", "pro", (key,)), "alice", "", T0)
    await raw.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    await raw.execute("INSERT INTO registry_tenants (id, tier, updated_at) VALUES ('b', 'x', 0)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        await raw.execute(
            "INSERT INTO registry_tenant_keys (key_sha256, tenant_id) VALUES (%s, 'b')", (key,)
        )
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await raw.execute(
            "INSERT INTO registry_tenant_keys (key_sha256, tenant_id) VALUES (%s, 'nobody')",
            (_key_hash("sk-other"),),
        )
    assert (await store.snapshot()).tenant_by_key_hash[key].id == "acme"
    await raw.execute("DELETE FROM registry_tenants WHERE id = 'acme'")
    assert (await store.snapshot()).tenant_by_key_hash == {}


async def test_an_export_imported_into_another_schema_keeps_the_tenants(
    registry_postgres_url: str, stores: list[PostgresStore]
) -> None:
    source = await _open(stores, registry_postgres_url, f"test_{uuid.uuid4().hex[:8]}")
    await push(source, "one")
    acme = Tenant("acme", "enterprise", (_key_hash("sk-acme-1"), _key_hash("sk-acme-2")))
    await source.put_tenant(acme, "alice", "", T0)
    await source.put_tenant(Tenant("globex", "free"), "alice", "", T0 + 1)
    exported = (await RegistryRecovery(source, SnapshotHolder(), lambda: T0).export()).to_json()

    target = await _open(stores, registry_postgres_url, f"test_{uuid.uuid4().hex[:8]}")
    into = RegistryRecovery(target, SnapshotHolder(), lambda: T0 + 2)
    await into.import_image(RegistryImage.from_json(exported), "ops", "drill")

    original = await source.snapshot()
    copy = await target.snapshot()
    assert copy.tenants == original.tenants
    assert copy.tenant_by_key_hash == original.tenant_by_key_hash
    assert [e.action for e in await target.audit(tenant_audit_key("acme"))] == [TENANT_SET_ACTION]
    assert (await into.import_image(RegistryImage.from_json(exported), "ops", "")).unchanged
    # The imported keys are held: the database refuses them to another tenant.
    with pytest.raises(InvalidTransition, match="acme"):
        await target.put_tenant(Tenant("initech", "pro", acme.key_hashes[:1]), "b", "", T0 + 3)


async def test_a_restore_giving_one_key_to_two_tenants_is_refused_before_writing(
    registry_postgres_url: str, schema: str, stores: list[PostgresStore]
) -> None:
    """An image read from JSON cannot (``RegistryImage.from_json`` refuses it); one built
    in code is refused by the store as clearly, not as a server failure."""
    store = await _open(stores, registry_postgres_url, schema)
    await push(store, "one")
    revision = await store.revision()
    shared = (_key_hash("sk-shared"),)
    image = RegistryImage(
        "g-bad",
        9,
        {GREET: {1: draft("one").to_version(1, T0)}},
        tenants={"a": Tenant("a", "pro", shared), "b": Tenant("b", "pro", shared)},
    )
    with pytest.raises(InvalidTransition, match="API key"):
        await store.restore(image, await store.generation(), 0, "ops", "", T0, overwrite=True)
    assert await store.revision() == revision
