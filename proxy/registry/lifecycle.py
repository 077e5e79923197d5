"""Status-move rules shared by every store, so SQLite and Redis cannot drift apart.

The Redis store runs these checks inside Lua (atomicity); its script text is generated from
``SET_STATUS_MOVES`` so there is still a single source of truth.

Rules:
- ``set_status`` never touches prod: moving *to* prod is ``promote``'s job and moving the
  current prod away is ``promote``'s/``rollback``'s. This keeps "which version was prod at
  instant T" answerable from promote/rollback audit entries alone.
- ``set_status`` only moves forward: draft -> candidate -> deprecated (draft -> deprecated
  too). Nothing goes back to draft; a deprecated version comes back only through ``promote``
  or ``rollback``.
- Promoting the version that is already prod is an ``InvalidTransition``: it would change
  nothing, and every successful call must return the audit entry of a change it made.
- Rollouts: the candidate must be a ``draft`` or ``candidate`` version (not prod, not
  deprecated: a deprecated version comes back only through promote or rollback) and there
  is at most one rollout per slug. While one runs, its candidate's status does not move by
  ``set_status``, and ``promote`` of any other version is refused (promote or abort the
  rollout first); ``promote`` of the candidate itself ends the rollout as
  ``promote_rollout`` does. ``rollback`` stays allowed: in an emergency it must always work,
  and the rollout then compares its candidate with the restored prod.
- Rollback history is a stack of prod versions: ``promote N`` moves N to the top (a version
  appears once, at its latest promotion); ``rollback`` pops the current prod, and the new top
  becomes prod. So 1 -> 2 -> 3, rollback, rollback gives 2 then 1, never 3 again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from proxy.registry.models import Status
from proxy.registry.store import InvalidTransition

SET_STATUS_MOVES: Mapping[Status, frozenset[Status]] = MappingProxyType(
    {
        Status.DRAFT: frozenset({Status.CANDIDATE, Status.DEPRECATED}),
        Status.CANDIDATE: frozenset({Status.DEPRECATED}),
        Status.DEPRECATED: frozenset(),
        Status.PROD: frozenset(),
    }
)

PROMOTE_ACTION = "promote"
ROLLBACK_ACTION = "rollback"
CREATE_ACTION = "create"
SET_STATUS_ACTION = "set_status"
ROLLOUT_START_ACTION = "rollout_start"
ROLLOUT_UPDATE_ACTION = "rollout_update"
ROLLOUT_ABORT_ACTION = "rollout_abort"
#: ``promote_rollout`` writes a ``promote`` entry (so prod history replays it like any
#: promote) whose ``detail`` carries the rollout (``Rollout.audit_detail``) and this flag.
ROLLOUT_PROMOTED_DETAIL = "ended_rollout"

ROLLOUT_CANDIDATE_STATUSES = frozenset({Status.DRAFT, Status.CANDIDATE})


def check_set_status(slug: str, version: int, current: Status, target: Status) -> None:
    if target is Status.PROD:
        raise InvalidTransition(f"{slug} v{version}: use promote to make a version prod")
    if current is Status.PROD:
        raise InvalidTransition(
            f"{slug} v{version} is prod: use promote (another version) or rollback to replace it"
        )
    if target not in SET_STATUS_MOVES[current]:
        raise InvalidTransition(f"{slug} v{version}: {current.value} -> {target.value} not allowed")


def check_promote(slug: str, version: int, current: Status) -> None:
    if current is Status.PROD:
        raise InvalidTransition(f"{slug} v{version} is already prod")


def check_rollout_candidate(slug: str, version: int, current: Status) -> None:
    if current is Status.PROD:
        raise InvalidTransition(
            f"{slug} v{version} is already prod: a rollout needs another version"
        )
    if current not in ROLLOUT_CANDIDATE_STATUSES:
        raise InvalidTransition(
            f"{slug} v{version} is {current.value}: only a draft or candidate version can be "
            "rolled out (push it again to get a fresh version)"
        )


def check_no_rollout(slug: str, running_candidate: int | None) -> None:
    """Refuse starting a second rollout."""
    if running_candidate is not None:
        raise InvalidTransition(
            f"{slug} already has a rollout of v{running_candidate}: change its percentage, "
            "promote it or abort it first"
        )


def check_promote_during_rollout(slug: str, version: int, running_candidate: int | None) -> None:
    """Plain ``promote`` while a rollout runs: only its own candidate."""
    if running_candidate is not None and running_candidate != version:
        raise InvalidTransition(
            f"{slug} has a rollout of v{running_candidate} running: promote or abort it "
            f"before promoting v{version}"
        )


def check_set_status_during_rollout(slug: str, version: int, running_candidate: int | None) -> None:
    if running_candidate == version:
        raise InvalidTransition(
            f"{slug} v{version} is the candidate of a running rollout: abort it first"
        )


def prod_stack(events: Iterable[tuple[str, int]]) -> list[int]:
    """Replay (action, version) promote/rollback events, oldest first; top = current prod."""
    stack: list[int] = []
    for action, version in events:
        if action == ROLLBACK_ACTION and stack:
            stack.pop()
        if version in stack:
            stack.remove(version)
        stack.append(version)
    return stack


def rollback_pair(slug: str, stack: list[int]) -> tuple[int, int]:
    """(current prod, target) for a rollback, or ``InvalidTransition``."""
    if not stack:
        raise InvalidTransition(f"{slug} has no prod version to roll back")
    if len(stack) < 2:
        raise InvalidTransition(f"{slug} v{stack[-1]} is prod and there is no former prod")
    return stack[-1], stack[-2]
