"""The openai SDK through prompt swap-in: by base URL and by header; the provider gets the
rendered prompt, the client gets the version headers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.processes import ProxyProc, proxy

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin"


@pytest.fixture(scope="module")
def prompt_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        admin = httpx.Client(
            base_url=f"{proc.admin_url}/admin/v1", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        created = admin.post(
            "/prompts/greeter/versions",
            json={
                "template": "Greet {{ name }} in {{ language }}.",
                "variables": [
                    {"name": "name", "type": "string"},
                    {"name": "language", "type": "string", "default": "English"},
                ],
            },
        )
        assert created.status_code == 201, created.text
        assert admin.post("/prompts/greeter/promote", json={"version": 1}).status_code == 200
        deadline = time.monotonic() + 5  # the snapshot refresher picks changes up in ~0.25 s
        while httpx.get(f"{proc.admin_url}/readyz").json()["registry"]["prompts"] != 1:
            assert time.monotonic() < deadline, "the promoted prompt never reached the snapshot"
            time.sleep(0.05)
        yield proc


def last_system_prompt(sim_url: str) -> str:
    (seen,) = httpx.get(f"{sim_url.removesuffix('/v1')}/_sim/requests?limit=1").json()
    return str(seen["body"]["messages"][0]["content"])


@pytest.mark.parametrize("how", ["base_url", "header"])
def test_sdk_swap_in(prompt_proxy: ProxyProc, sim_url: str, how: str) -> None:
    root = prompt_proxy.url.removesuffix("/v1")
    if how == "base_url":
        client = openai.OpenAI(base_url=f"{root}/p/greeter/v1", api_key="sk-test")
    else:
        client = openai.OpenAI(
            base_url=prompt_proxy.url,
            api_key="sk-test",
            default_headers={"X-Prompt-Slug": "greeter"},
        )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "hi"}],
        extra_body={"prompt_variables": {"name": "Ada", "language": "French"}},
    )
    assert raw.parse().choices[0].message.content
    assert (
        raw.headers["x-prompt-slug"],
        raw.headers["x-prompt-version"],
        raw.headers["x-prompt-arm"],
    ) == ("greeter", "1", "stable")
    assert last_system_prompt(sim_url) == "Greet Ada in French."

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"prompt_variables": {"name": "Bo"}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert last_system_prompt(sim_url) == "Greet Bo in English."


def test_sdk_sees_a_missing_variable_as_bad_request(prompt_proxy: ProxyProc) -> None:
    root = prompt_proxy.url.removesuffix("/v1")
    client = openai.OpenAI(base_url=f"{root}/p/greeter/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.param == "prompt_variables.name"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url=f"{root}/p/nobody/v1", api_key="x", max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[])
