"""The access log names the exact prompt a call was told (``prompt_hash``) and the rollout
it was under (``rollout_id``), so a regression found weeks later can be traced to both."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import orjson
import pytest

from tests.component.test_rollouts import CHAT, call, canary_body, refreshed, seed
from tests.support import FAKE_UPSTREAM, Clients, upstream_mock

CHAT_URL = f"{FAKE_UPSTREAM}/chat/completions"
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
}


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        mocked.post(CHAT_URL, payload=ANSWER, repeat=True)
        yield mocked


def _lines(caplog: Any) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if r.name == "promptproxy.access"]


def _sent_prompts(mocked: Any) -> list[list[str]]:
    bodies = [orjson.loads(c.kwargs["data"]) for calls in mocked.requests.values() for c in calls]
    return [[m["content"] for m in b["messages"] if m["role"] == "system"] for b in bodies]


def _digest(rules: str, text: str) -> str:
    return hashlib.sha256(f"{rules}\x00{text}".encode()).hexdigest()[:16]


async def test_the_hash_names_what_the_model_was_told(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = clients
    hello = {"template": "Help {{ name }}.", "variables": [{"name": "name", "type": "string"}]}
    for body in ({"template": "Be brief."}, hello):
        assert (await call(admin, "POST", "/prompts/hello/versions", body))[0] == 201
    assert (await call(admin, "POST", "/prompts/hello/promote", {"version": 2}))[0] == 200
    await call(admin, "POST", "/prompts/_guardrails/versions", {"template": "No secrets."})
    await call(admin, "POST", "/prompts/_guardrails/promote", {"version": 1})
    await refreshed(services)
    caplog.set_level(logging.INFO, logger="promptproxy.access")

    for name in ("Ada", "Ada", "Bo"):
        body = {**CHAT, "prompt_variables": {"name": name}}
        resp = await data.post("/p/hello/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()
    await call(admin, "POST", "/prompts/_guardrails/versions", {"template": "No keys."})
    await call(admin, "POST", "/prompts/_guardrails/promote", {"version": 2})
    await refreshed(services)
    resp = await data.post(
        "/p/hello/v1/chat/completions", json={**CHAT, "prompt_variables": {"name": "Ada"}}
    )
    assert resp.status == 200

    hashes = [line["prompt_hash"] for line in _lines(caplog)]
    # Same text, same hash; another name or other guardrails, another hash.
    assert hashes[0] == hashes[1]
    assert len(set(hashes)) == 3
    assert [line["version"] for line in _lines(caplog)] == ["2"] * 4
    # Anyone holding the prompt can check it: the digest of exactly what was sent.
    assert hashes == [_digest(rules, text) for rules, text in _sent_prompts(upstream)]


async def test_a_call_without_a_prompt_has_no_hash_and_no_rollout(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data = clients[0]
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    resp = await data.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    (line,) = _lines(caplog)
    assert line["prompt_hash"] is None
    assert line["rollout_id"] is None


async def test_the_rollout_id_is_on_both_arms_and_gone_after_it(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = clients
    await seed(admin)
    status, started = await call(admin, "PUT", "/prompts/support/rollout", canary_body(50))
    assert status == 201, started
    await refreshed(services)
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    for user in range(40):
        headers = {"x-user-id": f"user-{user}"}
        resp = await data.post("/p/support/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200
    during = _lines(caplog)
    assert {line["arm"] for line in during} == {"stable", "canary"}
    assert {line["rollout_id"] for line in during} == {started["id"]}
    # The two versions told the model different things.
    by_arm = {line["arm"]: line["prompt_hash"] for line in during}
    assert by_arm["stable"] != by_arm["canary"]

    status, _ = await call(admin, "DELETE", "/prompts/support/rollout", {"reason": "done"})
    assert status == 200
    await refreshed(services)
    caplog.clear()
    resp = await data.post("/p/support/v1/chat/completions", json=CHAT)
    (line,) = _lines(caplog)
    assert line["arm"] == "stable"
    assert line["rollout_id"] is None
