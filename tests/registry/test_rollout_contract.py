"""The rollout part of the ``PromptStore`` contract, run against both stores.

Refusals must carry the exact text of the ``lifecycle`` check (the Redis store runs the
rules in Lua), so each refusal is compared with what the Python check itself says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy.prompt_key import PromptKey
from proxy.registry import lifecycle
from proxy.registry.models import (
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    StickyKind,
)
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    PromptStore,
    VersionNotFound,
)
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import (
    BY_HEADER,
    BY_USER,
    GREET,
    OTHER,
    T0,
    everything,
    prod_of,
    push,
    refusal,
    start,
    statuses,
)


async def with_prod(store: PromptStore, *templates: str) -> None:
    """``greet`` with versions ``templates`` (at least 2) and v1 prod."""
    await push(store, *templates)
    await store.promote(GREET, 1, "alice", "launch", T0 + 10)


# -- start ----------------------------------------------------------------------------------


async def test_start_makes_a_draft_the_candidate_and_audits_it(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    revision = await store.revision()

    rollout, entry = await start(
        store, mode=RolloutMode.SHADOW, basis_points=1250, sticky=BY_HEADER, at=T0 + 100
    )

    assert rollout == Rollout(
        key=GREET,
        id="r-1",
        candidate=2,
        mode=RolloutMode.SHADOW,
        basis_points=1250,
        sticky=StickyKey(StickyKind.HEADER, "x-cohort"),
        started_at=T0 + 100,
        updated_at=T0 + 100,
        actor="alice",
        restore_status=Status.DRAFT,
    )
    assert await store.get_rollout(GREET) == rollout
    assert await statuses(store) == {1: Status.PROD, 2: Status.CANDIDATE}
    assert await prod_of(store) == 1  # a rollout does not touch prod
    assert (entry.action, entry.key, entry.version) == ("rollout_start", GREET, 2)
    assert (entry.from_status, entry.to_status) == (Status.DRAFT, Status.CANDIDATE)
    assert (entry.actor, entry.reason, entry.at, entry.previous_prod) == (
        "alice",
        "try it",
        T0 + 100,
        None,
    )
    assert entry.detail == {
        "rollout_id": "r-1",
        "mode": "shadow",
        "percent": 12.5,
        "sticky": "header:x-cohort",
    }
    assert entry.detail == rollout.audit_detail()
    assert (await store.audit(limit=1))[0] == entry  # read back as written
    assert await store.revision() == revision + 1


@pytest.mark.parametrize(
    "rollout_id",
    ["01HZX3K9Q7", 'a/b "quoted" \\ é ✓', "x" * 200],
    ids=["plain", "json-hostile", "long"],
)
async def test_the_rollout_id_is_stored_verbatim(store: PromptStore, rollout_id: str) -> None:
    await with_prod(store, "a", "b")
    rollout, entry = await start(store, rollout_id=rollout_id)
    assert rollout.id == rollout_id
    assert (await store.get_rollout(GREET)) == rollout
    assert (await store.snapshot()).rollouts[GREET].id == rollout_id
    assert (await store.audit(limit=1))[0].detail == {**rollout.audit_detail()}
    assert entry.detail is not None
    assert entry.detail["rollout_id"] == rollout_id


@pytest.mark.parametrize("basis_points", [0, 1, 10, 1250, 3333, 9999, 10_000])
async def test_percentages_read_back_exactly(store: PromptStore, basis_points: int) -> None:
    await with_prod(store, "a", "b")
    rollout, entry = await start(store, basis_points=basis_points)
    assert (await store.get_rollout(GREET)) == rollout
    assert rollout.basis_points == basis_points
    for detail in (entry.detail, (await store.audit(limit=1))[0].detail):
        assert detail is not None
        # A float, as Rollout.percent is, so an API shows 25.0 whichever store answered.
        assert type(detail["percent"]) is float
        assert detail["percent"] == basis_points / 100

    _, update = await store.update_rollout(GREET, "r-1", 5000, "bob", "", T0 + 200)
    assert update.detail is not None
    assert type(update.detail["from_percent"]) is float
    assert update.detail["from_percent"] == basis_points / 100


async def test_a_candidate_version_stays_candidate_after_abort(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    await store.set_status(GREET, 2, Status.CANDIDATE, "qa", "evals pass", T0 + 20)

    rollout, entry = await start(store)
    assert rollout.restore_status is Status.CANDIDATE
    assert (entry.from_status, entry.to_status) == (Status.CANDIDATE, Status.CANDIDATE)

    aborted = await store.abort_rollout(GREET, "bob", "enough", T0 + 200)
    assert (aborted.from_status, aborted.to_status) == (Status.CANDIDATE, Status.CANDIDATE)
    assert await statuses(store) == {1: Status.PROD, 2: Status.CANDIDATE}


async def test_start_refusals_name_the_problem(store: PromptStore) -> None:
    await push(store, "a", "b", "c", "d")
    await store.promote(GREET, 1, "alice", "", T0 + 1)
    await store.promote(GREET, 2, "alice", "", T0 + 2)  # v1 deprecated

    with pytest.raises(InvalidTransition) as prod:
        await start(store, candidate=2)
    assert str(prod.value) == refusal(lifecycle.check_rollout_candidate, GREET, 2, Status.PROD)
    with pytest.raises(InvalidTransition) as deprecated:
        await start(store, candidate=1)
    assert str(deprecated.value) == refusal(
        lifecycle.check_rollout_candidate, "greet", 1, Status.DEPRECATED
    )
    with pytest.raises(PromptNotFound):
        await start(store, slug="missing")
    with pytest.raises(VersionNotFound):
        await start(store, candidate=9)

    await start(store, candidate=3, rollout_id="first")
    for candidate in (3, 4):  # the same candidate again, or another: one rollout per slug
        with pytest.raises(InvalidTransition) as second:
            await start(store, candidate=candidate, rollout_id="second")
        assert str(second.value) == refusal(lifecycle.check_no_rollout, GREET, 3)
    running = await store.get_rollout(GREET)
    assert running is not None
    assert running.id == "first"
    assert await statuses(store) == {
        1: Status.DEPRECATED,
        2: Status.PROD,
        3: Status.CANDIDATE,
        4: Status.DRAFT,
    }


@pytest.mark.parametrize(
    ("basis_points", "rollout_id", "sticky"),
    [
        (-1, "r", BY_USER),
        (10_001, "r", BY_USER),
        (True, "r", BY_USER),
        (2500, "", BY_USER),
        (2500, "r", StickyKey(StickyKind.HEADER, None)),
        (2500, "r", StickyKey(StickyKind.HEADER, "authorization")),
    ],
    ids=["negative", "over-100%", "bool", "empty-id", "header-without-name", "secret-header"],
)
async def test_the_store_never_persists_a_garbage_rollout(
    store: PromptStore, basis_points: int, rollout_id: str, sticky: StickyKey
) -> None:
    await with_prod(store, "a", "b")
    before = await everything(store)
    with pytest.raises(ValueError, match=r"."):
        await start(store, basis_points=basis_points, rollout_id=rollout_id, sticky=sticky)
    assert await everything(store) == before

    await start(store, rollout_id="good")
    before = await everything(store)
    with pytest.raises(ValueError, match=r"basis_points"):
        await store.update_rollout(GREET, "good", 10_001, "bob", "", T0 + 200)
    assert await everything(store) == before


# -- update ---------------------------------------------------------------------------------


async def test_update_changes_only_the_percentage(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    started, _ = await start(store, basis_points=500, sticky=BY_HEADER, actor="alice")
    revision = await store.revision()

    rollout, entry = await store.update_rollout(GREET, "r-1", 5000, "bob", "ramp", T0 + 300)

    assert rollout == Rollout(
        key=GREET,
        id="r-1",
        candidate=2,
        mode=RolloutMode.CANARY,
        basis_points=5000,
        sticky=started.sticky,
        started_at=started.started_at,
        updated_at=T0 + 300,
        actor="alice",  # who started it
        restore_status=Status.DRAFT,
    )
    assert await store.get_rollout(GREET) == rollout
    assert (entry.action, entry.version, entry.actor, entry.reason, entry.at) == (
        "rollout_update",
        2,
        "bob",
        "ramp",
        T0 + 300,
    )
    assert (entry.from_status, entry.to_status, entry.previous_prod) == (None, None, None)
    assert entry.detail == {**rollout.audit_detail(), "from_percent": 5.0}
    assert entry.detail["percent"] == 50.0
    assert (await store.audit(limit=1))[0] == entry
    assert await store.revision() == revision + 1
    assert await statuses(store) == {1: Status.PROD, 2: Status.CANDIDATE}


async def test_update_needs_the_running_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b", "c")
    with pytest.raises(InvalidTransition) as none:
        await store.update_rollout(GREET, "r-1", 100, "bob", "", T0 + 200)
    assert str(none.value) == refusal(lifecycle.check_rollout_running, GREET, None, "r-1")

    await start(store, rollout_id="r-1")
    with pytest.raises(InvalidTransition) as other:
        await store.update_rollout(GREET, "r-0", 100, "bob", "", T0 + 200)
    assert str(other.value) == refusal(lifecycle.check_rollout_running, GREET, "r-1", "r-0")

    # A client that read r-1 must not ramp the rollout that replaced it.
    await store.abort_rollout(GREET, "bob", "", T0 + 300)
    await start(store, candidate=3, rollout_id="r-2", basis_points=100)
    with pytest.raises(InvalidTransition, match="no running rollout with id r-1"):
        await store.update_rollout(GREET, "r-1", 9000, "bob", "", T0 + 400)
    running = await store.get_rollout(GREET)
    assert running is not None
    assert (running.id, running.basis_points) == ("r-2", 100)
    with pytest.raises(PromptNotFound):
        await store.update_rollout(PromptKey("missing"), "r-1", 100, "bob", "", T0)


# -- abort ----------------------------------------------------------------------------------


async def test_abort_restores_a_draft_and_frees_the_slug(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    rollout, _ = await start(store, basis_points=700)
    revision = await store.revision()

    entry = await store.abort_rollout(GREET, "bob", "bad evals", T0 + 500)

    assert await store.get_rollout(GREET) is None
    assert "greet" not in (await store.snapshot()).rollouts
    assert await statuses(store) == {1: Status.PROD, 2: Status.DRAFT}
    assert (entry.action, entry.version, entry.actor, entry.reason, entry.at) == (
        "rollout_abort",
        2,
        "bob",
        "bad evals",
        T0 + 500,
    )
    assert (entry.from_status, entry.to_status) == (Status.CANDIDATE, Status.DRAFT)
    assert entry.detail == rollout.audit_detail()
    assert (await store.audit(limit=1))[0] == entry
    assert await store.revision() == revision + 1

    # The slug is free again; a new rollout (new id) of the same version can start.
    again, _ = await start(store, rollout_id="r-2", at=T0 + 600)
    assert again.restore_status is Status.DRAFT
    assert await store.get_rollout(GREET) == again


async def test_abort_and_promote_need_a_running_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    expected = refusal(lifecycle.check_rollout_running, GREET, None)
    for end in (store.abort_rollout, store.promote_rollout):
        with pytest.raises(InvalidTransition) as info:
            await end(GREET, "bob", "", T0 + 200)
        assert str(info.value) == expected
        with pytest.raises(PromptNotFound):
            await end(PromptKey("missing"), "bob", "", T0 + 200)
    assert await store.get_rollout(PromptKey("missing")) is None
    assert await store.get_rollout(GREET) is None


# -- promote ----------------------------------------------------------------------------------


async def test_promote_rollout_is_a_promote_that_ends_the_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    rollout, _ = await start(store)
    await store.update_rollout(GREET, "r-1", 10_000, "bob", "all in", T0 + 200)
    revision = await store.revision()

    entry = await store.promote_rollout(GREET, "carol", "ship it", T0 + 300)

    assert await store.get_rollout(GREET) is None
    snap = await store.snapshot()
    assert (snap.prod, snap.rollouts) == ({GREET: 2}, {})
    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.PROD}
    assert (entry.action, entry.version, entry.previous_prod) == ("promote", 2, 1)
    assert (entry.from_status, entry.to_status) == (Status.CANDIDATE, Status.PROD)
    assert (entry.actor, entry.reason, entry.at) == ("carol", "ship it", T0 + 300)
    assert entry.detail == {
        **rollout.audit_detail(),
        "percent": 100.0,  # the percentage it ended at
        lifecycle.ROLLOUT_PROMOTED_DETAIL: True,
    }
    assert (await store.audit(limit=1))[0] == entry
    assert await store.revision() == revision + 1  # one step, one audit entry

    # The prod history saw a promote: rollback returns to the former prod, then stops.
    back = await store.rollback(GREET, "oncall", "v2 is broken", T0 + 400)
    assert (back.version, back.previous_prod) == (1, 2)
    assert await statuses(store) == {1: Status.PROD, 2: Status.DEPRECATED}
    with pytest.raises(InvalidTransition, match="no former prod"):
        await store.rollback(GREET, "oncall", "", T0 + 500)


async def test_promote_rollout_without_a_former_prod(store: PromptStore) -> None:
    await push(store, "a", "b")
    await start(store, candidate=1)
    entry = await store.promote_rollout(GREET, "carol", "", T0 + 300)
    assert (entry.version, entry.previous_prod) == (1, None)
    assert await statuses(store) == {1: Status.PROD, 2: Status.DRAFT}


async def test_promoting_the_candidate_ends_its_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    rollout, _ = await start(store)

    entry = await store.promote(GREET, 2, "carol", "ship it", T0 + 300)

    assert await store.get_rollout(GREET) is None
    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.PROD}
    assert (entry.action, entry.version, entry.previous_prod) == ("promote", 2, 1)
    assert entry.detail == {**rollout.audit_detail(), lifecycle.ROLLOUT_PROMOTED_DETAIL: True}
    assert (await store.audit(limit=1))[0] == entry
    assert (await store.rollback(GREET, "oncall", "", T0 + 400)).version == 1


async def test_promote_of_another_version_waits_for_the_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b", "c")
    await start(store, candidate=2)
    with pytest.raises(InvalidTransition) as info:
        await store.promote(GREET, 3, "carol", "", T0 + 300)
    assert str(info.value) == refusal(lifecycle.check_promote_during_rollout, GREET, 3, 2)
    with pytest.raises(InvalidTransition) as already:  # the current prod: nothing to do
        await store.promote(GREET, 1, "carol", "", T0 + 300)
    assert str(already.value) == refusal(lifecycle.check_promote, GREET, 1, Status.PROD)

    await store.abort_rollout(GREET, "carol", "", T0 + 400)
    entry = await store.promote(GREET, 3, "carol", "", T0 + 500)
    assert entry.detail is None  # an ordinary promote
    assert await statuses(store) == {1: Status.DEPRECATED, 2: Status.DRAFT, 3: Status.PROD}


# -- set_status and rollback during a rollout -------------------------------------------------


async def test_set_status_leaves_the_running_candidate_alone(store: PromptStore) -> None:
    await with_prod(store, "a", "b", "c")
    await start(store, candidate=2)
    with pytest.raises(InvalidTransition) as info:
        await store.set_status(GREET, 2, Status.DEPRECATED, "qa", "", T0 + 200)
    assert str(info.value) == refusal(lifecycle.check_set_status_during_rollout, GREET, 2, 2)
    # Other versions still move.
    await store.set_status(GREET, 3, Status.DEPRECATED, "qa", "", T0 + 300)
    assert await statuses(store) == {1: Status.PROD, 2: Status.CANDIDATE, 3: Status.DEPRECATED}


async def test_rollback_works_during_a_rollout_and_keeps_it(store: PromptStore) -> None:
    await push(store, "a", "b", "c")
    await store.promote(GREET, 1, "alice", "", T0 + 1)
    await store.promote(GREET, 2, "alice", "", T0 + 2)
    rollout, _ = await start(store, candidate=3)

    back = await store.rollback(GREET, "oncall", "v2 is broken", T0 + 300)

    assert (back.version, back.previous_prod, back.detail) == (1, 2, None)
    assert await store.get_rollout(GREET) == rollout
    snap = await store.snapshot()
    assert (snap.prod, snap.rollouts) == ({GREET: 1}, {GREET: rollout})
    assert await statuses(store) == {1: Status.PROD, 2: Status.DEPRECATED, 3: Status.CANDIDATE}

    # Promoting the rollout afterwards replaces the restored prod.
    entry = await store.promote_rollout(GREET, "carol", "", T0 + 400)
    assert (entry.version, entry.previous_prod) == (3, 1)
    assert (await store.rollback(GREET, "oncall", "", T0 + 500)).version == 1


# -- audit, revision, snapshot ---------------------------------------------------------------


async def test_other_changes_have_no_detail(store: PromptStore) -> None:
    await push(store, "a", "b", "c")
    await store.promote(GREET, 1, "alice", "", T0 + 1)
    await store.promote(GREET, 2, "alice", "", T0 + 2)
    await store.rollback(GREET, "alice", "", T0 + 3)
    await store.set_status(GREET, 3, Status.CANDIDATE, "alice", "", T0 + 4)
    entries = list(await store.audit())
    assert [e.action for e in entries] == [
        "set_status",
        "rollback",
        "promote",
        "promote",
        "create",
        "create",
        "create",
    ]
    assert [e.detail for e in entries] == [None] * 7


async def test_each_rollout_write_is_one_revision_and_one_audit_entry(
    store: PromptStore,
) -> None:
    await with_prod(store, "a", "b", "c")
    await push(store, "x", "y", slug="other")
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: start(store, candidate=2),
        lambda: start(store, slug="other", candidate=2, rollout_id="o-1", basis_points=9),
        lambda: store.update_rollout(GREET, "r-1", 5000, "bob", "", T0 + 200),
        lambda: store.abort_rollout(GREET, "bob", "", T0 + 300),
        lambda: start(store, candidate=3, rollout_id="r-2"),
        lambda: store.promote_rollout(GREET, "bob", "", T0 + 400),
        lambda: store.promote(PromptKey("other"), 2, "bob", "", T0 + 500),
    ]
    for write in writes:
        revision, entries = await store.revision(), len(await store.audit(limit=1000))
        await write()
        assert await store.revision() == revision + 1
        assert len(await store.audit(limit=1000)) == entries + 1
    snap = await store.snapshot()
    assert (snap.prod, snap.rollouts) == ({GREET: 3, OTHER: 2}, {})


async def test_the_snapshot_carries_every_running_rollout(store: PromptStore) -> None:
    assert (await store.snapshot()).rollouts == {}
    await with_prod(store, "a", "b")
    await push(store, "x", "y", slug="other")
    await push(store, "z", slug="quiet")
    greet, _ = await start(store)
    other, _ = await start(store, slug="other", candidate=1, mode=RolloutMode.SHADOW)

    snap = await store.snapshot()

    assert snap.rollouts == {GREET: greet, OTHER: other}  # "quiet" has none: absent
    assert snap.revision == await store.revision()
    assert snap.versions[GREET][2].status is Status.CANDIDATE
    assert snap.versions[OTHER][1].status is Status.CANDIDATE
    assert snap.prod == {GREET: 1}


async def test_snapshots_taken_during_rollout_writes_are_consistent(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    # The rollout and its candidate's status move together: no snapshot may see one
    # without the other.
    await with_prod(store, "a", "b")
    reader = await store_factory.new()

    async def churn() -> None:
        # Breathers between writes: a registry is written at human pace, and back-to-back
        # writes would only exhaust the Redis snapshot's optimistic retries.
        for i in range(15):
            await start(store, rollout_id=f"r-{i}", at=T0 + i)
            await asyncio.sleep(0.002)
            await store.update_rollout(GREET, f"r-{i}", 5000, "w", "", T0 + i)
            await asyncio.sleep(0.002)
            await store.abort_rollout(GREET, "w", "", T0 + i)
            await asyncio.sleep(0.002)

    writing = asyncio.ensure_future(churn())
    snapshots = []
    while not writing.done():
        snapshots.append(await reader.snapshot())
        await asyncio.sleep(0)
    await writing
    seen_running = 0
    for snap in snapshots:
        running = snap.rollouts.get(GREET)
        status = snap.versions[GREET][2].status
        if running is None:
            assert status is Status.DRAFT, snap
        else:
            seen_running += 1
            assert status is Status.CANDIDATE, snap
    assert seen_running, "no snapshot caught a running rollout: nothing was tested"


async def test_a_rollout_write_wakes_other_replicas(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    await with_prod(store, "a", "b")
    other = await store_factory.new()
    known = await store.revision()
    waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
    await asyncio.sleep(0.2)
    await start(other)
    assert await asyncio.wait_for(waiter, timeout=3.0) == known + 1
    assert (await store.snapshot()).rollouts[GREET].candidate == 2


# -- segments ---------------------------------------------------------------------------------

#: Given out of order and with a repeat: every store reads back the one sorted form.
SEGMENT = RolloutSegment(tiers=("pro", "enterprise", "pro"), tenants=("acme",))
SEGMENT_JSON = {"tiers": ["enterprise", "pro"], "tenants": ["acme"]}


@pytest.mark.parametrize(
    "segment",
    [SEGMENT, RolloutSegment(tiers=("free",)), RolloutSegment(tenants=("acme", "globex"))],
    ids=["both", "tiers-only", "tenants-only"],
)
async def test_a_segment_started_reads_back_equal_everywhere(
    store: PromptStore, store_factory: StoreFactory, segment: RolloutSegment
) -> None:
    await with_prod(store, "a", "b")
    revision = await store.revision()

    rollout, entry = await start(store, segment=segment)

    assert rollout.segment == segment
    assert await store.revision() == revision + 1  # stored in the start's one write
    other = await store_factory.new()  # another replica reads what this one wrote
    assert await other.get_rollout(GREET) == rollout
    assert (await other.snapshot()).rollouts == {GREET: rollout}
    # An empty list stays a list (the Redis scripts must not re-encode it as an object).
    assert rollout.to_dict()["segment"] == segment.to_dict()
    assert entry.detail == {**rollout.audit_detail(), "segment": segment.to_dict()}
    assert (await other.audit(limit=1))[0] == entry


async def test_the_start_entry_names_the_segment_in_sorted_form(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    rollout, entry = await start(store, segment=SEGMENT)
    assert rollout.segment == RolloutSegment(("enterprise", "pro"), ("acme",))
    assert entry.detail == {
        "rollout_id": "r-1",
        "mode": "canary",
        "percent": 25.0,
        "sticky": "user",
        "segment": SEGMENT_JSON,
    }


async def test_a_rollout_without_a_segment_reads_none_and_its_entries_keep_their_shape(
    store: PromptStore,
) -> None:
    await with_prod(store, "a", "b")
    rollout, started = await start(store)
    ramped, updated = await store.update_rollout(GREET, "r-1", 5000, "bob", "", T0 + 200)
    assert rollout.segment is ramped.segment is None
    assert (await store.get_rollout(GREET)) == ramped
    assert (await store.snapshot()).rollouts[GREET].segment is None
    for entry in (started, updated, (await store.audit(limit=1))[0]):
        assert entry.detail is not None
        assert "segment" not in entry.detail


async def test_a_segment_is_kept_by_ramps_and_goes_with_the_rollout(store: PromptStore) -> None:
    await with_prod(store, "a", "b")
    started, _ = await start(store, segment=SEGMENT)

    ramped, updated = await store.update_rollout(GREET, "r-1", 5000, "bob", "ramp", T0 + 200)
    assert ramped.segment == started.segment
    assert await store.get_rollout(GREET) == ramped
    assert updated.detail is not None
    assert updated.detail["segment"] == SEGMENT_JSON

    aborted = await store.abort_rollout(GREET, "bob", "", T0 + 300)
    assert aborted.detail is not None
    assert aborted.detail["segment"] == SEGMENT_JSON  # the entry says whom it had reached
    assert await store.get_rollout(GREET) is None
    assert (await store.snapshot()).rollouts == {}

    # A new rollout without one reaches everyone: nothing of the old segment is left over.
    again, entry = await start(store, rollout_id="r-2", at=T0 + 400)
    assert again.segment is None
    assert (await store.get_rollout(GREET)) == again
    assert (await store.snapshot()).rollouts[GREET].segment is None
    assert entry.detail is not None
    assert "segment" not in entry.detail

    # And one with another segment has that one only.
    await store.abort_rollout(GREET, "bob", "", T0 + 500)
    third, _ = await start(
        store, rollout_id="r-3", at=T0 + 600, segment=RolloutSegment(tenants=("globex",))
    )
    assert (await store.get_rollout(GREET)) == third
    assert third.segment == RolloutSegment(tenants=("globex",))


async def test_promoting_a_segmented_rollout_ends_it_and_says_whom_it_reached(
    store: PromptStore,
) -> None:
    await with_prod(store, "a", "b")
    rollout, _ = await start(store, segment=SEGMENT)
    entry = await store.promote_rollout(GREET, "carol", "ship it", T0 + 300)
    assert entry.detail == {**rollout.audit_detail(), lifecycle.ROLLOUT_PROMOTED_DETAIL: True}
    assert await store.get_rollout(GREET) is None
    assert (await store.snapshot()).rollouts == {}
