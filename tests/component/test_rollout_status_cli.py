"""`rollout status SLUG` with nothing running answers (exit 0) as docs/operations.md says,
instead of failing; an unknown prompt is still an error."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from click.testing import Result

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, VersionDraft
from tests.support import Clients, run_cli


async def status(admin: TestClient[Any, Any], *args: str) -> Result:
    return await run_cli(admin, "rollout", *args)


async def test_status_of_a_prompt_with_nothing_running_answers(clients: Clients) -> None:
    _, admin, services = clients
    registry = services.registry
    for n in (1, 2):
        await registry.push(VersionDraft(key=PromptKey("support"), template=f"v{n}"), actor="test")
    await registry.promote(PromptKey("support"), 1, "test", "")

    never = await status(admin, "status", "support")
    assert (never.exit_code, never.stdout) == (0, "support has no rollout running.\n")

    await registry.set_rollout(
        PromptKey("support"), 2, RolloutMode.CANARY, 10, None, "operator", ""
    )
    await registry.abort_rollout(PromptKey("support"), "operator", "")
    after_abort = await status(admin, "status", "support")
    assert (after_abort.exit_code, after_abort.stdout) == (0, "support has no rollout running.\n")

    as_json = await status(admin, "-o", "json", "status", "support")
    assert orjson.loads(as_json.stdout) == {"slug": "support", "rollout": None}

    unknown = await status(admin, "status", "nobody")
    assert unknown.exit_code == 1
    assert "nobody" in unknown.stderr
