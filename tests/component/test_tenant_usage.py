"""Per-tenant usage through the admin API and the CLI (embedded store): what a known
tenant's requests were, by prompt and variant, with tokens and estimated cost; unknown
callers and shadow copies never count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.component.test_registry_swap_in import CHAT_URL, SUPPORT, promote, push, ready_for
from tests.support import ADMIN, Clients, admin_settings, proxy_clients, run_cli, upstream_mock

VARIABLES = {"customer_name": "Ada", "product": "pens"}
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}


def answer(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    settings = admin_settings(tmp_path, **{"metrics.prices": PRICES})
    async with proxy_clients(settings) as trio:
        yield trio


async def put_tenant(admin: Any, tenant: str, tier: str) -> None:
    resp = await admin.put(f"/admin/v1/tenants/{tenant}", json={"tier": tier}, headers=ADMIN)
    assert resp.status == 200, await resp.text()


async def ask(data: Any, tenant: str | None, *, slug: str | None = "support") -> int:
    headers = {"Authorization": "Bearer sk-test"}
    if tenant is not None:
        headers["X-Tenant-Id"] = tenant
    path = "/v1/chat/completions" if slug is None else f"/p/{slug}/v1/chat/completions"
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if slug is not None:
        body["prompt_variables"] = VARIABLES
    resp = await data.post(path, json=body, headers=headers)
    await resp.read()
    return int(resp.status)


async def usage(admin: Any, tenant: str, status: int = 200, **query: str) -> Any:
    resp = await admin.get(f"/admin/v1/tenants/{tenant}/usage", params=query, headers=ADMIN)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def ready(clients: Clients) -> None:
    _, admin, services = clients
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await put_tenant(admin, "acme", "enterprise")
    await put_tenant(admin, "globex", "free")
    await ready_for(services)


async def test_a_tenants_requests_tokens_and_cost_are_summed_by_prompt(
    clients: Clients, upstream: Any
) -> None:
    data, admin, _ = clients
    await ready(clients)
    upstream.post(CHAT_URL, payload=answer(1000, 200), repeat=True)
    for _ in range(3):
        assert await ask(data, "acme") == 200
    # Names no prompt: a plain pass-through, whose tenant is not looked up (nor counted).
    assert await ask(data, "acme", slug=None) == 200
    assert await ask(data, "globex") == 200

    found = await usage(admin, "acme")
    assert (found["tenant"], found["known"], found["tier"]) == ("acme", True, "enterprise")
    assert found["until"] - found["since"] >= 86_400
    by_prompt = {(p["slug"], p["variant"]): p for p in found["prompts"]}
    assert set(by_prompt) == {("support", None)}
    support = by_prompt[("support", None)]
    assert (support["requests"], support["errors"]) == (3, 0)
    assert (support["input_tokens"], support["output_tokens"]) == (3000, 600)
    # 3 x (1000 x 0.15 + 200 x 0.6) / 1e6
    assert support["cost_usd"] == pytest.approx(3 * 270 / 1e6)
    assert found["total"]["requests"] == 3
    assert found["total"]["input_tokens"] == 3000

    only = await usage(admin, "acme", slug="support")
    assert [p["slug"] for p in only["prompts"]] == ["support"]
    assert only["total"]["requests"] == 3
    assert (await usage(admin, "globex"))["total"]["requests"] == 1


async def test_unknown_callers_never_count_and_errors_do(clients: Clients, upstream: Any) -> None:
    data, admin, _ = clients
    await ready(clients)
    upstream.post(CHAT_URL, status=503, payload={"error": {"message": "down"}}, repeat=True)
    assert await ask(data, "acme") == 503
    assert await ask(data, "intruder") == 503  # served the base; never a row of its own
    assert await ask(data, None) == 503

    found = await usage(admin, "acme")
    assert (found["total"]["requests"], found["total"]["errors"]) == (1, 1)
    # A slug the registry does not serve: 404, and no row for the made-up slug.
    assert await ask(data, "acme", slug="no-such-prompt") == 404
    again = await usage(admin, "acme")
    assert [p["slug"] for p in again["prompts"]] == ["support"]
    assert again["total"]["requests"] == 1
    stranger = await usage(admin, "intruder")
    assert (stranger["known"], stranger["tier"], stranger["prompts"]) == (False, None, [])
    assert stranger["total"]["requests"] == 0


async def test_the_range_is_whole_minutes_and_bad_ranges_are_400(clients: Clients) -> None:
    _, admin, _ = clients
    found = await usage(admin, "acme", since="2h", until="1h")
    assert found["until"] - found["since"] in (3600, 3660)
    assert found["since"] % 60 == 0
    assert found["until"] % 60 == 0
    # Inverted: nothing summed, and the answer says so.
    empty = await usage(admin, "acme", since="1h", until="2h")
    assert empty["since"] == empty["until"]
    assert empty["total"]["requests"] == 0
    bad = await usage(admin, "acme", 400, until="")
    assert bad["error"]["param"] == "until"
    bad = await usage(admin, "acme", 400, until="yesterday")
    assert bad["error"]["param"] == "until"
    bad = await usage(admin, "acme", 400, slug="no/such")
    assert bad["error"]["param"] == "slug"
    # Older than usage.keep_days: what was summed is said, not pretended.
    old = await usage(admin, "acme", since="400d")
    assert old["until"] - old["since"] <= 35 * 86_400 + 60


async def test_the_cli_prints_a_tenants_usage(clients: Clients, upstream: Any) -> None:
    data, admin, _ = clients
    await ready(clients)
    upstream.post(CHAT_URL, payload=answer(10, 5), repeat=True)
    assert await ask(data, "acme") == 200
    result = await run_cli(admin, "tenants", "usage", "acme", "--since", "1h")
    assert result.exit_code == 0, result.output
    assert "tenant acme  tier enterprise" in result.output
    support = next(line for line in result.output.splitlines() if line.startswith("support"))
    assert support.split()[:6] == ["support", "default", "1", "0", "10", "5"]
    assert any(line.startswith("total") for line in result.output.splitlines())
    # --until alone: the day before it.
    earlier = await run_cli(admin, "tenants", "usage", "acme", "--until", "2d")
    assert earlier.exit_code == 0, earlier.output
    assert "no requests" in earlier.output
    stranger = await run_cli(admin, "tenants", "usage", "nobody")
    assert stranger.exit_code == 0
    assert "not a tenant the registry knows" in stranger.output
    assert "no requests" in stranger.output


async def test_usage_survives_a_restart_of_the_embedded_store(
    tmp_path: Path, upstream: Any
) -> None:
    settings = admin_settings(tmp_path, **{"metrics.prices": PRICES})
    async with proxy_clients(settings) as trio:
        await ready(trio)
        upstream.post(CHAT_URL, payload=answer(7, 3), repeat=True)
        assert await ask(trio[0], "acme") == 200
    # Closing flushed the last counts to the file beside the registry.
    assert (tmp_path / "registry.usage.db").exists()
    async with proxy_clients(settings) as trio:
        found = await usage(trio[1], "acme")
    assert found["total"]["input_tokens"] == 7


async def test_usage_off_is_a_clear_409(tmp_path: Path) -> None:
    async with proxy_clients(admin_settings(tmp_path, **{"usage.enabled": False})) as trio:
        found = await usage(trio[1], "acme", 409)
    assert found["error"]["code"] == "usage_disabled"
