"""The ``PromptStore`` contract, run against both stores (``store`` is parametrized).

Choices the contract leaves open, pinned here for both stores:
- a new version starts as ``draft``; its create audit entry's reason is the changelog;
- promoting the version that is already prod is ``InvalidTransition`` (nothing written);
- ``set_status`` never touches prod (to prod: ``promote``; away from prod: promote/rollback)
  and only moves forward: draft -> candidate -> deprecated;
- ``list_versions`` of an unknown slug is ``PromptNotFound``; ``audit`` of one is empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.prompt_key import PromptKey
from proxy.registry import lifecycle
from proxy.registry.models import AuditEntry, Status, VariableSpec
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    PromptStore,
    VersionNotFound,
)
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import GREET, REPO, T0, draft, prod_of, push, refusal, statuses

# -- creation and reads ---------------------------------------------------------------------


async def test_versions_are_numbered_from_one_per_slug(store: PromptStore) -> None:
    assert await push(store, "a", "b", "c") == [1, 2, 3]
    assert await push(store, "x", slug="other") == [1]
    first, created = await store.create_version(draft("d"), "bob", T0)
    assert (first.version, created, first.status) == (4, True, Status.DRAFT)


async def test_identical_push_returns_latest_and_writes_nothing(store: PromptStore) -> None:
    original, created = await store.create_version(draft(changelog="first"), "alice", T0)
    assert created
    revision = await store.revision()
    audit_before = await store.audit()

    # Author, changelog and time are not content: still the same version.
    again, created = await store.create_version(
        draft(changelog="again", author="bob"), "bob", T0 + 60
    )

    assert not created
    assert again == original
    assert await store.revision() == revision
    assert await store.audit() == audit_before
    assert [v.version for v in await store.list_versions(GREET)] == [1]


@pytest.mark.parametrize(
    "change",
    [
        {"template": "Hi {{ name }}"},
        {"variables": (VariableSpec("name", "string"),)},
        {"variables": (VariableSpec("name", "string", default="you", has_default=True),)},
        {"model": "gpt-4o-mini"},
        {"params": {"temperature": 0.2}},
    ],
    ids=["template", "variables", "variable-default", "model", "params"],
)
async def test_any_content_change_creates_a_new_version(
    store: PromptStore, change: dict[str, Any]
) -> None:
    await store.create_version(draft(), "alice", T0)
    changed, created = await store.create_version(
        dataclasses.replace(draft(), **change), "alice", T0 + 1
    )
    assert created
    assert changed.version == 2


async def test_pushing_an_older_content_again_is_a_new_version(store: PromptStore) -> None:
    # Only the latest version is compared: reverting content is a new, auditable version.
    await push(store, "a", "b")
    reverted, created = await store.create_version(draft("a"), "alice", T0 + 5)
    assert created
    assert reverted.version == 3


async def test_get_and_list_return_what_was_pushed(store: PromptStore) -> None:
    pushed = draft(
        "Dear {{ name }}, {{ body }}",
        variables=(
            VariableSpec("name", "string"),
            VariableSpec("body", None, default="", has_default=True),
        ),
        model="gpt-4o",
        params={"temperature": 0.3, "stop": ["\n\n"], "nested": {"k": [1, 2.5, None]}},
        author="alice",
        changelog="first cut ✓",
    )
    created, _ = await store.create_version(pushed, "ci-bot", T0)
    await push(store, "second", slug="greet")
    await push(store, "other", slug="alpha")

    got = await store.get_version(GREET, 1)
    assert got == created
    assert (got.template, got.variables, got.model, got.params) == (
        pushed.template,
        pushed.variables,
        pushed.model,
        pushed.params,
    )
    assert (got.author, got.changelog, got.created_at) == ("alice", "first cut ✓", T0)
    assert got.sha256 == pushed.content_sha256()
    assert [v.version for v in await store.list_versions(GREET)] == [1, 2]
    assert list(await store.list_keys()) == [PromptKey("alpha"), GREET]


async def test_unknown_prompt_and_version_are_reported(store: PromptStore) -> None:
    assert list(await store.list_keys()) == []
    await push(store, "a")
    with pytest.raises(PromptNotFound):
        await store.get_version(PromptKey("missing"), 1)
    with pytest.raises(PromptNotFound):
        await store.list_versions(PromptKey("missing"))
    with pytest.raises(VersionNotFound):
        await store.get_version(GREET, 2)
    with pytest.raises(PromptNotFound):
        await store.promote(PromptKey("missing"), 1, "alice", "", T0)
    with pytest.raises(VersionNotFound):
        await store.promote(GREET, 7, "alice", "", T0)
    with pytest.raises(PromptNotFound):
        await store.rollback(PromptKey("missing"), "alice", "", T0)
    with pytest.raises(VersionNotFound):
        await store.set_status(GREET, 7, Status.CANDIDATE, "alice", "", T0)
    assert list(await store.audit(key=PromptKey("missing"))) == []


# -- promote / rollback ----------------------------------------------------------------------


async def test_promote_deprecates_the_former_prod_and_audits_it(store: PromptStore) -> None:
    await push(store, "a", "b")
    first = await store.promote(GREET, 1, "alice", "launch", T0 + 10)
    assert (first.action, first.version, first.previous_prod) == ("promote", 1, None)
    assert (first.from_status, first.to_status) == (Status.DRAFT, Status.PROD)

    second = await store.promote(GREET, 2, "bob", "better tone", T0 + 20)

    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.PROD}
    assert await prod_of(store) == 2
    assert (second.action, second.version, second.previous_prod) == ("promote", 2, 1)
    assert (second.actor, second.reason, second.at) == ("bob", "better tone", T0 + 20)
    assert (await store.audit(limit=1))[0] == second


async def test_promoting_the_current_prod_is_rejected_without_writing(store: PromptStore) -> None:
    await push(store, "a")
    await store.promote(GREET, 1, "alice", "", T0)
    revision = await store.revision()
    with pytest.raises(InvalidTransition, match="already prod"):
        await store.promote(GREET, 1, "alice", "", T0 + 1)
    assert await store.revision() == revision
    assert len(await store.audit()) == 2  # create + promote


async def test_a_deprecated_version_can_be_promoted_again(store: PromptStore) -> None:
    await push(store, "a", "b")
    await store.promote(GREET, 1, "alice", "", T0)
    await store.promote(GREET, 2, "alice", "", T0 + 1)
    entry = await store.promote(GREET, 1, "alice", "back to v1", T0 + 2)
    assert (entry.from_status, entry.previous_prod) == (Status.DEPRECATED, 2)
    assert await statuses(store) == {1: Status.PROD, 2: Status.DEPRECATED}


async def test_rollback_walks_back_through_former_prods(store: PromptStore) -> None:
    await push(store, "a", "b", "c")
    for n in (1, 2, 3):
        await store.promote(GREET, n, "alice", f"ship v{n}", T0 + n)

    back = await store.rollback(GREET, "oncall", "v3 is broken", T0 + 10)

    assert (back.action, back.version, back.previous_prod) == ("rollback", 2, 3)
    assert (back.from_status, back.to_status) == (Status.DEPRECATED, Status.PROD)
    assert (back.actor, back.reason, back.at) == ("oncall", "v3 is broken", T0 + 10)
    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.PROD, 3: Status.DEPRECATED}

    again = await store.rollback(GREET, "oncall", "v2 too", T0 + 11)
    assert (again.version, again.previous_prod) == (1, 2)
    assert await statuses(store) == {1: Status.PROD, 2: Status.DEPRECATED, 3: Status.DEPRECATED}

    with pytest.raises(InvalidTransition):
        await store.rollback(GREET, "oncall", "", T0 + 12)
    assert await prod_of(store) == 1


async def test_rollback_after_repromotion_goes_to_the_prod_before_it(store: PromptStore) -> None:
    await push(store, "a", "b", "c")
    for n in (1, 2, 3):
        await store.promote(GREET, n, "alice", "", T0 + n)
    await store.rollback(GREET, "oncall", "", T0 + 4)  # -> 2
    await store.promote(GREET, 3, "alice", "fixed config, v3 again", T0 + 5)
    await store.promote(GREET, 1, "alice", "", T0 + 6)  # history now 2, 3, 1

    assert (await store.rollback(GREET, "oncall", "", T0 + 7)).version == 3
    assert (await store.rollback(GREET, "oncall", "", T0 + 8)).version == 2
    with pytest.raises(InvalidTransition):
        await store.rollback(GREET, "oncall", "", T0 + 9)


async def test_rollback_needs_a_former_prod(store: PromptStore) -> None:
    await push(store, "a", "b")
    with pytest.raises(InvalidTransition):
        await store.rollback(GREET, "oncall", "", T0)  # nothing is prod
    await store.promote(GREET, 2, "alice", "", T0)
    revision = await store.revision()
    with pytest.raises(InvalidTransition, match="no former prod"):
        await store.rollback(GREET, "oncall", "", T0 + 1)
    assert await store.revision() == revision
    assert await prod_of(store) == 2


async def test_prod_at_any_instant_can_be_answered_from_the_audit_log(
    store: PromptStore,
) -> None:
    await push(store, "a", "b", "c")
    await store.promote(GREET, 1, "a", "", 1000.0)
    await store.promote(GREET, 3, "a", "", 2000.0)
    await store.rollback(GREET, "a", "", 3000.0)
    await store.set_status(GREET, 2, Status.CANDIDATE, "a", "", 3500.0)

    def prod_at(entries: list[AuditEntry], instant: float) -> int | None:
        prod = None
        for entry in sorted(entries, key=lambda e: e.seq):
            if entry.at <= instant and entry.action in ("promote", "rollback"):
                assert entry.previous_prod == prod
                prod = entry.version
        return prod

    entries = list(await store.audit(key=GREET))
    assert [prod_at(entries, t) for t in (999.0, 1500.0, 2500.0, 4000.0)] == [None, 1, 3, 1]


# -- set_status ------------------------------------------------------------------------------


async def test_set_status_moves_forward_and_is_audited(store: PromptStore) -> None:
    await push(store, "a", "b")
    entry = await store.set_status(GREET, 1, Status.CANDIDATE, "qa", "evals pass", T0 + 1)
    assert (entry.action, entry.from_status, entry.to_status) == (
        "set_status",
        Status.DRAFT,
        Status.CANDIDATE,
    )
    assert (entry.actor, entry.reason, entry.at, entry.previous_prod) == (
        "qa",
        "evals pass",
        T0 + 1,
        None,
    )
    await store.set_status(GREET, 1, Status.DEPRECATED, "qa", "", T0 + 2)
    await store.set_status(GREET, 2, Status.DEPRECATED, "qa", "never mind", T0 + 3)
    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.DEPRECATED}
    assert (await store.audit(limit=1))[0].to_status is Status.DEPRECATED


@pytest.mark.parametrize(
    ("setup", "target"),
    [
        ([], Status.DRAFT),  # draft -> draft
        ([Status.CANDIDATE], Status.DRAFT),  # nothing goes back to draft
        ([Status.CANDIDATE], Status.CANDIDATE),
        ([Status.DEPRECATED], Status.CANDIDATE),  # only promote/rollback revive
        ([], Status.PROD),  # prod only through promote
    ],
    ids=["draft-draft", "candidate-draft", "candidate-candidate", "deprecated-up", "to-prod"],
)
async def test_forbidden_set_status_moves(
    store: PromptStore, setup: list[Status], target: Status
) -> None:
    await push(store, "a")
    for status in setup:
        await store.set_status(GREET, 1, status, "qa", "", T0)
    revision = await store.revision()
    with pytest.raises(InvalidTransition):
        await store.set_status(GREET, 1, target, "qa", "", T0 + 1)
    assert await store.revision() == revision
    assert (await store.get_version(GREET, 1)).status is (setup[-1] if setup else Status.DRAFT)


async def test_set_status_cannot_move_the_current_prod(store: PromptStore) -> None:
    await push(store, "a")
    await store.promote(GREET, 1, "alice", "", T0)
    with pytest.raises(InvalidTransition, match=r"use promote .*or rollback"):
        await store.set_status(GREET, 1, Status.DEPRECATED, "alice", "", T0 + 1)
    assert await prod_of(store) == 1


# -- audit, revision, snapshot ---------------------------------------------------------------


async def test_audit_is_newest_first_filterable_and_pageable(store: PromptStore) -> None:
    await push(store, "a", "b", slug="greet")
    await push(store, "x", slug="other")
    await store.promote(GREET, 2, "alice", "ship", T0 + 10)

    everything = list(await store.audit())
    assert [(e.action, e.key.text, e.version) for e in everything] == [
        ("promote", "greet", 2),
        ("create", "other", 1),
        ("create", "greet", 2),
        ("create", "greet", 1),
    ]
    seqs = [e.seq for e in everything]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 4
    assert [e.version for e in await store.audit(key=GREET)] == [2, 2, 1]
    assert [e.key for e in await store.audit(key=PromptKey("other"))] == [PromptKey("other")]

    page1 = list(await store.audit(limit=2))
    page2 = list(await store.audit(limit=2, before_seq=page1[-1].seq))
    assert page1 + page2 == everything
    assert list(await store.audit(limit=2, before_seq=page2[-1].seq)) == []
    greet_page = list(await store.audit(key=GREET, limit=1, before_seq=seqs[0]))
    assert [(e.action, e.version) for e in greet_page] == [("create", 2)]


async def test_revision_moves_on_every_write_and_only_then(store: PromptStore) -> None:
    seen = [await store.revision()]

    async def wrote() -> None:
        now = await store.revision()
        assert now > seen[-1]
        seen.append(now)

    await push(store, "a", "b", "c")
    await wrote()
    await store.promote(GREET, 1, "alice", "", T0)
    await wrote()
    await store.promote(GREET, 2, "alice", "", T0)
    await wrote()
    await store.rollback(GREET, "alice", "", T0)
    await wrote()
    await store.set_status(GREET, 3, Status.CANDIDATE, "alice", "", T0)
    with pytest.raises(InvalidTransition):
        await store.set_status(GREET, 3, Status.DRAFT, "alice", "", T0)
    await wrote()
    await store.get_version(GREET, 1)
    await store.snapshot()
    assert await store.revision() == seen[-1]


async def test_snapshot_holds_every_version_and_the_prod_map(store: PromptStore) -> None:
    assert (await store.snapshot()).empty
    await push(store, "a", "b", slug="greet")
    await push(store, "x", slug="other")
    await store.promote(GREET, 2, "alice", "", T0)

    snap = await store.snapshot()

    assert not snap.empty
    assert snap.revision == await store.revision()
    other = PromptKey("other")
    assert snap.prod == {GREET: 2}  # "other" has no prod: absent
    assert {key: sorted(vs) for key, vs in snap.versions.items()} == {GREET: [1, 2], other: [1]}
    assert snap.versions[GREET][2] == await store.get_version(GREET, 2)
    assert snap.versions[GREET][2].status is Status.PROD
    assert snap.versions[other][1].template == "x"


# -- change notification ---------------------------------------------------------------------


async def test_wait_for_change_wakes_on_a_write_by_another_instance(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    other = await store_factory.new()
    known = await store.revision()
    waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
    await asyncio.sleep(0.3)  # let the waiter settle into its wait
    assert not waiter.done()

    started = time.monotonic()
    await push(other, "from another replica")
    revision = await asyncio.wait_for(waiter, timeout=3.0)
    elapsed = time.monotonic() - started

    assert revision == await other.revision() > known
    assert elapsed < 1.0, f"change noticed after {elapsed:.2f}s"


async def test_wait_for_change_returns_at_once_when_already_behind(store: PromptStore) -> None:
    known = await store.revision()
    await push(store, "a")
    started = time.monotonic()
    assert await store.wait_for_change(known, max_wait=5.0) == known + 1
    assert time.monotonic() - started < 0.5


async def test_wait_for_change_gives_up_after_max_wait(store: PromptStore) -> None:
    await push(store, "a")
    known = await store.revision()
    started = time.monotonic()
    assert await store.wait_for_change(known, max_wait=0.4) == known
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 1.2, elapsed


# -- atomicity under concurrency -------------------------------------------------------------


async def test_concurrent_pushes_get_distinct_consecutive_numbers(store: PromptStore) -> None:
    results = await asyncio.gather(
        *(store.create_version(draft(f"variant {i}"), "load", T0 + i) for i in range(50))
    )
    assert sorted(v.version for v, created in results if created) == list(range(1, 51))
    assert [v.version for v in await store.list_versions(GREET)] == list(range(1, 51))
    creates = [e for e in await store.audit(limit=500) if e.action == "create"]
    assert sorted(e.version for e in creates if e.version is not None) == list(range(1, 51))
    assert await store.revision() == 50


async def test_snapshots_taken_during_writes_are_consistent(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    # A replica must never hold a snapshot that claims revision R but lacks a change <= R.
    reader = await store_factory.new()
    writing = asyncio.gather(
        *(store.create_version(draft(f"v{i}", slug=f"s{i % 3}"), "w", T0) for i in range(40))
    )
    snapshots = []
    while not writing.done():
        snapshots.append(await reader.snapshot())
        await asyncio.sleep(0)
    await writing
    snapshots.append(await reader.snapshot())
    for snap in snapshots:  # only creates happened: one revision per version
        assert snap.revision == sum(len(vs) for vs in snap.versions.values())
    assert snapshots[-1].revision == 40


_PUSHER = """
import asyncio, sys, time
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.models import VersionDraft

kind, location, prefix, tag, ready, go = sys.argv[1:7]


async def main() -> None:
    if kind == "embedded":
        from proxy.registry.embedded_store import EmbeddedStore
        store = await EmbeddedStore.open(Path(location))
    elif kind == "postgres":
        from tests.registry.pg_stores import open_store
        store = await open_store(location, prefix)
    else:
        from proxy.registry.redis_store import RedisStore
        store = RedisStore.from_url(location, prefix=prefix)
    await store.revision()  # connected and ready
    Path(ready).touch()
    deadline = time.monotonic() + 20
    while not Path(go).exists():
        assert time.monotonic() < deadline, "no go signal"
        time.sleep(0.0005)
    for i in range(30):
        draft = VersionDraft(key=PromptKey("shared"), template=f"{tag}-{i}")
        _, created = await store.create_version(draft, tag, time.time())
        assert created
        # A breather so the two processes' pushes interleave instead of one finishing first.
        await asyncio.sleep(0.002)
    await store.close()


asyncio.run(main())
"""


async def test_pushes_from_two_processes_lose_nothing(
    store: PromptStore, store_factory: StoreFactory, tmp_path: Path
) -> None:
    await store.revision()  # the file/schema exists before the race starts
    go = tmp_path / "go"
    procs = []
    for tag in ("p1", "p2"):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PUSHER,
                store_factory.kind,
                store_factory.location,
                store_factory.prefix,
                tag,
                str(tmp_path / f"{tag}.ready"),
                str(go),
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )

    def all_ready() -> bool:
        return all((tmp_path / f"{t}.ready").exists() for t in ("p1", "p2"))

    try:
        async with asyncio.timeout(15):
            while not all_ready():
                assert all(p.returncode is None for p in procs), "a pusher died early"
                await asyncio.sleep(0.02)
            go.touch()
            outputs = [await p.communicate() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs

    versions = await store.list_versions(PromptKey("shared"))
    assert [v.version for v in versions] == list(range(1, 61))
    assert {v.template for v in versions} == {f"{t}-{i}" for t in ("p1", "p2") for i in range(30)}
    writers = [v.template.split("-")[0] for v in versions]
    switches = sum(a != b for a, b in itertools.pairwise(writers))
    assert switches >= 2, f"the pushes did not overlap, nothing was tested: {writers}"
    creates = await store.audit(key=PromptKey("shared"), limit=100)
    assert sorted(e.version for e in creates if e.version is not None) == list(range(1, 61))
    assert await store.revision() == 60


async def test_refusals_say_what_the_lifecycle_rules_say(store: PromptStore) -> None:
    # The Redis store generates its Lua refusals from the lifecycle checks; both stores must
    # answer with exactly the checks' texts.
    await push(store, "a", "b", "c", "d")
    with pytest.raises(InvalidTransition) as no_prod:
        await store.rollback(GREET, "x", "", T0)
    assert str(no_prod.value) == refusal(lifecycle.rollback_pair, GREET, [])
    await store.promote(GREET, 1, "x", "", T0)
    with pytest.raises(InvalidTransition) as no_former:
        await store.rollback(GREET, "x", "", T0)
    assert str(no_former.value) == refusal(lifecycle.rollback_pair, GREET, [1])
    with pytest.raises(InvalidTransition) as already:
        await store.promote(GREET, 1, "x", "", T0)
    assert str(already.value) == refusal(lifecycle.check_promote, GREET, 1, Status.PROD)

    await store.set_status(GREET, 3, Status.CANDIDATE, "x", "", T0)
    await store.set_status(GREET, 4, Status.DEPRECATED, "x", "", T0)
    current = {1: Status.PROD, 2: Status.DRAFT, 3: Status.CANDIDATE, 4: Status.DEPRECATED}
    for version, status in current.items():
        for target in Status:
            if target in lifecycle.SET_STATUS_MOVES[status] and status is not Status.PROD:
                continue  # allowed: not a refusal
            with pytest.raises(InvalidTransition) as info:
                await store.set_status(GREET, version, target, "x", "", T0)
            assert str(info.value) == refusal(
                lifecycle.check_set_status, GREET, version, status, target
            )
    assert await statuses(store) == current
