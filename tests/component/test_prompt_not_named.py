"""Prompt naming mistakes on the data plane: clear 4xx answers, never forwarded or a 500."""

from __future__ import annotations

from typing import Any

from tests.support import FAKE_UPSTREAM, proxy_clients, upstream_mock


async def test_prompt_variables_without_a_prompt_are_a_400_and_never_forwarded() -> None:
    body = {"model": "m", "messages": [], "prompt_variables": {"customer_name": "Ada"}}
    with upstream_mock() as upstream:
        upstream.post(f"{FAKE_UPSTREAM}/chat/completions", payload={"id": "x"}, repeat=True)
        async with proxy_clients() as (data, _, _):
            resp = await data.post("/v1/chat/completions", json=body)
            assert resp.status == 400
            error: dict[str, Any] = (await resp.json())["error"]
        assert not upstream.requests
    assert (error["type"], error["param"]) == ("invalid_request_error", "prompt_variables")
    assert error["code"] == "prompt_not_named"
    assert "/p/{slug}/v1" in error["message"]
    assert "X-Prompt-Slug" in error["message"]


async def test_a_non_ascii_digit_version_pin_is_refused_not_a_500() -> None:
    body = {"model": "m", "messages": []}
    async with proxy_clients() as (data, _, _):
        resp = await data.post(
            "/v1/chat/completions",
            json=body,
            headers={"X-Prompt-Slug": "support", "X-Prompt-Version": "²"},  # '²'.isdigit()
        )
        assert resp.status == 404, await resp.text()
        assert (await resp.json())["error"]["param"] == "x-prompt-version"
