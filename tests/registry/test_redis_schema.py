"""The Redis store's key schema: a registry written before prompt keys opens as it was.

Schema 1 (every release before prompt keys) named keys by the bare slug and recorded no
schema version. Schema 2 names them by the prompt key's text, which for a plain key is the
slug, so the same keys read as themselves; it only records ``{registry}:schema`` = 2, once,
and refuses a store a newer promptproxy wrote. Tenant records came later, in keys of their
own that a store written before them lacks: absent, they mean no tenants. So did a
rollout's ``segment`` field: absent, the rollout reaches everyone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.models import (
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
    VersionDraft,
    tenant_audit_key,
)
from proxy.registry.redis_scripts import SCHEMA_VERSION
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import StoreUnavailable
from tests.redis_server import RedisServer

GREET = PromptKey("greet")
OTHER = PromptKey("other")
POLICY = AnalysisPolicy(interval=60.0, min_samples=20, steps=(1000, 5000))
GENERATION = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"schema-{time.monotonic_ns()}:"


def _body(slug: str, number: int) -> str:
    """A version's JSON as schema 1 stored it: ``version`` first, no ``status``."""
    version = VersionDraft(PromptKey(slug), f"{slug} v{number}", author="erin").to_version(
        number, 10.0 + number
    )
    data = version.to_dict()
    del data["status"], data["version"]
    return orjson.dumps({"version": number, **data}).decode()


def _audit(
    action: str, slug: str, version: int, to_status: str, previous: str = ""
) -> dict[str, str]:
    return {
        "at": "20.5",
        "actor": "erin",
        "action": action,
        "slug": slug,
        "version": str(version),
        "from_status": "draft",
        "to_status": to_status,
        "reason": "schema 1 era",
        "previous_prod": previous,
        "detail": "",
    }


async def write_schema_1(raw: Redis, prefix: str) -> None:
    """A registry as the last release before prompt keys left it: greet v1..v3 (v2 prod
    after v1, v3 in a canary with an analysis policy) and other v1 (a draft)."""
    tag = prefix + "{registry}:"
    await raw.set(tag + "revision", "6")
    await raw.set(tag + "generation", GENERATION)
    await raw.set(tag + "audit_seq", "6")
    await raw.sadd(tag + "slugs", "greet", "other")
    await raw.hset(tag + "versions:greet", mapping={n: _body("greet", n) for n in (1, 2, 3)})
    await raw.hset(tag + "status:greet", mapping={1: "deprecated", 2: "prod", 3: "candidate"})
    await raw.rpush(tag + "prod_stack:greet", "1", "2")
    await raw.hset(
        tag + "rollout:greet",
        mapping={
            "id": "r-old",
            "candidate": "3",
            "mode": "canary",
            "basis_points": "1000",
            "sticky": "user",
            "started_at": "30.25",
            "updated_at": "31.5",
            "actor": "erin",
            "restore_status": "draft",
            "analysis": orjson.dumps(POLICY.to_dict()).decode(),
        },
    )
    await raw.hset(tag + "versions:other", mapping={1: _body("other", 1)})
    await raw.hset(tag + "status:other", mapping={1: "draft"})
    entries = [
        _audit("create", "greet", 1, "draft"),
        _audit("create", "greet", 2, "draft"),
        _audit("create", "greet", 3, "draft"),
        _audit("promote", "greet", 1, "prod"),
        _audit("promote", "greet", 2, "prod", previous="1"),
        _audit("create", "other", 1, "draft"),
    ]
    for seq, fields in enumerate(entries, start=1):
        await raw.xadd(tag + "audit", fields, id=f"{seq}-0")
        await raw.xadd(tag + f"audit:{fields['slug']}", fields, id=f"{seq}-0")


async def _keys(raw: Redis, prefix: str) -> dict[str, Any]:
    return {key: await raw.dump(key) async for key in raw.scan_iter(match=f"{prefix}*")}


async def test_a_registry_of_the_slug_era_reads_as_itself(
    redis_server: RedisServer, raw: Redis, prefix: str
) -> None:
    await write_schema_1(raw, prefix)
    before = await _keys(raw, prefix)
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        snap = await store.snapshot()
        assert (snap.revision, snap.generation) == (6, GENERATION)
        assert {key: sorted(numbered) for key, numbered in snap.versions.items()} == {
            GREET: [1, 2, 3],
            OTHER: [1],
        }
        assert snap.versions[GREET][2].template == "greet v2"
        assert snap.versions[OTHER][1].key == OTHER
        assert snap.prod == {GREET: 2}
        rollout = snap.rollouts[GREET]
        assert (rollout.key, rollout.id, rollout.candidate, rollout.analysis) == (
            GREET,
            "r-old",
            3,
            POLICY,
        )
        assert await store.list_keys() == [GREET, OTHER]
        assert [e.seq for e in await store.audit(key=GREET)] == [5, 4, 3, 2, 1]
        assert [e.key for e in await store.audit(key=OTHER)] == [OTHER]

        # Recorded once, by that first read; nothing else was rewritten or renamed.
        after = await _keys(raw, prefix)
        schema = prefix + "{registry}:schema"
        assert await raw.get(schema) == str(SCHEMA_VERSION) == "2"
        assert {k: v for k, v in after.items() if k != schema} == before

        # The old rollback history still counts, and writes go to the same keys.
        back = await store.rollback(GREET, "ops", "after the upgrade", 40.0)
        assert (back.key, back.version, back.previous_prod, back.seq) == (GREET, 1, 2, 7)
        statuses = await raw.hgetall(prefix + "{registry}:status:greet")
        assert statuses == {"1": "prod", "2": "deprecated", "3": "candidate"}
        assert set(await _keys(raw, prefix)) == set(after)
    finally:
        await store.close()

    again = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        assert (await again.snapshot()).prod == {GREET: 1}
        assert await raw.get(prefix + "{registry}:schema") == "2"
    finally:
        await again.close()


async def test_a_registry_from_before_tenants_has_none_and_takes_them(
    redis_server: RedisServer, raw: Redis, prefix: str
) -> None:
    """No migration: the tenant keys are absent, which reads as no tenants, and the first
    tenant written adds its keys, numbered after the store's audit log, at the same schema."""
    await write_schema_1(raw, prefix)
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        before = await _keys(raw, prefix)  # nothing read yet, so no schema key either
        snap = await store.snapshot()
        assert (snap.tenants, snap.tenant_by_key_hash) == ({}, {})
        assert await store.list_tenants() == []
        assert set(await _keys(raw, prefix)) == {*before, prefix + "{registry}:schema"}

        digest = hashlib.sha256(b"sk-acme").hexdigest()
        stored, entry = await store.put_tenant(Tenant("acme", "pro", (digest,)), "ops", "", 50.0)
        assert entry is not None
        assert entry.seq == 7  # after the 6 entries of schema 1
        assert (await store.snapshot()).tenant_by_key_hash == {digest: stored}
        tag = prefix + "{registry}:"
        added = set(await _keys(raw, prefix)) - set(before)
        assert added == {
            tag + "schema",
            tag + "tenants",
            tag + "tenant_keys",
            tag + "tenant_audits",
            store.keys.key_audit(tenant_audit_key("acme")),
        }
        assert await raw.get(tag + "schema") == str(SCHEMA_VERSION) == "2"
        # The prompts are as they were.
        assert (await store.snapshot()).prod == {GREET: 2}
    finally:
        await store.close()


async def test_a_rollout_from_before_segments_reaches_everyone_and_a_new_one_has_one(
    redis_server: RedisServer, raw: Redis, prefix: str
) -> None:
    """No migration: the rollout hash lacks the field, which reads as no segment; a rollout
    started now writes it, and the schema stays what it was."""
    await write_schema_1(raw, prefix)
    rollout_key = prefix + "{registry}:rollout:greet"
    assert not await raw.hexists(rollout_key, "segment")
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        running = await store.get_rollout(GREET)
        assert running is not None
        assert (running.id, running.analysis, running.segment) == ("r-old", POLICY, None)
        assert (await store.snapshot()).rollouts[GREET].segment is None
        ramped, entry = await store.update_rollout(GREET, "r-old", 2500, "erin", "", 40.0)
        assert ramped.segment is None
        assert entry.detail is not None
        assert "segment" not in entry.detail  # the entries of such a rollout keep their shape
        assert not await raw.hexists(rollout_key, "segment")

        await store.abort_rollout(GREET, "erin", "", 41.0)
        segment = RolloutSegment(tiers=("pro",), tenants=("acme",))
        started, _ = await store.start_rollout(
            GREET,
            "r-new",
            3,
            RolloutMode.CANARY,
            500,
            StickyKey.parse("tenant"),
            "erin",
            "",
            42.0,
            segment=segment,
        )
        assert await raw.hget(rollout_key, "segment") == orjson.dumps(segment.to_dict()).decode()
        assert await store.get_rollout(GREET) == started
        assert await raw.get(prefix + "{registry}:schema") == str(SCHEMA_VERSION) == "2"
    finally:
        await store.close()


async def test_a_store_a_newer_promptproxy_wrote_is_refused_not_misread(
    redis_server: RedisServer, raw: Redis, prefix: str
) -> None:
    await write_schema_1(raw, prefix)
    await raw.set(prefix + "{registry}:schema", str(SCHEMA_VERSION + 1))
    before = await _keys(raw, prefix)
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        message = f"schema v{SCHEMA_VERSION + 1}.*upgrade promptproxy"
        with pytest.raises(StoreUnavailable, match=message):
            await store.snapshot()
        with pytest.raises(StoreUnavailable, match=message):
            await store.set_status(GREET, 3, Status.DEPRECATED, "ops", "", 41.0)
        assert await _keys(raw, prefix) == before
    finally:
        await store.close()


async def test_a_new_store_records_its_schema_with_its_first_command(
    redis_server: RedisServer, raw: Redis, prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        assert await raw.get(prefix + "{registry}:schema") is None  # opening does no I/O
        assert await store.revision() == 0
        assert await raw.get(prefix + "{registry}:schema") == "2"
        version, _ = await store.create_version(VersionDraft(GREET, "hi"), "alice", 1.0)
        assert await raw.hget(prefix + "{registry}:versions:greet", "1") is not None
        assert version.key == GREET
    finally:
        await store.close()
