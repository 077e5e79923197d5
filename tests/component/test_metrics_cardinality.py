"""10,000 distinct made-up models and prompt slugs through the proxy: /metrics stays small."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.prompt_key import PromptKey
from proxy.services import Services
from tests.component.test_registry_swap_in import SUPPORT, promote, push, ready_for
from tests.support import ADMIN, FAKE_UPSTREAM, make_settings, proxy_clients, upstream_mock

ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "x",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
#: 10,000 distinct values in all. Made-up models cost a (mocked) upstream call each, slugs
#: are refused at once, so most of them are slugs; both fold through the same allow-list
#: lookup.
MODELS = 2_000
SLUGS = 8_000

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret"},
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "shadow")},
            "logging.level": "WARNING",
        },
    )
    async with proxy_clients(settings) as trio:
        yield trio


async def series_count(admin: TestClient[Any, Any]) -> tuple[int, str]:
    text = await (await admin.get("/metrics")).text()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    return len(samples), text


@pytest.mark.timeout(120)
async def test_made_up_models_and_slugs_fold_into_other(clients: Clients) -> None:
    data, admin, _ = clients
    with upstream_mock() as mocked:
        mocked.post(
            re.compile(f"{re.escape(FAKE_UPSTREAM)}/chat/completions"), payload=ANSWER, repeat=True
        )

        async def model(i: int) -> None:
            body = {"model": f"made-up-model-{i}", "messages": [{"role": "user", "content": "hi"}]}
            resp = await data.post("/v1/chat/completions", json=body)
            assert resp.status == 200
            await resp.read()

        async def slug(i: int) -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            resp = await data.post(f"/p/no-such-prompt-{i}/v1/chat/completions", json=body)
            assert resp.status == 404
            await resp.read()

        await model(0)
        await slug(0)
        before, _ = await series_count(admin)
        for start in range(1, SLUGS, 250):
            batch = range(start, min(start + 250, SLUGS))
            await asyncio.gather(
                *(model(i) for i in batch if i < MODELS), *(slug(i) for i in batch)
            )
        after, text = await series_count(admin)

    assert after == before  # not one new series for 10,000 more distinct names
    assert "made-up-model" not in text
    assert "no-such-prompt" not in text
    assert 'model="other"' in text
    assert 'slug="other"' in text


#: Distinct models per kind (one a variant's pattern matches, one it does not) and tenants.
CALLERS = 250


@pytest.mark.timeout(120)
async def test_models_and_tenants_a_caller_makes_up_are_no_variant_or_tenant_label(
    clients: Clients,
) -> None:
    """The request's model picks the variant, so a caller chooses among the registry's
    variants only; its tenant id (known or not) is never a label."""
    data, admin, services = clients
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    resp = await admin.post(
        "/admin/v1/prompts/support/versions?variant=claude",
        json={**SUPPORT, "match": ["claude-*"]},
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    resp = await admin.post(
        "/admin/v1/prompts/support/promote?variant=claude",
        json={"version": 1, "reason": "test"},
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()
    resp = await admin.put("/admin/v1/tenants/acme", json={"tier": "enterprise"}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    await ready_for(services)
    # The registry's variant is a label value, so its answers keep a series of their own.
    assert services.metrics.variant_label(PromptKey("support", variant="claude")) == "claude"
    variables = {"customer_name": "Ada", "product": "pens"}

    async def ask(model: str, tenant: str) -> None:
        body = {"model": model, "messages": [], "prompt_variables": variables}
        resp = await data.post(
            "/p/support/v1/chat/completions", json=body, headers={"X-Tenant-Id": tenant}
        )
        assert resp.status == 200, await resp.text()
        await resp.read()

    with upstream_mock() as mocked:
        mocked.post(
            re.compile(f"{re.escape(FAKE_UPSTREAM)}/chat/completions"), payload=ANSWER, repeat=True
        )
        for tenant in ("acme", "who-0"):
            await ask("claude-made-up-0", tenant)
            await ask("made-up-0", tenant)
        before, _ = await series_count(admin)
        for start in range(1, CALLERS, 50):
            batch = range(start, min(start + 50, CALLERS))
            await asyncio.gather(
                *(ask(f"claude-made-up-{i}", "acme") for i in batch),
                *(ask(f"made-up-{i}", f"who-{i}") for i in batch),
            )
        after, text = await series_count(admin)

    assert after == before
    variants = set(re.findall(r'variant="([^"]*)"', text))
    assert "" in variants
    assert variants <= {"", "claude"}
    assert 'tier="enterprise"' in text
    assert "made-up" not in text
    assert "acme" not in text
    assert "who-" not in text
