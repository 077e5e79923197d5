"""Helpers shared by the registry contract tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.prompt_key import PromptKey
from proxy.registry.models import (
    AuditEntry,
    RegistrySnapshot,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    VersionDraft,
)
from proxy.registry.store import InvalidTransition, PromptStore

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.123456


GREET = PromptKey("greet")
OTHER = PromptKey("other")


def draft(template: str = "Hello {{ name }}", slug: str = "greet", **kw: Any) -> VersionDraft:
    return VersionDraft(key=PromptKey(slug), template=template, **kw)


async def push(store: PromptStore, *templates: str, slug: str = "greet") -> list[int]:
    numbers = []
    for i, template in enumerate(templates):
        version, _ = await store.create_version(draft(template, slug=slug), "alice", T0 + i)
        numbers.append(version.version)
    return numbers


async def prod_of(store: PromptStore, slug: str = "greet") -> int | None:
    return (await store.snapshot()).prod.get(PromptKey(slug))


async def statuses(store: PromptStore, slug: str = "greet") -> dict[int, Status]:
    return {v.version: v.status for v in await store.list_versions(PromptKey(slug))}


BY_USER = StickyKey.parse("user")
BY_HEADER = StickyKey.parse("header:X-Cohort")


async def start(
    store: PromptStore,
    candidate: int = 2,
    *,
    slug: str = "greet",
    rollout_id: str = "r-1",
    mode: RolloutMode = RolloutMode.CANARY,
    basis_points: int = 2500,
    sticky: StickyKey = BY_USER,
    actor: str = "alice",
    reason: str = "try it",
    at: float = T0 + 100,
    segment: RolloutSegment | None = None,
) -> tuple[Rollout, AuditEntry]:
    return await store.start_rollout(
        PromptKey(slug),
        rollout_id,
        candidate,
        mode,
        basis_points,
        sticky,
        actor,
        reason,
        at,
        segment=segment,
    )


def refusal(check: Callable[..., object], *args: Any) -> str:
    """What a lifecycle check refuses with: both stores must say exactly this."""
    with pytest.raises(InvalidTransition) as info:
        check(*args)
    return str(info.value)


async def everything(store: PromptStore) -> tuple[RegistrySnapshot, list[AuditEntry]]:
    return await store.snapshot(), list(await store.audit(limit=1000))
