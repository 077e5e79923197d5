"""Admin API and prompt swap-in, in-process, on the embedded store; provider faked."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from proxy.services import Services
from tests.support import (
    ADMIN,
    FAKE_UPSTREAM,
    READER,
    Clients,
    make_settings,
    proxy_clients,
    upstream_mock,
)

CHAT_URL = f"{FAKE_UPSTREAM}/chat/completions"
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}
SUPPORT = {
    "template": "You help {{ customer_name }} with {{ product }}. Tone: {{ tone }}.",
    "variables": [
        {"name": "customer_name", "type": "string"},
        {"name": "product", "type": "string"},
        {"name": "tone", "type": "string", "default": "friendly"},
    ],
    "changelog": "first",
}


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


async def push(admin: TestClient[Any, Any], slug: str, body: dict[str, Any]) -> Any:
    resp = await admin.post(f"/admin/v1/prompts/{slug}/versions", json=body, headers=ADMIN)
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def promote(admin: TestClient[Any, Any], slug: str, version: int) -> Any:
    resp = await admin.post(
        f"/admin/v1/prompts/{slug}/promote",
        json={"version": version, "reason": "test"},
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


def sent_bodies(mocked: Any) -> list[Any]:
    return [orjson.loads(c.kwargs["data"]) for calls in mocked.requests.values() for c in calls]


async def test_push_is_idempotent_and_numbered(clients: Clients) -> None:
    _, admin, _ = clients
    first = await push(admin, "support", SUPPORT)
    assert (first["created"], first["version"]["version"]) == (True, 1)
    assert first["version"]["author"] == "admin"
    again = await push(admin, "support", SUPPORT)
    assert (again["created"], again["version"]["version"]) == (False, 1)
    second = await push(
        admin, "support", {**SUPPORT, "template": SUPPORT["template"] + " Be brief."}
    )
    assert second["version"]["version"] == 2
    assert second["version"]["status"] == "draft"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"template": "Hi {{ name }"}, "line 1"),
        ({"template": "Hi {{ who }}"}, "who"),
        ({"template": "{{ ''.__class__.__mro__ }}"}, "template"),
        ({"template": "ok", "bogus": 1}, "bogus"),
    ],
)
async def test_bad_versions_are_refused_with_the_reason(
    clients: Clients, body: dict[str, Any], needle: str
) -> None:
    _, admin, _ = clients
    resp = await admin.post("/admin/v1/prompts/p1/versions", json=body, headers=ADMIN)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert needle in error["message"] or needle == error["param"]
    listing = await (await admin.get("/admin/v1/prompts", headers=READER)).json()
    assert listing["data"] == []  # nothing half-written


async def test_admin_auth(clients: Clients) -> None:
    _, admin, _ = clients
    url = "/admin/v1/prompts/p1/versions"
    assert (await admin.post(url, json=SUPPORT)).status == 401
    bad = await admin.post(url, json=SUPPORT, headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    read_only = await admin.post(url, json=SUPPORT, headers=READER)
    assert read_only.status == 403
    assert (await read_only.json())["error"]["type"] == "permission_error"
    assert (await admin.get("/admin/v1/prompts")).status == 401
    assert (await admin.get("/admin/v1/prompts", headers=READER)).status == 200


async def test_writes_refused_when_no_token_is_configured(tmp_path: Path) -> None:
    settings = make_settings(**{"registry.store": f"embedded:{tmp_path / 'r.db'}"})
    async with proxy_clients(settings) as (_, admin, _):
        resp = await admin.post("/admin/v1/prompts/p/versions", json=SUPPORT)
        assert resp.status == 401
        assert "PROMPTPROXY_ADMIN_TOKEN" in (await resp.json())["error"]["message"]
        assert (await admin.get("/admin/v1/prompts")).status == 200


async def test_promote_rollback_history_and_audit(clients: Clients) -> None:
    _, admin, _ = clients
    for n in range(3):
        await push(admin, "s", {"template": f"version {n + 1}"})
    await promote(admin, "s", 1)
    await promote(admin, "s", 2)
    entry = await promote(admin, "s", 3)
    assert entry["previous_prod"] == 2
    prompt = await (await admin.get("/admin/v1/prompts/s", headers=READER)).json()
    assert [v["status"] for v in prompt["data"]] == ["deprecated", "deprecated", "prod"]

    rolled = await admin.post("/admin/v1/prompts/s/rollback", json={"reason": "bad"}, headers=ADMIN)
    assert rolled.status == 200
    assert (await rolled.json())["version"] == 2
    prompt = await (await admin.get("/admin/v1/prompts/s", headers=READER)).json()
    assert prompt["prod_version"] == 2

    audit = await (await admin.get("/admin/v1/audit?slug=s", headers=READER)).json()
    assert audit["data"][0]["action"] == "rollback"
    assert audit["data"][0]["actor"] == "admin"
    assert audit["data"][0]["reason"] == "bad"

    history = await (await admin.get("/admin/v1/prompts/s/history", headers=READER)).json()
    promote_at = [e["at"] for e in history["data"] if e["action"] == "promote"]
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(min(promote_at) + 0.0005, UTC).isoformat()
    at = await admin.get("/admin/v1/prompts/s/history", params={"at": when}, headers=READER)
    assert (await at.json())["prod_version"] == 1
    early = datetime.fromtimestamp(min(promote_at) - 60, UTC).isoformat()
    at = await admin.get("/admin/v1/prompts/s/history", params={"at": early}, headers=READER)
    assert (await at.json())["prod_version"] is None


async def test_rollback_with_nothing_to_return_to_is_a_conflict(clients: Clients) -> None:
    _, admin, _ = clients
    await push(admin, "s", {"template": "only"})
    await promote(admin, "s", 1)
    resp = await admin.post("/admin/v1/prompts/s/rollback", json={}, headers=ADMIN)
    assert resp.status == 409


async def test_unknown_things_are_404(clients: Clients) -> None:
    _, admin, _ = clients
    assert (await admin.get("/admin/v1/prompts/nope", headers=READER)).status == 404
    await push(admin, "s", {"template": "x"})
    assert (await admin.get("/admin/v1/prompts/s/versions/9", headers=READER)).status == 404
    resp = await admin.post("/admin/v1/prompts/s/promote", json={"version": 9}, headers=ADMIN)
    assert resp.status == 404


async def test_openapi_description_is_valid(clients: Clients) -> None:
    _, admin, _ = clients
    spec = await (await admin.get("/admin/v1/openapi.json")).json()
    validate(spec)
    assert "/admin/v1/prompts/{slug}/rollback" in spec["paths"]


async def ready_for(services: Services) -> None:
    assert await services.refresher.load_once()


async def test_swap_in_replaces_the_system_prompt(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = clients
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    caplog.set_level(logging.INFO, logger="promptproxy.access")

    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}],
        "prompt_variables": {"customer_name": "Ada", "product": "{{ 7*7 }}"},
    }
    resp = await data.post("/v1/chat/completions", json=body, headers={"X-Prompt-Slug": "support"})
    assert resp.status == 200, await resp.text()
    assert (
        resp.headers["x-prompt-slug"],
        resp.headers["x-prompt-version"],
        resp.headers["x-prompt-arm"],
    ) == ("support", "1", "stable")
    (sent,) = sent_bodies(upstream)
    assert "prompt_variables" not in sent
    assert sent["messages"] == [
        {"role": "system", "content": "You help Ada with {{ 7*7 }}. Tone: friendly."},
        {"role": "user", "content": "hi"},
    ]
    (line,) = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert (line["slug"], line["version"], line["arm"]) == ("support", "1", "stable")


async def test_swap_in_by_base_url_inserts_a_system_message(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt_variables": {"customer_name": "Bo", "product": "pens", "tone": "formal"},
    }
    resp = await data.post("/p/support/v1/chat/completions", json=body)
    assert resp.status == 200
    (sent,) = sent_bodies(upstream)
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You help Bo with pens. Tone: formal.",
    }


async def test_model_pin_params_and_responses_instructions(
    clients: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = clients
    await push(
        admin,
        "pinned",
        {
            "template": "Be exact.",
            "model": "gpt-4o-2024-08-06",
            "params": {"temperature": 0.1, "seed": 7},
        },
    )
    await promote(admin, "pinned", 1)
    await ready_for(services)
    upstream.post(f"{FAKE_UPSTREAM}/responses", payload={"id": "r", "model": "gpt-4o-2024-08-06"})
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    resp = await data.post(
        "/p/pinned/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "seed": 1}
    )
    assert resp.status == 200
    (sent,) = sent_bodies(upstream)
    assert sent == {
        "model": "gpt-4o-2024-08-06",
        "input": "hi",
        "seed": 1,
        "instructions": "Be exact.",
        "temperature": 0.1,
    }
    (line,) = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert (line["model_requested"], line["model_sent"]) == ("gpt-4o-mini", "gpt-4o-2024-08-06")


@pytest.mark.parametrize(
    ("headers", "variables", "status", "param"),
    [
        ({"X-Prompt-Slug": "nope"}, {}, 404, "slug"),
        ({"X-Prompt-Slug": "draft-only"}, {}, 409, "slug"),
        ({"X-Prompt-Slug": "support"}, {"customer_name": "A"}, 400, "prompt_variables.product"),
        (
            {"X-Prompt-Slug": "support"},
            {"customer_name": "A", "product": "p", "extra": 1},
            400,
            "prompt_variables.extra",
        ),
        (
            {"X-Prompt-Slug": "support"},
            {"customer_name": 5, "product": "p"},
            400,
            "prompt_variables.customer_name",
        ),
        ({"X-Prompt-Slug": "support", "X-Prompt-Version": "9"}, {}, 404, "x-prompt-version"),
        ({"X-Prompt-Slug": "bad slug"}, {}, 400, "x-prompt-slug"),
    ],
)
async def test_swap_in_errors(
    clients: Clients,
    upstream: Any,
    headers: dict[str, str],
    variables: dict[str, Any],
    status: int,
    param: str,
) -> None:
    data, admin, services = clients
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await push(admin, "draft-only", {"template": "x"})
    await ready_for(services)
    body = {"model": "m", "messages": [], "prompt_variables": variables}
    resp = await data.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["param"] == param
    assert sent_bodies(upstream) == []


async def test_version_pin_serves_an_older_version(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await push(admin, "s", {"template": "one"})
    await push(admin, "s", {"template": "two"})
    await promote(admin, "s", 2)
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    pinned = await data.post(
        "/p/s/v1/chat/completions", json=body, headers={"X-Prompt-Version": "1"}
    )
    current = await data.post("/p/s/v1/chat/completions", json=body)
    assert (pinned.headers["x-prompt-version"], current.headers["x-prompt-version"]) == ("1", "2")
    assert [b["messages"][0]["content"] for b in sent_bodies(upstream)] == ["one", "two"]


async def good_then_bad(admin: TestClient[Any, Any], services: Services) -> None:
    """Prompt ``s``: version 1 was prod, version 2 is, and the proxy serves it."""
    await push(admin, "s", {"template": "good"})
    await push(admin, "s", {"template": "bad"})
    await promote(admin, "s", 1)
    await promote(admin, "s", 2)
    await ready_for(services)


async def test_rollback_is_served_without_a_restart(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await good_then_bad(admin, services)
    await admin.post("/admin/v1/prompts/s/rollback", json={}, headers=ADMIN)
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER)
    resp = await data.post("/p/s/v1/chat/completions", json={"model": "m", "messages": []})
    assert resp.headers["x-prompt-version"] == "1"


async def test_a_rollback_while_a_body_arrives_is_obeyed(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await good_then_bad(admin, services)
    upstream.post(CHAT_URL, payload=ANSWER)
    body = orjson.dumps({"model": "m", "messages": []})
    # A raw socket, so the proxy surely has the head and half the body before the rollback.
    reader, writer = await asyncio.open_connection(data.host, data.port)
    writer.write(
        b"POST /p/s/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5]
    )
    await writer.drain()
    for _ in range(1000):  # until the proxy handles the request and waits for the rest
        if services.pipeline.metrics.requests_open:
            break
        await asyncio.sleep(0.001)
    assert services.pipeline.metrics.requests_open == 1
    rolled = await admin.post("/admin/v1/prompts/s/rollback", json={}, headers=ADMIN)
    assert rolled.status == 200
    await ready_for(services)
    writer.write(body[5:])
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().lower()
    writer.close()
    await writer.wait_closed()
    assert head.startswith("http/1.1 200")
    assert "x-prompt-version: 1\r\n" in head
