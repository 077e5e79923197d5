"""What only the embedded (SQLite file) store has: a file on disk shared by processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.embedded_watch import ChangeWatch
from proxy.registry.models import RolloutMode, Status, StickyKey, VersionDraft
from proxy.registry.store import StoreUnavailable

GREET = PromptKey("greet")

REPO = Path(__file__).resolve().parents[2]


def draft(template: str) -> VersionDraft:
    return VersionDraft(key=GREET, template=template)


async def test_the_registry_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path)
    await store.create_version(draft("a"), "alice", 1.0)
    await store.create_version(draft("b"), "alice", 2.0)
    await store.promote(GREET, 2, "alice", "ship", 3.0)
    before = (await store.snapshot(), list(await store.audit()))
    await store.close()

    reopened = await EmbeddedStore.open(path)
    try:
        assert (await reopened.snapshot(), list(await reopened.audit())) == before
        version, created = await reopened.create_version(draft("c"), "bob", 4.0)
        assert (version.version, created) == (3, True)
    finally:
        await reopened.close()


_OPENER = """
import asyncio, sys, time
from pathlib import Path
from proxy.prompt_key import PromptKey
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import VersionDraft

path, go, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
Path(f"{go}.{tag}").touch()  # ready
deadline = time.monotonic() + 20
while not go.exists():
    assert time.monotonic() < deadline
    time.sleep(0.0005)


async def main() -> None:
    # Open/push/close in a loop: opens race with the schema creation and with the
    # checkpoint another process runs when it closes the file last.
    for i in range(10):
        store = await EmbeddedStore.open(path)
        draft = VersionDraft(key=PromptKey("greet"), template=f"{tag}-{i}")
        await store.create_version(draft, tag, time.time())
        await store.close()


asyncio.run(main())
"""


async def test_workers_opening_a_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    # Several proxy workers starting at once all create/migrate the same new file.
    path, go = tmp_path / "new" / "registry.db", tmp_path / "go"
    tags = [f"w{i}" for i in range(6)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _OPENER,
            str(path),
            str(go),
            tag,
            cwd=REPO,
            stderr=asyncio.subprocess.PIPE,
        )
        for tag in tags
    ]

    def all_ready() -> bool:
        return all(Path(f"{go}.{tag}").exists() for tag in tags)

    try:
        async with asyncio.timeout(20):
            while not all_ready():
                assert all(p.returncode is None for p in procs), "a worker died early"
                await asyncio.sleep(0.01)
            go.touch()
            errors = [(await p.communicate())[1].decode() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert [p.returncode for p in procs] == [0] * 6, errors

    store = await EmbeddedStore.open(path)
    try:
        versions = await store.list_versions(GREET)
        assert [v.version for v in versions] == list(range(1, 61))
        assert {v.template for v in versions} == {f"{t}-{i}" for t in tags for i in range(10)}
    finally:
        await store.close()


async def test_a_file_from_a_newer_promptproxy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    await (await EmbeddedStore.open(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreUnavailable, match=r"schema v99.*upgrade promptproxy"):
        await EmbeddedStore.open(path)


async def test_an_unusable_path_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        await EmbeddedStore.open(tmp_path / "a-file" / "registry.db")
    (tmp_path / "garbage.db").write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreUnavailable, match=r"garbage\.db"):
        await EmbeddedStore.open(tmp_path / "garbage.db")


async def test_a_lock_held_too_long_fails_without_blocking_the_event_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path, busy_timeout=0.5)
    await store.create_version(draft("a"), "alice", 1.0)
    # Another process (here: another connection) sits on the write lock.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_version(draft("b"), "alice", 2.0)
        elapsed = time.monotonic() - started
        # Readers are not blocked by a writer (WAL).
        assert (await store.get_version(GREET, 1)).template == "a"
    finally:
        ticking.cancel()
        other.execute("ROLLBACK")
        other.close()
    assert 0.4 < elapsed < 2.0, elapsed
    assert ticks >= 20, f"event loop starved during the wait: {ticks} ticks"

    version, created = await store.create_version(draft("b"), "alice", 3.0)
    assert (version.version, created) == (2, True)
    assert len(await store.audit()) == 2
    await store.close()


async def test_the_file_itself_refuses_to_edit_history(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path)
    await store.create_version(draft("a"), "alice", 1.0)
    await store.set_status(GREET, 1, Status.CANDIDATE, "alice", "", 2.0)
    await store.close()

    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            "UPDATE versions SET body = '{}'",
            "UPDATE versions SET prompt_key = 'other'",
            "DELETE FROM versions",
            "UPDATE audit SET actor = 'mallory'",
            "DELETE FROM audit",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(statement)
        raw.execute("UPDATE versions SET status = 'prod'")  # status is the one mutable column
        with pytest.raises(sqlite3.IntegrityError):  # a second prod, whatever the code path
            raw.execute(
                "INSERT INTO versions SELECT prompt_key, 2, sha256, created_at, body, 'prod' "
                "FROM versions"
            )
    finally:
        raw.close()


async def test_the_file_itself_keeps_the_rollout_rules(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path)
    for template in ("a", "b", "c"):
        await store.create_version(draft(template), "alice", 1.0)
    await store.promote(GREET, 1, "alice", "", 2.0)
    await store.start_rollout(
        GREET,
        "r-1",
        2,
        RolloutMode.CANARY,
        2500,
        StickyKey.parse("user"),
        "alice",
        "",
        3.0,
        AnalysisPolicy(steps=(500, 2500)),
    )
    await store.close()

    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (
            # The running candidate keeps its status (end the rollout first).
            "UPDATE versions SET status = 'deprecated' WHERE version = 2",
            "UPDATE versions SET status = 'draft' WHERE version = 2",
            # Only the percentage of a running rollout changes, and only within 0..100 %.
            "UPDATE rollouts SET candidate = 3",
            "UPDATE rollouts SET id = 'r-2'",
            "UPDATE rollouts SET sticky = 'none'",
            "UPDATE rollouts SET prompt_key = 'other'",
            "UPDATE rollouts SET basis_points = 10001",
            # The analysis policy is as fixed as the candidate.
            "UPDATE rollouts SET analysis = '{\"interval\": 5}'",
            "UPDATE rollouts SET analysis = NULL",
            # So is the segment, set or not.
            'UPDATE rollouts SET segment = \'{"tiers": ["pro"], "tenants": []}\'',
            "UPDATE rollouts SET segment = NULL",
            # One rollout per key, of a version that is a candidate.
            "INSERT INTO rollouts SELECT prompt_key, 'r-2', candidate, mode, basis_points, sticky, "
            "started_at, updated_at, actor, restore_status, analysis, segment FROM rollouts",
            "INSERT INTO rollouts SELECT 'other', 'r-2', 3, mode, basis_points, sticky, "
            "started_at, updated_at, actor, restore_status, analysis, segment FROM rollouts",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(statement)
        raw.execute("UPDATE rollouts SET basis_points = 5000, updated_at = 4.0")
    finally:
        raw.close()

    reopened = await EmbeddedStore.open(path)
    try:
        rollout = await reopened.get_rollout(GREET)
        assert rollout is not None
        assert (rollout.id, rollout.candidate, rollout.basis_points) == ("r-1", 2, 5000)
        assert rollout.analysis == AnalysisPolicy(steps=(500, 2500))
    finally:
        await reopened.close()


# -- noticing changes ------------------------------------------------------------------------


async def test_a_quiet_registry_is_watched_without_reading_it(tmp_path: Path) -> None:
    """Idle replicas look five times a second; reading the revision on the worker thread
    each time was most of an idle proxy's CPU. A look costs no read unless a commit landed,
    and one that did is still noticed at the next look."""
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path, poll_interval=0.02)
    writer = await EmbeddedStore.open(path)
    reads = 0
    real_revision = store.revision

    async def counted() -> int:
        nonlocal reads
        reads += 1
        return await real_revision()

    store.revision = counted  # type: ignore[method-assign]
    try:
        known = await real_revision()
        assert await store.wait_for_change(known, max_wait=0.5) == known  # ~25 looks
        assert reads == 1  # the first look has nothing to compare with

        waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
        await asyncio.sleep(0.1)
        assert reads == 1
        assert not waiter.done()
        await writer.create_version(draft("a"), "alice", 1.0)
        assert await asyncio.wait_for(waiter, timeout=2.0) == known + 1
        assert reads == 2
    finally:
        await writer.close()
        await store.close()


async def test_a_caller_behind_a_quiet_registry_is_told_at_once(tmp_path: Path) -> None:
    """The refresher may ask again with the revision it had before a failed load: nothing
    has moved since the last look, but the answer is still the newer revision."""
    store = await EmbeddedStore.open(tmp_path / "registry.db", poll_interval=0.02)
    try:
        await store.create_version(draft("a"), "alice", 1.0)
        current = await store.revision()
        assert await store.wait_for_change(current, max_wait=0.1) == current
        started = time.monotonic()
        assert await store.wait_for_change(current - 1, max_wait=5.0) == current
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()


async def test_a_file_replaced_under_a_quiet_watch_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await EmbeddedStore.open(path, poll_interval=0.02)
    other_path = tmp_path / "other.db"
    other = await EmbeddedStore.open(other_path)
    try:
        for text in ("a", "b", "c"):
            await other.create_version(draft(text), "bob", 1.0)
        await other.close()
        known = await store.revision()
        assert await store.wait_for_change(known, max_wait=0.1) == known
        waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
        await asyncio.sleep(0.1)
        os.replace(other_path, path)
        for suffix in ("-wal", "-shm"):  # a replaced volume brings no stale WAL along
            os.unlink(f"{path}{suffix}")
        assert await asyncio.wait_for(waiter, timeout=2.0) == 3
    finally:
        await store.close()


def test_the_watch_never_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    watch = ChangeWatch(path)
    assert watch.moved()
    assert watch.moved()
    assert not path.exists()
    sqlite3.connect(path).close()
    assert watch.moved()  # appeared
    assert not watch.moved()
    path.unlink()
    assert watch.moved()
    watch.close()


async def test_a_closed_store_is_not_watched(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "registry.db")
    known = await store.revision()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.wait_for_change(known, max_wait=1.0)
