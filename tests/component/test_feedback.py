"""POST /v1/feedback: outcomes land on the version and arm that answered, in the OpenAI
error shape when they can't."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.services import Services
from tests.support import FAKE_UPSTREAM, make_settings, proxy_clients, upstream_mock

ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT_URL = f"{FAKE_UPSTREAM}/chat/completions"
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret"},
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "shadow")},
        },
    )
    async with proxy_clients(settings) as trio:
        yield trio


async def seed(admin: TestClient[Any, Any]) -> None:
    """support: v1 prod, v2 a draft."""
    for n in (1, 2):
        resp = await admin.post(
            "/admin/v1/prompts/support/versions", json={"template": f"v{n}"}, headers=ADMIN
        )
        assert resp.status == 201
    resp = await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert resp.status == 200


async def seed_canary(admin: TestClient[Any, Any], services: Services) -> None:
    await seed(admin)
    rollout = {"candidate": 2, "mode": "canary", "percent": 50, "sticky": "header:x-user-id"}
    resp = await admin.put("/admin/v1/prompts/support/rollout", json=rollout, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    assert await services.refresher.load_once()


async def answer(data: TestClient[Any, Any], user: str) -> tuple[str, str, str]:
    with upstream_mock() as mocked:
        mocked.post(CHAT_URL, payload=ANSWER)
        resp = await data.post(
            "/p/support/v1/chat/completions", json=CHAT, headers={"x-user-id": user}
        )
        assert resp.status == 200
        await resp.read()
    return (
        resp.headers["x-promptproxy-request-id"],
        resp.headers["x-prompt-version"],
        resp.headers["x-prompt-arm"],
    )


def feedback_count(services: Services, version: str, arm: str, name: str) -> float:
    value = services.metrics.registry.get_sample_value(
        "promptproxy_feedback_value_count",
        {"slug": "support", "version": version, "arm": arm, "variant": "", "name": name},
    )
    return value or 0.0


async def test_feedback_is_attributed_to_the_version_and_arm_that_answered(
    clients: Clients,
) -> None:
    data, admin, services = clients
    await seed_canary(admin, services)
    answered = [await answer(data, f"user-{i}") for i in range(20)]
    arms = {arm for _, _, arm in answered}
    assert arms == {"stable", "canary"}  # 50 %: both arms answered someone

    for request_id, version, arm in answered:
        resp = await data.post(
            "/v1/feedback", json={"request_id": request_id, "name": "escalated", "value": 1}
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert (body["slug"], str(body["version"]), body["arm"]) == ("support", version, arm)
        assert body["recorded"] is True

    canary = sum(1 for _, _, arm in answered if arm == "canary")
    assert feedback_count(services, "2", "canary", "escalated") == canary
    assert feedback_count(services, "1", "stable", "escalated") == len(answered) - canary

    # A retried POST is acknowledged, not counted twice.
    request_id, _, arm = answered[0]
    before = feedback_count(services, answered[0][1], arm, "escalated")
    resp = await data.post(
        "/v1/feedback", json={"request_id": request_id, "name": "escalated", "value": 1}
    )
    assert resp.status == 200
    assert (await resp.json())["recorded"] is False
    assert feedback_count(services, answered[0][1], arm, "escalated") == before

    # The analyser's pooled counts see it too, per arm of the rollout.
    batches = services.analysis.recorder.drain()
    ((_, batch),) = batches.items()
    counted = sum(
        stats.feedback["escalated"].n
        for arms in batch.slots.values()
        for stats in arms.values()
        if "escalated" in stats.feedback
    )
    assert counted == len(answered)


async def test_unknown_request_ids_get_a_404_in_the_openai_shape(clients: Clients) -> None:
    data, _, _ = clients
    resp = await data.post(
        "/v1/feedback", json={"request_id": "req-never-seen", "name": "thumbs_down", "value": 1}
    )
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "request_not_found"
    assert error["param"] == "request_id"
    assert error["type"] == "invalid_request_error"
    assert "req-never-seen" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "escalated", "value": 1}, "request_id"),
        ({"request_id": "r", "name": "made-up", "value": 1}, "name"),
        ({"request_id": "r", "name": "escalated", "value": "yes"}, "value"),
        ({"request_id": "r", "name": "escalated", "value": True}, "value"),
        ({"request_id": "r", "name": "escalated", "value": 1, "user": "x"}, "user"),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field(
    clients: Clients, body: dict[str, Any], param: str
) -> None:
    data, _, _ = clients
    resp = await data.post("/v1/feedback", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_requests_without_a_prompt_take_no_feedback(clients: Clients) -> None:
    data, _, _ = clients
    with upstream_mock() as mocked:
        mocked.post(CHAT_URL, payload=ANSWER)
        resp = await data.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
    request_id = resp.headers["x-promptproxy-request-id"]
    resp = await data.post(
        "/v1/feedback", json={"request_id": request_id, "name": "thumbs_up", "value": 1}
    )
    assert resp.status == 404


@pytest.mark.parametrize(
    ("mode", "name", "message"),
    [
        ("canary", "made-up", "not one this proxy takes"),
        ("shadow", "thumbs_down", "serves nobody the candidate"),
    ],
)
async def test_a_feedback_check_that_could_never_get_data_is_refused(
    clients: Clients, mode: str, name: str, message: str
) -> None:
    _, admin, _ = clients
    await seed(admin)
    rollout = {
        "candidate": 2,
        "mode": mode,
        "percent": 10,
        "analysis": {"thresholds": {"feedback_drop": {"name": name, "max_drop": 0.1}}},
    }
    resp = await admin.put("/admin/v1/prompts/support/rollout", json=rollout, headers=ADMIN)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "analysis.thresholds.feedback_drop.name"
    assert message in error["message"]
