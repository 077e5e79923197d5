"""Registry files written by an older promptproxy open, upgrade in place and keep their data.

Each earlier schema has a writer here that builds a file the way that release left it, with
the schema's DDL frozen in this file: v1 (versions, audit), v2 (rollouts, audit detail), v3
(a rollout's analysis policy), v4 (the registry's identity). v5 names a version line by its
prompt key (``prompt_key`` columns holding the key's text); every earlier file must read
through it as it did before. v6 added tenant records, v7 a rollout's segment (a rollout of
an older file reaches everyone, as it did).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import orjson
import pytest

from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.embedded_schema import SCHEMA_VERSION
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import (
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
    VersionDraft,
)
from proxy.registry.store import StoreUnavailable

GREET = PromptKey("greet")

# What promptproxy wrote as schema v1, frozen here on purpose: the module's own copy must
# never change, and this test is what notices if it does.
_V1_DDL = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta (key, value) VALUES ('revision', 0)",
    """CREATE TABLE versions (
        slug TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('draft', 'candidate', 'prod', 'deprecated')),
        PRIMARY KEY (slug, version)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX versions_one_prod ON versions (slug) WHERE status = 'prod'",
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        slug TEXT NOT NULL,
        version INTEGER,
        from_status TEXT,
        to_status TEXT,
        reason TEXT NOT NULL,
        previous_prod INTEGER
    )""",
    "CREATE INDEX audit_by_slug ON audit (slug, seq)",
    """CREATE TRIGGER versions_immutable
        BEFORE UPDATE OF slug, version, sha256, created_at, body ON versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are immutable'); END""",
    """CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are never deleted'); END""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)

# What schema v2 added (rollouts, audit detail), frozen for the same reason.
_V2_DDL = (
    "ALTER TABLE audit ADD COLUMN detail TEXT",
    """CREATE TABLE rollouts (
        slug TEXT PRIMARY KEY,
        id TEXT NOT NULL CHECK (id <> ''),
        candidate INTEGER NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('canary', 'shadow')),
        basis_points INTEGER NOT NULL CHECK (basis_points BETWEEN 0 AND 10000),
        sticky TEXT NOT NULL,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        actor TEXT NOT NULL,
        restore_status TEXT NOT NULL CHECK (restore_status IN ('draft', 'candidate'))
    ) WITHOUT ROWID""",
    """CREATE TRIGGER rollouts_candidate_exists BEFORE INSERT ON rollouts
        WHEN (SELECT status FROM versions WHERE slug = NEW.slug AND version = NEW.candidate)
            IS NOT 'candidate'
        BEGIN SELECT RAISE(ABORT, 'a rollout candidate must be a candidate version'); END""",
    """CREATE TRIGGER rollouts_fixed
        BEFORE UPDATE OF slug, id, candidate, mode, sticky, started_at, actor, restore_status
        ON rollouts
        BEGIN SELECT RAISE(ABORT, 'a running rollout only changes its percentage'); END""",
    """CREATE TRIGGER versions_rollout_candidate BEFORE UPDATE OF status ON versions
        WHEN NEW.status <> 'candidate' AND EXISTS (
            SELECT 1 FROM rollouts WHERE slug = OLD.slug AND candidate = OLD.version)
        BEGIN SELECT RAISE(ABORT, 'the candidate of a running rollout stays candidate'); END""",
)

# What schema v3 added (the rollout's analysis policy), frozen for the same reason.
_V3_DDL = (
    "ALTER TABLE rollouts ADD COLUMN analysis TEXT "
    "CHECK (analysis IS NULL OR json_valid(analysis))",
    "DROP TRIGGER rollouts_fixed",
    """CREATE TRIGGER rollouts_fixed
        BEFORE UPDATE OF slug, id, candidate, mode, sticky, started_at, actor, restore_status,
            analysis
        ON rollouts
        BEGIN SELECT RAISE(ABORT, 'a running rollout only changes its percentage'); END""",
)

# What schema v4 added (the registry's identity), frozen for the same reason.
_V4_DDL = (
    """CREATE TABLE identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        generation TEXT NOT NULL CHECK (generation <> '')
    )""",
    "INSERT INTO identity (singleton, generation) VALUES (1, lower(hex(randomblob(16))))",
)

TEMPLATES = {1: "Hi {{ name }}", 2: "Hello {{ name }}", 3: "Hey {{ name }}"}
STATUSES = {1: Status.DEPRECATED, 2: Status.PROD, 3: Status.DRAFT}
# (action, version, from, to, previous prod), as a v1 store logged them.
HISTORY = [
    ("create", 1, None, "draft", None),
    ("create", 2, None, "draft", None),
    ("create", 3, None, "draft", None),
    ("promote", 1, "draft", "prod", None),
    ("promote", 2, "draft", "prod", 1),
]


def write_v1_file(path: Path) -> None:
    """A registry as promptproxy with schema v1 left it: greet v1..v3, v2 prod after v1."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("BEGIN")
        for statement in _V1_DDL:
            raw.execute(statement)
        for number, template in TEMPLATES.items():
            version = VersionDraft(GREET, template, author="alice").to_version(number, 10.0)
            body = version.to_dict()
            del body["status"]
            raw.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    "greet",
                    number,
                    version.sha256,
                    10.0,
                    orjson.dumps(body).decode(),
                    STATUSES[number].value,
                ),
            )
        for i, (action, number, from_status, to_status, previous) in enumerate(HISTORY):
            raw.execute(
                "INSERT INTO audit (at, actor, action, slug, version, from_status, to_status, "
                "reason, previous_prod) VALUES (?, 'alice', ?, 'greet', ?, ?, ?, 'v1 era', ?)",
                (20.0 + i, action, number, from_status, to_status, previous),
            )
        raw.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (len(HISTORY),))
        raw.execute("PRAGMA user_version = 1")
        raw.execute("COMMIT")
    finally:
        raw.close()


# A running rollout as a v2 store kept it, and the audit entry of its start.
V2_ROLLOUT = ("greet", "r-old", 3, "canary", 1000, "user", 40.0, 40.0, "carol", "draft")
V2_DETAIL = {"rollout_id": "r-old", "mode": "canary", "percent": 10.0, "sticky": "user"}
POLICY = AnalysisPolicy(interval=30.0, min_samples=50, steps=(500, 2500, 7_500))


def write_v2_file(path: Path) -> None:
    """A v1 registry that promptproxy with schema v2 upgraded, then ran a canary of v3 on."""
    write_v1_file(path)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in _V2_DDL:
            raw.execute(statement)
        raw.execute("UPDATE versions SET status = 'candidate' WHERE slug = 'greet' AND version = 3")
        raw.execute("INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", V2_ROLLOUT)
        raw.execute(
            "INSERT INTO audit (at, actor, action, slug, version, from_status, to_status, "
            "reason, previous_prod, detail) VALUES (40.0, 'carol', 'rollout_start', 'greet', 3, "
            "'draft', 'candidate', 'v2 era', NULL, ?)",
            (orjson.dumps(V2_DETAIL).decode(),),
        )
        raw.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        raw.execute("PRAGMA user_version = 2")
        raw.execute("COMMIT")
    finally:
        raw.close()


# A second prompt a v3 store rolled out with an analysis policy: v1 prod, v2 its candidate.
OTHER = PromptKey("other")
V3_POLICY = AnalysisPolicy(interval=60.0, min_samples=20, steps=(1000, 5000))
V3_ROLLOUT = ("other", "r-pol", 2, "shadow", 1000, "none", 50.0, 50.0, "erin", "draft")


def _insert_version(raw: sqlite3.Connection, key: PromptKey, number: int, status: str) -> None:
    """A version row as every release wrote it: the body is the version's JSON (its slug
    field the bare slug) without the status."""
    template = f"{key.slug} v{number}"
    body = VersionDraft(key, template, author="erin").to_version(number, 11.0).to_dict()
    del body["status"]
    raw.execute(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
        (key.slug, number, body["sha256"], 11.0, orjson.dumps(body).decode(), status),
    )


def write_v3_file(path: Path) -> None:
    """A v2 registry that promptproxy with schema v3 upgraded, then pushed ``other`` and ran
    a shadow rollout of its v2 with an analysis policy."""
    write_v2_file(path)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in _V3_DDL:
            raw.execute(statement)
        _insert_version(raw, OTHER, 1, "prod")
        _insert_version(raw, OTHER, 2, "candidate")
        raw.execute(
            "INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*V3_ROLLOUT, orjson.dumps(V3_POLICY.to_dict()).decode()),
        )
        raw.execute(
            "INSERT INTO audit (at, actor, action, slug, version, from_status, to_status, "
            "reason, previous_prod, detail) VALUES (50.0, 'erin', 'rollout_start', 'other', 2, "
            "'draft', 'candidate', 'v3 era', NULL, ?)",
            (orjson.dumps({"rollout_id": "r-pol"}).decode(),),
        )
        raw.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        raw.execute("PRAGMA user_version = 3")
        raw.execute("COMMIT")
    finally:
        raw.close()


V4_GENERATION = "0123456789abcdef0123456789abcdef"


def write_v4_file(path: Path) -> None:
    """A v3 registry that promptproxy with schema v4 upgraded (it got its generation)."""
    write_v3_file(path)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in _V4_DDL:
            raw.execute(statement)
        raw.execute("UPDATE identity SET generation = ?", (V4_GENERATION,))
        raw.execute("PRAGMA user_version = 4")
        raw.execute("COMMIT")
    finally:
        raw.close()


_V5_DDL = (
    "ALTER TABLE versions RENAME COLUMN slug TO prompt_key",
    "ALTER TABLE audit RENAME COLUMN slug TO prompt_key",
    "ALTER TABLE rollouts RENAME COLUMN slug TO prompt_key",
    "DROP INDEX audit_by_slug",
    "CREATE INDEX audit_by_key ON audit (prompt_key, seq)",
)


def write_v5_file(path: Path) -> None:
    """A v4 registry that promptproxy with schema v5 upgraded (slugs became prompt keys)."""
    write_v4_file(path)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in _V5_DDL:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 5")
        raw.execute("COMMIT")
    finally:
        raw.close()


def schema_of(path: Path) -> tuple[int, list[tuple[str, str, str]]]:
    raw = sqlite3.connect(path)
    try:
        version = int(raw.execute("PRAGMA user_version").fetchone()[0])
        rows = raw.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        raw.close()
    return version, rows


async def test_a_v1_file_is_upgraded_in_place_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    write_v1_file(path)

    store = await EmbeddedStore.open(path)
    try:
        assert await store.revision() == len(HISTORY)
        versions = await store.list_versions(GREET)
        assert [(v.version, v.template, v.status) for v in versions] == [
            (n, TEMPLATES[n], STATUSES[n]) for n in (1, 2, 3)
        ]
        entries = list(reversed(await store.audit()))
        assert [
            (e.action, e.version, e.from_status, e.to_status, e.previous_prod) for e in entries
        ] == HISTORY
        assert {(e.reason, e.detail) for e in entries} == {("v1 era", None)}
        snap = await store.snapshot()
        assert (snap.prod, snap.rollouts) == ({GREET: 2}, {})

        # The new features work on the upgraded file, and the old history still counts:
        # rollback finds v1 from the v1-era promote entries.
        rollout, started = await store.start_rollout(
            GREET,
            "r-1",
            3,
            RolloutMode.CANARY,
            2500,
            StickyKey.parse("user"),
            "bob",
            "",
            30.0,
            POLICY,
        )
        assert rollout.analysis == POLICY
        assert (await store.audit(limit=1))[0].detail == rollout.audit_detail()
        assert (await store.rollback(GREET, "bob", "", 31.0)).version == 1
        assert await store.get_rollout(GREET) == rollout
        after = (await store.snapshot(), list(await store.audit()))
    finally:
        await store.close()

    reopened = await EmbeddedStore.open(path)  # already current: opens without migrating again
    try:
        assert (await reopened.snapshot(), list(await reopened.audit())) == after
        assert started in after[1]
    finally:
        await reopened.close()

    fresh = tmp_path / "fresh.db"
    await (await EmbeddedStore.open(fresh)).close()
    assert schema_of(path) == schema_of(fresh)
    assert schema_of(path)[0] == SCHEMA_VERSION == 7


async def test_the_upgraded_file_still_refuses_to_edit_history(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    write_v1_file(path)
    await (await EmbeddedStore.open(path)).close()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            "UPDATE audit SET detail = '{}'",
            "UPDATE audit SET actor = 'mallory'",
            "DELETE FROM audit",
            "UPDATE versions SET body = '{}'",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(statement)
    finally:
        raw.close()


async def test_workers_opening_a_v1_file_together_upgrade_it_once(tmp_path: Path) -> None:
    # Every proxy worker restarts on the new release at once; the upgrade is one
    # transaction, so no worker sees a half-upgraded file or upgrades it twice.
    path = tmp_path / "registry.db"
    write_v1_file(path)
    stores = await asyncio.gather(*(EmbeddedStore.open(path) for _ in range(6)))
    try:
        revisions = await asyncio.gather(*(store.revision() for store in stores))
        assert revisions == [len(HISTORY)] * 6
        rollout, _ = await stores[0].start_rollout(
            GREET,
            "r-1",
            3,
            RolloutMode.SHADOW,
            100,
            StickyKey.parse("none"),
            "bob",
            "",
            30.0,
        )
        assert all([await store.get_rollout(GREET) == rollout for store in stores])
    finally:
        for store in stores:
            await store.close()


async def test_a_v2_file_keeps_its_running_rollout_without_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    write_v2_file(path)

    store = await EmbeddedStore.open(path)
    try:
        assert await store.revision() == len(HISTORY) + 1
        running = await store.get_rollout(GREET)
        assert running is not None
        assert (running.id, running.candidate, running.basis_points, running.actor) == (
            "r-old",
            3,
            1000,
            "carol",
        )
        assert running.analysis is None
        assert (await store.snapshot()).rollouts == {GREET: running}
        assert (await store.audit(limit=1))[0].detail == V2_DETAIL == running.audit_detail()

        # A ramp of the old rollout works and it still has no policy.
        ramped, entry = await store.update_rollout(GREET, "r-old", 2500, "carol", "", 41.0)
        assert (ramped.basis_points, ramped.analysis) == (2500, None)
        assert entry.detail == {**V2_DETAIL, "percent": 25.0, "from_percent": 10.0}

        # Once it ends, a new rollout on the upgraded file carries a policy, kept by ramps.
        await store.abort_rollout(GREET, "carol", "", 42.0)
        started, _ = await store.start_rollout(
            GREET,
            "r-new",
            3,
            RolloutMode.SHADOW,
            500,
            StickyKey.parse("none"),
            "dan",
            "",
            43.0,
            POLICY,
        )
        ramped, entry = await store.update_rollout(GREET, "r-new", 2500, "dan", "", 44.0)
        assert ramped.analysis == started.analysis == POLICY
        assert entry.detail is not None
        assert entry.detail["analysis"] == POLICY.to_dict()
        assert (await store.snapshot()).rollouts[GREET] == ramped
    finally:
        await store.close()

    fresh = tmp_path / "fresh.db"
    await (await EmbeddedStore.open(fresh)).close()
    assert schema_of(path) == schema_of(fresh)
    assert schema_of(path)[0] == SCHEMA_VERSION == 7


# What schema v6 added (tenant records), frozen for the same reason.
_V6_DDL = (
    """CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL CHECK (json_valid(body))
    ) WITHOUT ROWID""",
    """CREATE TABLE tenant_keys (
        key_sha256 TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX tenant_keys_by_tenant ON tenant_keys (tenant_id)",
)
V6_TENANT = Tenant("acme", "pro", (hashlib.sha256(b"sk-acme").hexdigest(),), 60.0)


def write_v6_file(path: Path) -> None:
    """A v5 registry that promptproxy with schema v6 upgraded, then gave a tenant. Its two
    running rollouts (greet's without a policy, other's with one) have no segment."""
    write_v5_file(path)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in _V6_DDL:
            raw.execute(statement)
        raw.execute(
            "INSERT INTO tenants (id, body) VALUES (?, ?)",
            (V6_TENANT.id, orjson.dumps(V6_TENANT.to_dict()).decode()),
        )
        raw.executemany(
            "INSERT INTO tenant_keys (key_sha256, tenant_id) VALUES (?, ?)",
            [(digest, V6_TENANT.id) for digest in V6_TENANT.key_hashes],
        )
        raw.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        raw.execute("PRAGMA user_version = 6")
        raw.execute("COMMIT")
    finally:
        raw.close()


WRITERS = {
    1: write_v1_file,
    2: write_v2_file,
    3: write_v3_file,
    4: write_v4_file,
    5: write_v5_file,
    6: write_v6_file,
}


def columns(path: Path, table: str) -> list[str]:
    raw = sqlite3.connect(path)
    try:
        return [row[1] for row in raw.execute(f"PRAGMA table_info({table})")]
    finally:
        raw.close()


@pytest.mark.parametrize("version", sorted(WRITERS), ids=[f"v{n}" for n in sorted(WRITERS)])
async def test_a_file_of_every_earlier_schema_reads_through_prompt_keys(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "registry.db"
    WRITERS[version](path)
    raw = sqlite3.connect(path)
    try:
        rows_before = {
            table: raw.execute(f"SELECT * FROM {table}").fetchall()
            for table in ("versions", "audit", *(("rollouts",) if version >= 2 else ()))
        }
    finally:
        raw.close()

    store = await EmbeddedStore.open(path)
    try:
        snap = await store.snapshot()
        versions = await store.list_versions(GREET)
        audit = list(reversed(await store.audit()))
        greet_audit = list(reversed(await store.audit(key=GREET)))
        keys = await store.list_keys()
    finally:
        await store.close()

    # The bare slugs of every earlier file read as the plain keys they are.
    assert keys == ([GREET, OTHER] if version >= 3 else [GREET])
    assert all(key.is_plain for key in snap.versions)
    assert [(v.key, v.version, v.template, v.status) for v in versions] == [
        (GREET, n, TEMPLATES[n], Status.CANDIDATE if n == 3 and version >= 2 else STATUSES[n])
        for n in (1, 2, 3)
    ]
    assert snap.prod == ({GREET: 2, OTHER: 1} if version >= 3 else {GREET: 2})
    assert {e.key for e in audit} == set(keys)
    assert [e.action for e in greet_audit] == [a for a, *_ in HISTORY] + (
        ["rollout_start"] if version >= 2 else []
    )
    if version >= 2:
        assert snap.rollouts[GREET].key == GREET
        assert (snap.rollouts[GREET].id, snap.rollouts[GREET].analysis) == ("r-old", None)
    if version >= 3:
        other = snap.rollouts[OTHER]
        assert (other.key, other.id, other.candidate, other.analysis) == (
            OTHER,
            "r-pol",
            2,
            V3_POLICY,
        )
    if version >= 4:
        assert snap.generation == V4_GENERATION  # the identity is kept, not minted again
    # Tenants came with v6: none before.
    assert snap.tenants == ({V6_TENANT.id: V6_TENANT} if version >= 6 else {})
    assert all(rollout.segment is None for rollout in snap.rollouts.values())

    # Upgraded once, to the schema a fresh file gets, with the key a named column.
    fresh = tmp_path / "fresh.db"
    await (await EmbeddedStore.open(fresh)).close()
    assert schema_of(path) == schema_of(fresh)
    assert schema_of(path)[0] == SCHEMA_VERSION == 7
    for table in ("versions", "audit", "rollouts"):
        assert "prompt_key" in columns(path, table)
        assert "slug" not in columns(path, table)
    raw = sqlite3.connect(path)
    try:
        for table, rows in rows_before.items():
            # Every row as it was (columns later steps added hold NULL): only a name changed.
            after = raw.execute(f"SELECT * FROM {table}").fetchall()
            width = len(rows[0])
            assert [row[:width] for row in after] == rows
            assert {row[width:] for row in after} <= {(None,) * (len(after[0]) - width)}
    finally:
        raw.close()


async def test_the_renamed_columns_keep_every_rule_of_the_file(tmp_path: Path) -> None:
    # RENAME COLUMN rewrites the triggers and indexes that named ``slug``: immutability,
    # one prod per key and the rollout rules hold on the upgraded file as on a fresh one.
    path = tmp_path / "registry.db"
    write_v4_file(path)
    await (await EmbeddedStore.open(path)).close()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            "UPDATE versions SET prompt_key = 'renamed' WHERE prompt_key = 'greet'",
            "UPDATE versions SET status = 'prod' WHERE prompt_key = 'greet' AND version = 1",
            "UPDATE versions SET status = 'draft' WHERE prompt_key = 'other' AND version = 2",
            "UPDATE rollouts SET prompt_key = 'greet' WHERE prompt_key = 'other'",
            "UPDATE audit SET prompt_key = 'renamed'",
            "INSERT INTO rollouts SELECT 'greet', 'r-2', 1, mode, basis_points, sticky, "
            "started_at, updated_at, actor, restore_status, analysis, segment FROM rollouts "
            "WHERE prompt_key = 'other'",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(statement)
    finally:
        raw.close()


async def test_a_v6_file_keeps_its_rollouts_without_a_segment_and_takes_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    write_v6_file(path)

    store = await EmbeddedStore.open(path)
    try:
        snap = await store.snapshot()
        assert {key: r.segment for key, r in snap.rollouts.items()} == {GREET: None, OTHER: None}
        assert snap.rollouts[OTHER].analysis == V3_POLICY  # the column before it is intact
        assert snap.tenants == {V6_TENANT.id: V6_TENANT}
        running = await store.get_rollout(GREET)
        assert running is not None
        assert (running.id, running.segment) == ("r-old", None)
        assert running.audit_detail() == V2_DETAIL  # its entries keep their shape

        # A ramp of the old rollout still has none; a new one on the upgraded file has one.
        ramped, entry = await store.update_rollout(GREET, "r-old", 2500, "carol", "", 41.0)
        assert ramped.segment is None
        assert entry.detail is not None
        assert "segment" not in entry.detail
        await store.abort_rollout(GREET, "carol", "", 42.0)
        segment = RolloutSegment(tiers=("pro",), tenants=("acme",))
        started, entry = await store.start_rollout(
            GREET,
            "r-seg",
            3,
            RolloutMode.CANARY,
            500,
            StickyKey.parse("tenant"),
            "dan",
            "",
            43.0,
            segment=segment,
        )
        assert started.segment == segment
        assert entry.detail is not None
        assert entry.detail["segment"] == segment.to_dict()
    finally:
        await store.close()

    reopened = await EmbeddedStore.open(path)
    try:
        assert await reopened.get_rollout(GREET) == started
    finally:
        await reopened.close()

    assert columns(path, "rollouts")[-2:] == ["analysis", "segment"]
    fresh = tmp_path / "fresh.db"
    await (await EmbeddedStore.open(fresh)).close()
    assert schema_of(path) == schema_of(fresh)
    assert schema_of(path)[0] == SCHEMA_VERSION == 7
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            # Fixed for the rollout's life, as its policy is: the file itself refuses.
            "UPDATE rollouts SET segment = NULL WHERE prompt_key = 'greet'",
            """UPDATE rollouts SET segment = '{"tiers": ["free"]}' """
            "WHERE prompt_key = 'other'",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(statement)
        # A row holds JSON or nothing (other's v2 stays candidate: only the CHECK can refuse).
        raw.execute("DELETE FROM rollouts WHERE prompt_key = 'other'")
        insert = (
            "INSERT INTO rollouts VALUES "
            "('other', 'r-x', 2, 'shadow', 100, 'none', 1.0, 1.0, 'x', 'draft', NULL, ?)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute(insert, ("not json",))
        raw.execute(insert, ('{"tiers": ["free"], "tenants": []}',))
    finally:
        raw.close()


async def test_a_file_of_a_newer_schema_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    write_v4_file(path)
    await (await EmbeddedStore.open(path)).close()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        raw.close()
    with pytest.raises(StoreUnavailable, match=f"schema v{SCHEMA_VERSION + 1}"):
        await EmbeddedStore.open(path)
