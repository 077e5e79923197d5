"""10,000 distinct made-up models and prompt slugs through the proxy: /metrics stays small."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.services import Services
from tests.support import FAKE_UPSTREAM, make_settings, proxy_clients, upstream_mock

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
