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
