"""The openai SDK through a canary and a shadow rollout: callers keep their arm (retries
included), the answer comes from the arm's version, and a shadowed call returns exactly
what it would have without the shadow while both answers land in one pair."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from tests.processes import ProxyProc, proxy

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def rollout_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    config = f"shadow:\n  sink:\n    dir: {procs_dir / 'e2e-pairs'}\n"
    with proxy(procs_dir, sim_url, config, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def admin(proc: ProxyProc) -> httpx.Client:
    return httpx.Client(base_url=f"{proc.admin_url}/admin/v1", headers=AUTH)


def revision(proc: ProxyProc) -> int:
    return int(httpx.get(f"{proc.admin_url}/readyz").json()["registry"]["revision"])


def seed(proc: ProxyProc, slug: str) -> None:
    known = revision(proc)
    with admin(proc) as client:
        for text in ("You are stable.", "You are the candidate."):
            created = client.post(f"/prompts/{slug}/versions", json={"template": text})
            assert created.status_code == 201, created.text
        assert client.post(f"/prompts/{slug}/promote", json={"version": 1}).status_code == 200
    until_served(proc, known + 3)


def until_served(proc: ProxyProc, wanted: int) -> None:
    """Wait until the proxy's snapshot has reached registry revision ``wanted``."""
    deadline = time.monotonic() + 5
    while revision(proc) < wanted:
        assert time.monotonic() < deadline, "the change never reached the snapshot"
        time.sleep(0.05)


def start(proc: ProxyProc, slug: str, body: dict[str, Any]) -> None:
    known = revision(proc)
    with admin(proc) as client:
        started = client.put(f"/prompts/{slug}/rollout", json=body)
        assert started.status_code == 201, started.text
    until_served(proc, known + 1)


def system_prompts(sim_url: str, limit: int) -> list[str]:
    seen = httpx.get(f"{sim_url.removesuffix('/v1')}/_sim/requests?limit={limit}").json()
    return [str(s["body"]["messages"][0]["content"]) for s in seen]


def test_sdk_through_a_canary(rollout_proxy: ProxyProc, sim_url: str) -> None:
    seed(rollout_proxy, "canary-e2e")
    start(
        rollout_proxy,
        "canary-e2e",
        {"candidate": 2, "mode": "canary", "percent": 50, "sticky": "user"},
    )
    root = rollout_proxy.url.removesuffix("/v1")
    client = openai.OpenAI(base_url=f"{root}/p/canary-e2e/v1", api_key="sk-test")
    seen: dict[str, set[str]] = {}
    for user in [f"u{i}" for i in range(30)] * 2:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user=user
        )
        assert raw.parse().choices[0].message.content
        arm = raw.headers["x-prompt-arm"]
        version = raw.headers["x-prompt-version"]
        assert (arm, version) in {("canary", "2"), ("stable", "1")}
        assert system_prompts(sim_url, 1)[0] == (
            "You are the candidate." if arm == "canary" else "You are stable."
        )
        seen.setdefault(user, set()).add(arm)
    assert all(len(arms) == 1 for arms in seen.values())  # sticky per user
    assert {next(iter(a)) for a in seen.values()} == {"canary", "stable"}

    # The SDK's retries land on the same arm: the 503 is answered twice, then a success.
    canary_user = next(u for u, arms in seen.items() if arms == {"canary"})
    retrying = openai.OpenAI(base_url=f"{root}/p/canary-e2e/v1", api_key="sk-test", max_retries=2)
    with pytest.raises(openai.InternalServerError):
        retrying.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            user=canary_user,
            extra_headers={"x-sim-status": "503"},
        )
    assert system_prompts(sim_url, 3) == ["You are the candidate."] * 3


def test_sdk_through_a_shadow(rollout_proxy: ProxyProc, sim_url: str) -> None:
    seed(rollout_proxy, "shadow-e2e")
    root = rollout_proxy.url.removesuffix("/v1")
    client = openai.OpenAI(base_url=f"{root}/p/shadow-e2e/v1", api_key="sk-test")
    question = [{"role": "user", "content": "what is shadow traffic?"}]
    before = client.chat.completions.create(model="gpt-4o-mini", messages=question)
    chunks_before = [
        c.model_dump_json()
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=question, stream=True)
    ]
    start(
        rollout_proxy,
        "shadow-e2e",
        {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"},
    )
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=question)
    after = raw.parse()
    assert raw.headers["x-prompt-arm"] == "stable"
    assert after.model_dump() == before.model_dump()  # the caller sees no difference
    chunks_after = [
        c.model_dump_json()
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=question, stream=True)
    ]
    assert chunks_after == chunks_before

    request_id = raw.headers["x-promptproxy-request-id"]
    deadline = time.monotonic() + 10
    while True:
        lines = httpx.get(
            f"{rollout_proxy.admin_url}/admin/v1/prompts/shadow-e2e/shadow/pairs",
            params={"since": "10m"},
            headers=AUTH,
        ).content.splitlines()
        # Candidate pairs only: a share of shadowed requests also re-runs stable (noise pairs).
        pairs = [orjson.loads(line) for line in lines if line.strip()]
        pairs = [p for p in pairs if p["kind"] == "candidate"]
        mine = [p for p in pairs if p["request_id"] == request_id]
        if mine and len(pairs) >= 2:
            break
        assert time.monotonic() < deadline, "the pair never reached the sink"
        time.sleep(0.1)
    (pair,) = mine
    assert (pair["primary"]["version"], pair["shadow"]["version"]) == (1, 2)
    assert pair["primary"]["text"] == after.choices[0].message.content
    assert pair["shadow"]["text"]
    streamed = [p for p in pairs if p["stream"]]
    assert streamed
    assert streamed[0]["shadow"]["ttft_ms"] is not None
