"""Reliability row C2: the openai SDK with ``max_retries=2`` against a canary; the provider
answers the first two attempts of every call with 503, and every attempt of one call
(``x-stainless-retry-count`` 0, 1, 2) lands on the same arm, for many sticky keys of each
kind.

The 503s come from the simulator (``x-sim-status``); an httpx event hook asks for them on
the attempts whose ``x-stainless-retry-count`` is below 2, so the third attempt succeeds.
The proxy sees nothing of that beyond the headers it forwards. The arm of every attempt is
read on both sides: the proxy's ``x-prompt-arm`` response header, and the system prompt the
simulator received (the candidate's text or stable's).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.processes import ProxyProc, proxy

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = 24
FAILED_ATTEMPTS = 2  # answered 503; the SDK's max_retries=2 then makes the third succeed
PROMPTS = {"stable": "You are stable.", "canary": "You are the candidate."}
CALL_HEADER = "x-test-call"


@pytest.fixture(scope="module")
def canary_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def revision(proc: ProxyProc) -> int:
    return int(httpx.get(f"{proc.admin_url}/readyz").json()["registry"]["revision"])


def until_served(proc: ProxyProc, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while revision(proc) < wanted:
        assert time.monotonic() < deadline, "setup: the change never reached the snapshot"
        time.sleep(0.02)


def start_canary(proc: ProxyProc, slug: str, sticky: str) -> None:
    known = revision(proc)
    with httpx.Client(base_url=f"{proc.admin_url}/admin/v1", headers=AUTH) as admin:
        for text in (PROMPTS["stable"], PROMPTS["canary"]):
            created = admin.post(f"/prompts/{slug}/versions", json={"template": text})
            assert created.status_code == 201, created.text
        assert admin.post(f"/prompts/{slug}/promote", json={"version": 1}).status_code == 200
        rollout = {"candidate": 2, "mode": "canary", "percent": 50, "sticky": sticky}
        started = admin.put(f"/prompts/{slug}/rollout", json=rollout)
        assert started.status_code == 201, started.text
    until_served(proc, known + 4)


class Attempts:
    """The event hooks: inject the 503s and record what each attempt got from the proxy."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, int, str | None]]] = defaultdict(list)

    def on_request(self, request: httpx.Request) -> None:
        if int(request.headers["x-stainless-retry-count"]) < FAILED_ATTEMPTS:
            request.headers["x-sim-status"] = "503"
            # Retried after 1 ms (the SDK honours retry-after-ms) instead of its backoff.
            request.headers["x-sim-retry-after-ms"] = "1"

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        self.seen[request.headers[CALL_HEADER]].append(
            (
                int(request.headers["x-stainless-retry-count"]),
                response.status_code,
                response.headers.get("x-prompt-arm"),
            )
        )


def key_options(carrier: str, key: str) -> dict[str, Any]:
    """How a call carries its sticky key (the API key is set on the client instead)."""
    if carrier == "user":
        return {"user": key}
    if carrier == "api-key":
        return {}
    return {"extra_headers": {carrier: key}}


def simulator_arms(sim_url: str, limit: int) -> dict[str, list[tuple[int, str]]]:
    """(retry count, arm by the system prompt received) per call, from the simulator's log."""
    seen = httpx.get(f"{sim_url.removesuffix('/v1')}/_sim/requests?limit={limit}").json()
    arms = {text: arm for arm, text in PROMPTS.items()}
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for entry in seen:
        headers = entry["headers"]
        if CALL_HEADER in headers:
            out[headers[CALL_HEADER]].append(
                (
                    int(headers["x-stainless-retry-count"]),
                    arms.get(entry["body"]["messages"][0]["content"], "unknown"),
                )
            )
    return out


@pytest.mark.parametrize(
    ("sticky", "carrier"),
    [
        ("user", "user"),
        ("header:x-user-id", "x-user-id"),
        ("tenant", "x-tenant-id"),
        # No tenant header: the key is a digest of the caller's Authorization.
        ("tenant", "api-key"),
    ],
)
def test_every_sdk_retry_lands_on_the_arm_of_the_first_attempt(
    canary_proxy: ProxyProc, sim_url: str, sticky: str, carrier: str
) -> None:
    slug = f"retries-{sticky.replace(':', '-')}-{carrier}"
    start_canary(canary_proxy, slug, sticky)
    attempts = Attempts()
    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [attempts.on_request], "response": [attempts.on_response]}
    )
    root = canary_proxy.url.removesuffix("/v1")
    client = openai.OpenAI(
        base_url=f"{root}/p/{slug}/v1", api_key="sk-test", max_retries=2, http_client=http_client
    )
    answered: dict[str, str] = {}
    with client:
        for n in range(KEYS):
            call = f"{slug}-call-{n}"
            options = key_options(carrier, f"key-{n}")
            options.setdefault("extra_headers", {})[CALL_HEADER] = call
            caller = client.with_options(api_key=f"sk-key-{n}") if carrier == "api-key" else client
            messages = [{"role": "user", "content": f"question {n}"}]
            if n % 2:  # half of the calls streamed: a 503 before any event is retried too
                raw = caller.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=messages, stream=True, **options
                )
                assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                raw = caller.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=messages, **options
                )
                assert raw.parse().choices[0].message.content
            answered[call] = raw.headers["x-prompt-arm"]

    assert set(answered.values()) == {"canary", "stable"}, "both arms must be exercised"
    upstream = simulator_arms(sim_url, KEYS * (FAILED_ATTEMPTS + 1) + 10)
    for call, arm in answered.items():
        expected = [(retry, 503, arm) for retry in range(FAILED_ATTEMPTS)]
        assert attempts.seen[call] == [*expected, (FAILED_ATTEMPTS, 200, arm)], call
        assert sorted(upstream[call]) == [(r, arm) for r in range(FAILED_ATTEMPTS + 1)], call
