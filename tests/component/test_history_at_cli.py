"""`prompts history SLUG --at T` and `GET /admin/v1/prompts/{slug}/history?at=T` during a
rollout: not only the prod version, but what the rollout served then."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, VersionDraft
from tests.support import READER, Clients, run_cli


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def history_at(admin: TestClient[Any, Any], when: float, *output: str) -> str:
    result = await run_cli(admin, "prompts", *output, "history", "support", "--at", iso(when))
    assert result.exit_code == 0, result.output
    return result.output


async def test_history_at_an_instant_during_a_canary_says_what_the_canary_served(
    clients: Clients,
) -> None:
    _, admin, services = clients
    registry = services.registry
    for n in (1, 2):
        await registry.push(VersionDraft(key=PromptKey("support"), template=f"v{n}"), actor="test")
    await registry.promote(PromptKey("support"), 1, "test", "")
    change = await registry.set_rollout(
        PromptKey("support"), 2, RolloutMode.CANARY, 10, "header:x-user-id", "operator", "try"
    )
    ramp = await registry.set_rollout(
        PromptKey("support"), 2, RolloutMode.CANARY, 25, None, "operator", "ramp"
    )
    aborted = await registry.abort_rollout(PromptKey("support"), "operator", "enough")
    assert change.audit is not None
    assert ramp.audit is not None
    started, ramped = change.audit.at, ramp.audit.at
    # Instants between the entries: an ISO string keeps microseconds only.
    assert started < ramped < aborted.at

    text = await history_at(admin, (started + ramped) / 2)
    assert "prod version 1; canary of version 2 serving 10% of callers" in text
    assert "sticky header:x-user-id" in text
    assert f"rollout {change.rollout.id}" in text

    answer = orjson.loads(await history_at(admin, (ramped + aborted.at) / 2, "--output", "json"))
    assert answer["prod_version"] == 1
    assert answer["rollout"] == {
        "id": change.rollout.id,
        "candidate": 2,
        "mode": "canary",
        "percent": 25.0,
        "sticky": "header:x-user-id",
        "started_at": started,
        "percent_since": ramped,
        "segment": None,
    }

    assert "prod version 1; no rollout running" in await history_at(admin, aborted.at + 1)
    resp = await admin.get(
        "/admin/v1/prompts/support/history",
        params={"at": iso(aborted.at + 1)},
        headers=READER,
    )
    assert (await resp.json())["rollout"] is None
