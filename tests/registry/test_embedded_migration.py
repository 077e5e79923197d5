"""Registry files written by an older promptproxy open, upgrade in place and keep their data."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import RolloutMode, Status, StickyKey, VersionDraft

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
            version = VersionDraft("greet", template, author="alice").to_version(number, 10.0)
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
        versions = await store.list_versions("greet")
        assert [(v.version, v.template, v.status) for v in versions] == [
            (n, TEMPLATES[n], STATUSES[n]) for n in (1, 2, 3)
        ]
        entries = list(reversed(await store.audit()))
        assert [
            (e.action, e.version, e.from_status, e.to_status, e.previous_prod) for e in entries
        ] == HISTORY
        assert {(e.reason, e.detail) for e in entries} == {("v1 era", None)}
        snap = await store.snapshot()
        assert (snap.prod, snap.rollouts) == ({"greet": 2}, {})

        # The new features work on the upgraded file, and the old history still counts:
        # rollback finds v1 from the v1-era promote entries.
        rollout, started = await store.start_rollout(
            "greet",
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
        assert (await store.rollback("greet", "bob", "", 31.0)).version == 1
        assert await store.get_rollout("greet") == rollout
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
    assert schema_of(path)[0] == 4


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
            "greet", "r-1", 3, RolloutMode.SHADOW, 100, StickyKey.parse("none"), "bob", "", 30.0
        )
        assert all([await store.get_rollout("greet") == rollout for store in stores])
    finally:
        for store in stores:
            await store.close()


async def test_a_v2_file_keeps_its_running_rollout_without_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    write_v2_file(path)

    store = await EmbeddedStore.open(path)
    try:
        assert await store.revision() == len(HISTORY) + 1
        running = await store.get_rollout("greet")
        assert running is not None
        assert (running.id, running.candidate, running.basis_points, running.actor) == (
            "r-old",
            3,
            1000,
            "carol",
        )
        assert running.analysis is None
        assert (await store.snapshot()).rollouts == {"greet": running}
        assert (await store.audit(limit=1))[0].detail == V2_DETAIL == running.audit_detail()

        # A ramp of the old rollout works and it still has no policy.
        ramped, entry = await store.update_rollout("greet", "r-old", 2500, "carol", "", 41.0)
        assert (ramped.basis_points, ramped.analysis) == (2500, None)
        assert entry.detail == {**V2_DETAIL, "percent": 25.0, "from_percent": 10.0}

        # Once it ends, a new rollout on the upgraded file carries a policy, kept by ramps.
        await store.abort_rollout("greet", "carol", "", 42.0)
        started, _ = await store.start_rollout(
            "greet",
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
        ramped, entry = await store.update_rollout("greet", "r-new", 2500, "dan", "", 44.0)
        assert ramped.analysis == started.analysis == POLICY
        assert entry.detail is not None
        assert entry.detail["analysis"] == POLICY.to_dict()
        assert (await store.snapshot()).rollouts["greet"] == ramped
    finally:
        await store.close()

    fresh = tmp_path / "fresh.db"
    await (await EmbeddedStore.open(fresh)).close()
    assert schema_of(path) == schema_of(fresh)
    assert schema_of(path)[0] == 4
