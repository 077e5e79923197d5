"""Helpers shared by the registry contract tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.registry.models import Status, VersionDraft
from proxy.registry.store import PromptStore

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.123456


def draft(template: str = "Hello {{ name }}", slug: str = "greet", **kw: Any) -> VersionDraft:
    return VersionDraft(slug=slug, template=template, **kw)


async def push(store: PromptStore, *templates: str, slug: str = "greet") -> list[int]:
    numbers = []
    for i, template in enumerate(templates):
        version, _ = await store.create_version(draft(template, slug=slug), "alice", T0 + i)
        numbers.append(version.version)
    return numbers


async def prod_of(store: PromptStore, slug: str = "greet") -> int | None:
    return (await store.snapshot()).prod.get(slug)


async def statuses(store: PromptStore, slug: str = "greet") -> dict[int, Status]:
    return {v.version: v.status for v in await store.list_versions(slug)}
