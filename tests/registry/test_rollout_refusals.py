"""Refused rollout changes write nothing, in both stores: not the versions, the rollout,
the audit log, the revision, nor the prod history (which the snapshot does not show)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from proxy.registry import lifecycle
from proxy.registry.models import Status
from proxy.registry.store import (
    InvalidTransition,
    PromptNotFound,
    PromptStore,
    VersionNotFound,
)
from tests.registry.helpers import GREET, OTHER, T0, everything, push, refusal, start, statuses

Refused = Callable[[PromptStore], Awaitable[object]]


def _start(slug: str, candidate: int, **kw: Any) -> Refused:
    return lambda store: start(store, slug=slug, candidate=candidate, rollout_id="late", **kw)


_REFUSED: list[tuple[str, Refused, type[Exception], str | None]] = [
    (
        "second-rollout",
        _start("greet", 4),
        InvalidTransition,
        refusal(lifecycle.check_no_rollout, GREET, 3),
    ),
    (
        "start-prod",
        _start("other", 2),
        InvalidTransition,
        refusal(lifecycle.check_rollout_candidate, OTHER, 2, Status.PROD),
    ),
    (
        "start-deprecated",
        _start("other", 1),
        InvalidTransition,
        refusal(lifecycle.check_rollout_candidate, OTHER, 1, Status.DEPRECATED),
    ),
    ("start-unknown-version", _start("other", 9), VersionNotFound, None),
    ("start-unknown-prompt", _start("missing", 1), PromptNotFound, None),
    ("start-bad-percent", _start("other", 3, basis_points=10_001), ValueError, None),
    (
        "update-wrong-id",
        lambda s: s.update_rollout(GREET, "nope", 10, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_rollout_running, GREET, "r-1", "nope"),
    ),
    (
        "update-none-running",
        lambda s: s.update_rollout(OTHER, "r-1", 10, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_rollout_running, OTHER, None, "r-1"),
    ),
    (
        "abort-none-running",
        lambda s: s.abort_rollout(OTHER, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_rollout_running, OTHER, None),
    ),
    (
        "promote-rollout-none-running",
        lambda s: s.promote_rollout(OTHER, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_rollout_running, OTHER, None),
    ),
    (
        "promote-draft-during-rollout",
        lambda s: s.promote(GREET, 4, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_promote_during_rollout, GREET, 4, 3),
    ),
    (
        "promote-deprecated-during-rollout",
        lambda s: s.promote(GREET, 1, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_promote_during_rollout, GREET, 1, 3),
    ),
    (
        "promote-prod-during-rollout",
        lambda s: s.promote(GREET, 2, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_promote, GREET, 2, Status.PROD),
    ),
    (
        "set-status-of-candidate",
        lambda s: s.set_status(GREET, 3, Status.DEPRECATED, "x", "", T0),
        InvalidTransition,
        refusal(lifecycle.check_set_status_during_rollout, GREET, 3, 3),
    ),
]


@pytest.mark.parametrize(
    ("operation", "error", "message"),
    [case[1:] for case in _REFUSED],
    ids=[case[0] for case in _REFUSED],
)
async def test_a_refused_rollout_change_writes_nothing(
    store: PromptStore, operation: Refused, error: type[Exception], message: str | None
) -> None:
    # greet: v1 deprecated, v2 prod, v3 in a rollout, v4 draft. other: v1 deprecated,
    # v2 prod, v3 draft, no rollout.
    for key in (GREET, OTHER):
        await push(store, "a", "b", "c", slug=key.slug)
        await store.promote(key, 1, "alice", "", T0 + 1)
        await store.promote(key, 2, "alice", "", T0 + 2)
    await push(store, "d")
    await start(store, candidate=3, rollout_id="r-1")
    before = await everything(store)

    with pytest.raises(error) as info:
        await operation(store)

    if message is not None:
        assert str(info.value) == message
    assert await everything(store) == before
    # Nor was the prod history touched (it is not in the snapshot): rollback still returns
    # to v1, and the candidate still goes back to draft.
    await store.abort_rollout(GREET, "x", "", T0 + 10)
    assert (await store.rollback(GREET, "x", "", T0 + 11)).version == 1
    assert await statuses(store) == {
        1: Status.PROD,
        2: Status.DEPRECATED,
        3: Status.DRAFT,
        4: Status.DRAFT,
    }
