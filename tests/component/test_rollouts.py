"""Rollouts through the admin API and the data plane, in-process, on the embedded store."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from proxy.pipeline.choose import takes_candidate
from proxy.prompt_key import PromptKey
from proxy.registry.models import Rollout
from proxy.services import Services
from tests.support import ADMIN, FAKE_UPSTREAM, READER, Clients, upstream_mock

CHAT_URL = f"{FAKE_UPSTREAM}/chat/completions"
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


async def call(
    admin: TestClient[Any, Any],
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    resp = await admin.request(
        method, f"/admin/v1{path}", json=body, headers=ADMIN if headers is None else headers
    )
    return resp.status, await resp.json()


async def seed(admin: TestClient[Any, Any], slug: str = "support", versions: int = 3) -> None:
    """v1 prod, v2..vN drafts."""
    for n in range(1, versions + 1):
        status, _ = await call(admin, "POST", f"/prompts/{slug}/versions", {"template": f"v{n}"})
        assert status == 201
    status, _ = await call(admin, "POST", f"/prompts/{slug}/promote", {"version": 1})
    assert status == 200


def canary_body(percent: float, sticky: str | None = "header:x-user-id", **extra: Any) -> Any:
    body = {"candidate": 2, "mode": "canary", "percent": percent, **extra}
    if sticky is not None:
        body["sticky"] = sticky
    return body


async def refreshed(services: Services) -> None:
    assert await services.refresher.load_once()


def system_prompts(mocked: Any) -> list[str]:
    bodies = [orjson.loads(c.kwargs["data"]) for calls in mocked.requests.values() for c in calls]
    return [b["messages"][0]["content"] for b in bodies]


async def test_rollout_lifecycle_through_the_admin_api(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin)
    status, started = await call(admin, "PUT", "/prompts/support/rollout", canary_body(10))
    assert status == 201, started
    assert (started["candidate"], started["mode"], started["percent"]) == (2, "canary", 10.0)
    assert (started["sticky"], started["prod_version"]) == ("header:x-user-id", 1)
    assert started["audit"]["action"] == "rollout_start"
    _, version = await call(admin, "GET", "/prompts/support/versions/2")
    assert version["status"] == "candidate"

    # Same candidate and mode: a ramp, same id (so the same cohorts), audited.
    status, ramped = await call(admin, "PUT", "/prompts/support/rollout", canary_body(25, None))
    assert status == 200
    assert (ramped["id"], ramped["percent"], ramped["sticky"]) == (
        started["id"],
        25.0,
        "header:x-user-id",
    )
    assert ramped["audit"]["detail"]["from_percent"] == 10.0
    status, same = await call(admin, "PUT", "/prompts/support/rollout", canary_body(25))
    assert (status, same["audit"]) == (200, None)  # nothing changed, nothing written

    status, got = await call(admin, "GET", "/prompts/support/rollout", headers=READER)
    assert (status, got["percent"]) == (200, 25.0)
    status, listed = await call(admin, "GET", "/rollouts", headers=READER)
    assert [r["slug"] for r in listed["data"]] == ["support"]

    status, aborted = await call(admin, "DELETE", "/prompts/support/rollout", {"reason": "worse"})
    assert status == 200, aborted
    assert (aborted["action"], aborted["to_status"], aborted["reason"]) == (
        "rollout_abort",
        "draft",
        "worse",
    )
    _, version = await call(admin, "GET", "/prompts/support/versions/2")
    assert version["status"] == "draft"
    status, missing = await call(admin, "GET", "/prompts/support/rollout")
    assert (status, missing["error"]["code"]) == (404, "rollout_not_found")


async def test_promoting_the_rollout_makes_the_candidate_prod(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(50))
    status, entry = await call(admin, "POST", "/prompts/support/rollout/promote", {"reason": "ok"})
    assert status == 200, entry
    assert (entry["action"], entry["version"], entry["to_status"]) == ("promote", 2, "prod")
    assert entry["detail"]["ended_rollout"] is True
    _, prompt = await call(admin, "GET", "/prompts/support")
    assert prompt["prod_version"] == 2
    assert {v["version"]: v["status"] for v in prompt["data"]}[1] == "deprecated"
    status, _ = await call(admin, "GET", "/prompts/support/rollout")
    assert status == 404
    # The former prod is where a rollback goes.
    status, back = await call(admin, "POST", "/prompts/support/rollback", {})
    assert (status, back["version"]) == (200, 1)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (canary_body(100.5), 400, "percent"),
        (canary_body(-1), 400, "percent"),
        (canary_body(10.005), 400, "percent"),
        (canary_body(10, "cookie-monster"), 400, "sticky"),
        (canary_body(10, "header:authorization"), 400, "sticky"),
        ({"candidate": 2, "mode": "mirror", "percent": 5}, 400, "mode"),
        ({"candidate": 0, "mode": "canary", "percent": 5}, 400, "candidate"),
        ({"mode": "canary", "percent": 5}, 400, "candidate"),
        ({"candidate": 9, "mode": "canary", "percent": 5}, 404, "version"),
        ({"candidate": 1, "mode": "canary", "percent": 5}, 409, None),  # already prod
        (canary_body(5, analysis={"steps": [5, 25, 10]}), 400, "analysis.steps[2]"),
        (canary_body(5, analysis={"steps": [5, 0.001]}), 400, "analysis.steps[1]"),
        (canary_body(5, analysis={"steps": [5, 100]}), 400, "analysis.steps[1]"),
        (canary_body(5, analysis={"interval": 0}), 400, "analysis.interval"),
        (canary_body(5, analysis={"min_samples": "many"}), 400, "analysis.min_samples"),
        (
            canary_body(5, analysis={"thresholds": {"p95_latency_ratio": 0.5}}),
            400,
            "analysis.thresholds.p95_latency_ratio",
        ),
        (
            canary_body(5, analysis={"thresholds": {"p99": 2}}),
            400,
            "analysis.thresholds.p99",
        ),
        (canary_body(5, analysis={"cadence": 5}), 400, "analysis.cadence"),
    ],
)
async def test_invalid_rollouts_say_why(
    clients: Clients, body: Any, status: int, param: str | None
) -> None:
    _, admin, _ = clients
    await seed(admin)
    got_status, answer = await call(admin, "PUT", "/prompts/support/rollout", body)
    assert got_status == status, answer
    error = answer["error"]
    assert error["message"]
    assert error["param"] == param


async def test_refused_moves_name_the_reason(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin, versions=4)
    # A deprecated candidate.
    await call(admin, "POST", "/prompts/support/promote", {"version": 3})
    await call(admin, "POST", "/prompts/support/promote", {"version": 4})
    status, answer = await call(
        admin,
        "PUT",
        "/prompts/support/rollout",
        {
            "candidate": 3,
            "mode": "canary",
            "percent": 5,
        },
    )
    assert status == 409
    assert "deprecated" in answer["error"]["message"]
    # A second rollout, and a changed mode or sticky key on the running one.
    status, _ = await call(admin, "PUT", "/prompts/support/rollout", canary_body(5))
    assert status == 201
    for body in (
        {"candidate": 1, "mode": "canary", "percent": 5},
        {"candidate": 2, "mode": "shadow", "percent": 5},
        canary_body(5, "user"),
    ):
        status, answer = await call(admin, "PUT", "/prompts/support/rollout", body)
        assert status == 409, body
        assert answer["error"]["code"] == "rollout_running"
    # Promoting another version, or deprecating the candidate, while it runs.
    status, answer = await call(admin, "POST", "/prompts/support/promote", {"version": 1})
    assert status == 409
    assert "rollout" in answer["error"]["message"]
    # Nothing to abort or promote once it is gone.
    await call(admin, "DELETE", "/prompts/support/rollout")
    for method, path in (("DELETE", "/rollout"), ("POST", "/rollout/promote")):
        status, answer = await call(admin, method, f"/prompts/support{path}")
        assert status == 409, answer
        assert "rollout" in answer["error"]["message"]


async def test_a_prompt_without_prod_cannot_start_a_rollout(clients: Clients) -> None:
    _, admin, _ = clients
    await call(admin, "POST", "/prompts/fresh/versions", {"template": "one"})
    await call(admin, "POST", "/prompts/fresh/versions", {"template": "two"})
    status, answer = await call(admin, "PUT", "/prompts/fresh/rollout", canary_body(5))
    assert (status, answer["error"]["code"]) == (409, "no_prod_version")
    status, answer = await call(admin, "PUT", "/prompts/nope/rollout", canary_body(5))
    assert status == 404


async def test_rollout_writes_need_an_admin_token(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin)
    status, _ = await call(admin, "PUT", "/prompts/support/rollout", canary_body(5), READER)
    assert status == 403
    status, _ = await call(admin, "PUT", "/prompts/support/rollout", canary_body(5), {})
    assert status == 401
    status, _ = await call(admin, "DELETE", "/prompts/support/rollout", None, READER)
    assert status == 403


async def test_canary_callers_get_the_candidate_and_keep_it(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = clients
    await seed(admin)
    _, started = await call(admin, "PUT", "/prompts/support/rollout", canary_body(30))
    await refreshed(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    rollout: Rollout = services.snapshot.current.rollouts[PromptKey("support")]
    assert rollout.id == started["id"]

    users = [f"user-{i}" for i in range(40)]
    arms: dict[str, set[tuple[str, str]]] = {u: set() for u in users}
    for _ in range(2):
        for user in users:
            resp = await data.post(
                "/p/support/v1/chat/completions", json=CHAT, headers={"x-user-id": user}
            )
            assert resp.status == 200
            arms[user].add((resp.headers["x-prompt-arm"], resp.headers["x-prompt-version"]))
    for user in users:
        expected = ("canary", "2") if takes_candidate(rollout, user) else ("stable", "1")
        assert arms[user] == {expected}, user  # sticky: the same answer both times
    assert {next(iter(a))[0] for a in arms.values()} == {"canary", "stable"}
    # The provider saw the candidate's prompt exactly for the canary callers.
    canaries = sum(takes_candidate(rollout, u) for u in users)
    assert sorted(system_prompts(upstream)).count("v2") == 2 * canaries

    lines = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert {(line["arm"], line["version"]) for line in lines} == {("canary", "2"), ("stable", "1")}
    admin_metrics = await (await admin.get("/metrics")).text()
    assert 'arm="canary"' in admin_metrics
    percent = 'candidate="2",layer="",mode="canary",slug="support",variant=""} 30.0'
    assert "promptproxy_rollout_percent{" + percent in (admin_metrics)


async def test_requests_without_the_sticky_key_stay_on_stable(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(100))
    await refreshed(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    keyed = await data.post("/p/support/v1/chat/completions", json=CHAT, headers={"x-user-id": "a"})
    unkeyed = await data.post("/p/support/v1/chat/completions", json=CHAT)
    assert keyed.headers["x-prompt-arm"] == "canary"
    assert unkeyed.headers["x-prompt-arm"] == "stable"
    text = await (await admin.get("/metrics")).text()
    assert 'promptproxy_rollout_unkeyed_total{slug="support"} 1.0' in text


async def test_a_version_pin_bypasses_the_rollout(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(100, "none"))
    await refreshed(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    resp = await data.post(
        "/p/support/v1/chat/completions", json=CHAT, headers={"x-prompt-version": "3"}
    )
    assert (resp.headers["x-prompt-arm"], resp.headers["x-prompt-version"]) == ("pinned", "3")


async def test_abort_sends_everyone_back_to_stable(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(100, "none"))
    await refreshed(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    resp = await data.post("/p/support/v1/chat/completions", json=CHAT)
    assert resp.headers["x-prompt-arm"] == "canary"
    await call(admin, "DELETE", "/prompts/support/rollout")
    await refreshed(services)
    for _ in range(20):
        resp = await data.post("/p/support/v1/chat/completions", json=CHAT)
        assert (resp.headers["x-prompt-arm"], resp.headers["x-prompt-version"]) == ("stable", "1")
    text = await (await admin.get("/metrics")).text()
    assert "promptproxy_rollout_percent{" not in text


POLICY = {
    "interval": 30,
    "min_samples": 50,
    "failure_limit": 1,
    "steps": [5, 25, 50, 75],
    "thresholds": {"p95_ttft_ratio": None, "feedback_drop": {"name": "thumbs_up", "max_drop": 0.1}},
}
# What the API answers for POLICY: every field, defaults filled in, numbers as stored.
POLICY_OUT = {
    "interval": 30.0,
    "min_samples": 50,
    "failure_limit": 1,
    "steps": [5.0, 25.0, 50.0, 75.0],
    "alpha": 0.01,
    "thresholds": {
        "error_rate_increase": 0.02,
        "p95_latency_ratio": 1.5,
        "p95_ttft_ratio": None,
        "length_finish_increase": 0.05,
        "answer_length_drift": 0.3,
        "shadow_divergence": True,
        "feedback_drop": {"name": "thumbs_up", "max_drop": 0.1},
    },
}


async def test_a_rollout_carries_its_analysis_policy(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, admin, services = clients
    await seed(admin)
    seen: list[Rollout] = []

    async def status(self: object, rollout: Rollout) -> dict[str, Any]:
        seen.append(rollout)
        return {"step": 0, "failures": 0, "next_at": 1.0, "holder": None, "verdicts": []}

    monkeypatch.setattr(type(services.analysis), "status", status)

    status_code, started = await call(
        admin, "PUT", "/prompts/support/rollout", canary_body(5, analysis=POLICY)
    )
    assert status_code == 201, started
    assert started["analysis"] == POLICY_OUT
    assert started["audit"]["detail"]["analysis"] == POLICY_OUT

    status_code, got = await call(admin, "GET", "/prompts/support/rollout", headers=READER)
    assert status_code == 200
    assert got["analysis"] == POLICY_OUT
    assert got["analysis_state"]["step"] == 0
    assert [(r.id, r.analysis is not None) for r in seen] == [(started["id"], True)]
    _, listed = await call(admin, "GET", "/rollouts", headers=READER)
    assert listed["data"][0]["analysis"] == POLICY_OUT

    # A ramp without a policy keeps it; repeating the same policy is fine too.
    status_code, ramped = await call(admin, "PUT", "/prompts/support/rollout", canary_body(25))
    assert (status_code, ramped["analysis"]) == (200, POLICY_OUT)
    status_code, ramped = await call(
        admin, "PUT", "/prompts/support/rollout", canary_body(50, analysis=POLICY_OUT)
    )
    assert (status_code, ramped["percent"], ramped["analysis"]) == (200, 50.0, POLICY_OUT)

    # A different policy on the running rollout is refused, even without a percent change.
    for percent in (50, 60):
        body = canary_body(percent, analysis={**POLICY, "failure_limit": 3})
        status_code, answer = await call(admin, "PUT", "/prompts/support/rollout", body)
        assert status_code == 409, answer
        assert (answer["error"]["code"], answer["error"]["param"]) == (
            "rollout_running",
            "analysis",
        )
        assert "Abort it" in answer["error"]["message"]
    _, got = await call(admin, "GET", "/prompts/support/rollout")
    assert (got["percent"], got["analysis"]) == (50.0, POLICY_OUT)

    # The way to change it: abort, start again.
    await call(admin, "DELETE", "/prompts/support/rollout")
    status_code, again = await call(
        admin, "PUT", "/prompts/support/rollout", canary_body(5, analysis={"steps": []})
    )
    assert status_code == 201, again
    assert (again["analysis"]["steps"], again["analysis"]["interval"]) == ([], 60.0)


async def test_a_rollout_without_a_policy_shows_none(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin)
    status, started = await call(admin, "PUT", "/prompts/support/rollout", canary_body(5))
    assert (status, started["analysis"]) == (201, None)
    assert "analysis" not in started["audit"]["detail"]
    _, got = await call(admin, "GET", "/prompts/support/rollout")
    assert (got["analysis"], got["analysis_state"]) == (None, None)
    # A policy cannot be added to a rollout that runs without one.
    status, answer = await call(
        admin, "PUT", "/prompts/support/rollout", canary_body(10, analysis={})
    )
    assert (status, answer["error"]["param"]) == (409, "analysis")
