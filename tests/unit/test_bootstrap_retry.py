"""The background bootstrap of a cold start: waits out an unavailable store, and gives up
(so the replica still loads its snapshot and serves) on errors that retrying cannot fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.errors import Conflict, ServiceUnavailable
from proxy.registry.bootstrap import bootstrap_when_reachable
from proxy.registry.models import PromptVersion
from proxy.registry.service import PromptSummary


class FakeService:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.pushes = 0

    async def push(self, draft: Any, actor: str) -> tuple[PromptVersion, bool]:
        self.pushes += 1
        if self.failures:
            raise self.failures.pop(0)
        version = draft.to_version(1, 0.0)
        return version, True

    async def get_prompt(self, slug: str) -> tuple[PromptSummary, list[PromptVersion]]:
        return PromptSummary(slug, 1, 1, 1, 0.0), []

    async def promote(self, *args: Any) -> None:
        raise AssertionError("the fake already has a prod")


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "greet.md").write_text("---\nauthor: t\n---\nSay hello.\n")
    return tmp_path


async def test_waits_out_an_unavailable_store(tmp_path: Path) -> None:
    service = FakeService([ServiceUnavailable("down"), ServiceUnavailable("down")])
    assert await bootstrap_when_reachable(service, _folder(tmp_path)) == 1  # type: ignore[arg-type]
    assert service.pushes == 3


async def test_gives_up_on_an_error_retrying_cannot_fix(tmp_path: Path) -> None:
    service = FakeService([Conflict("no")] * 10)
    assert await bootstrap_when_reachable(service, _folder(tmp_path)) is None  # type: ignore[arg-type]
    assert service.pushes == 3
