"""A body nested deeper than the JSON encoder goes: a 400 the caller can act on, not a 500
(orjson reads 1024 levels but writes 254, and a swapped-in prompt re-encodes the body)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.component.test_access_log_prompt import ANSWER, CHAT_URL
from tests.component.test_rollouts import CHAT, refreshed, seed
from tests.support import Clients, upstream_mock


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        mocked.post(CHAT_URL, payload=ANSWER, repeat=True)
        yield mocked


async def test_a_body_nested_past_the_encoder_is_a_400_not_a_500(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await seed(admin)
    await refreshed(services)
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    body = {**CHAT, "metadata_blob": deep}
    resp = await data.post("/p/support/v1/chat/completions", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "body_too_deep"
