"""Reliability row C2: the openai SDK with ``max_retries=2`` against a canary; the provider
answers the first two attempts of every call with 503, and every attempt of one call
(``x-stainless-retry-count`` 0, 1, 2) lands on the same arm, for many sticky keys of each
kind.

The 503s come from the simulator (``x-sim-status``); an httpx event hook asks for them on
the attempts whose ``x-stainless-retry-count`` is below 2, so the third attempt succeeds.
The proxy sees nothing of that beyond the headers it forwards. The arm of every attempt is
read three ways: the proxy's ``x-prompt-arm`` response header, the proxy's access log line
for that request id, and the prompt the simulator received (the candidate's text or
stable's, as the system message or the Responses API's ``instructions``).
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

from proxy.pipeline.choose import bucket
from proxy.prompt_key import PromptKey
from tests.processes import ADMIN_HEADERS, ProxyProc, proxy_with_token

pytestmark = pytest.mark.integration

KEYS = 24
FAILED_ATTEMPTS = 2  # answered 503; the SDK's max_retries=2 then makes the third succeed
PROMPTS = {"stable": "You are stable.", "canary": "You are the candidate."}
CALL_HEADER = "x-test-call"


@pytest.fixture(scope="module")
def canary_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy_with_token(procs_dir, sim_url) as proc:
        yield proc


def revision(proc: ProxyProc) -> int:
    return int(httpx.get(f"{proc.admin_url}/readyz").json()["registry"]["revision"])


def until_served(proc: ProxyProc, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while revision(proc) < wanted:
        assert time.monotonic() < deadline, "setup: the change never reached the snapshot"
        time.sleep(0.02)


def start_canary(proc: ProxyProc, slug: str, sticky: str) -> str:
    """A 50 % canary of v2 over v1; returns the rollout id."""
    known = revision(proc)
    with httpx.Client(base_url=f"{proc.admin_url}/admin/v1", headers=ADMIN_HEADERS) as admin:
        for text in (PROMPTS["stable"], PROMPTS["canary"]):
            created = admin.post(f"/prompts/{slug}/versions", json={"template": text})
            assert created.status_code == 201, created.text
        assert admin.post(f"/prompts/{slug}/promote", json={"version": 1}).status_code == 200
        rollout = {"candidate": 2, "mode": "canary", "percent": 50, "sticky": sticky}
        started = admin.put(f"/prompts/{slug}/rollout", json=rollout)
        assert started.status_code == 201, started.text
    until_served(proc, known + 4)
    return str(started.json()["id"])


class Attempts:
    """The event hooks: inject the 503s and record what each attempt got from the proxy."""

    def __init__(self, fault: str = "503") -> None:
        self.fault = fault
        self.seen: dict[str, list[tuple[int, int, str | None]]] = defaultdict(list)
        self.request_ids: dict[str, list[str]] = defaultdict(list)

    def client(self, proc: ProxyProc, slug: str) -> openai.OpenAI:
        """An SDK client on ``slug``'s prompt URL (``max_retries=2``) that runs these hooks."""
        http_client = openai.DefaultHttpxClient(
            event_hooks={"request": [self.on_request], "response": [self.on_response]}
        )
        root = proc.url.removesuffix("/v1")
        return openai.OpenAI(
            base_url=f"{root}/p/{slug}/v1",
            api_key="sk-test",
            max_retries=2,
            http_client=http_client,
        )

    def on_request(self, request: httpx.Request) -> None:
        if int(request.headers["x-stainless-retry-count"]) >= FAILED_ATTEMPTS:
            return
        if self.fault == "drop":
            # The provider drops the connection: the proxy itself answers 502.
            request.headers["x-sim-fault"] = "drop"
        else:
            request.headers["x-sim-status"] = self.fault
            # Retried after 1 ms (the SDK honours retry-after-ms) instead of its backoff.
            request.headers["x-sim-retry-after-ms"] = "1"

    def on_response(self, response: httpx.Response) -> None:
        request = response.request
        self.request_ids[request.headers[CALL_HEADER]].append(
            response.headers["x-promptproxy-request-id"]
        )
        self.seen[request.headers[CALL_HEADER]].append(
            (
                int(request.headers["x-stainless-retry-count"]),
                response.status_code,
                response.headers.get("x-prompt-arm"),
            )
        )


def key_options(carrier: str, key: str) -> dict[str, Any]:
    """How a call carries its sticky key (the API key is set on the client instead)."""
    if carrier in ("user", "safety_identifier"):
        return {carrier: key}
    if carrier == "api-key":
        return {}
    return {"extra_headers": {carrier: key}}


def simulator_arms(sim_url: str, limit: int) -> dict[str, list[tuple[int, str]]]:
    """(retry count, arm by the system prompt received) per call, from the simulator's log."""
    seen = httpx.get(f"{sim_url.removesuffix('/v1')}/_sim/requests?limit={limit}").json()
    arms = {text: arm for arm, text in PROMPTS.items()}
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for entry in seen:
        headers, body = entry["headers"], entry["body"]
        if CALL_HEADER in headers:
            prompt = body["instructions"] if "input" in body else body["messages"][0]["content"]
            out[headers[CALL_HEADER]].append(
                (int(headers["x-stainless-retry-count"]), arms.get(prompt, "unknown"))
            )
    return out


def logged_arms(proc: ProxyProc, request_ids: set[str]) -> dict[str, object]:
    """The arm of each request id in the proxy's access log (written off the loop, so
    polled until every id is there)."""
    deadline = time.monotonic() + 10
    while True:
        lines = {line["request_id"]: line for line in proc.access_lines()}
        if request_ids <= lines.keys():
            return {rid: lines[rid]["arm"] for rid in request_ids}
        assert time.monotonic() < deadline, "access log lines missing"
        time.sleep(0.05)


def call(
    client: openai.OpenAI, api: str, n: int, options: dict[str, Any], *, streams: bool = True
) -> str:
    """One logical call, half of them streamed if ``streams`` (a 503 before any event is
    retried too); returns the arm the successful attempt answered from."""
    stream = streams and n % 2 == 1
    if api == "responses":
        raw: Any = client.responses.with_raw_response.create(
            model="gpt-4o-mini", input=f"question {n}", stream=stream, **options
        )
        if stream:
            assert any(e.type == "response.completed" for e in raw.parse())
        else:
            assert raw.parse().output_text
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"question {n}"}],
            stream=stream,
            **options,
        )
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            assert raw.parse().choices[0].message.content
    return str(raw.headers["x-prompt-arm"])


@pytest.mark.parametrize(
    ("api", "sticky", "carrier"),
    [
        ("chat", "user", "user"),
        ("chat", "header:x-user-id", "x-user-id"),
        ("chat", "tenant", "x-tenant-id"),
        # No tenant header: the key is a digest of the caller's Authorization.
        ("chat", "tenant", "api-key"),
        ("responses", "user", "safety_identifier"),
        ("responses", "header:x-user-id", "x-user-id"),
    ],
)
def test_every_sdk_retry_lands_on_the_arm_of_the_first_attempt(
    canary_proxy: ProxyProc, sim_url: str, api: str, sticky: str, carrier: str
) -> None:
    slug = f"retries-{api}-{sticky.replace(':', '-')}-{carrier}"
    start_canary(canary_proxy, slug, sticky)
    attempts = Attempts()
    client = attempts.client(canary_proxy, slug)
    answered: dict[str, str] = {}
    with client:
        for n in range(KEYS):
            name = f"{slug}-call-{n}"
            options = key_options(carrier, f"key-{n}")
            options.setdefault("extra_headers", {})[CALL_HEADER] = name
            caller = client.with_options(api_key=f"sk-key-{n}") if carrier == "api-key" else client
            answered[name] = call(caller, api, n, options)

    assert set(answered.values()) == {"canary", "stable"}, "both arms must be exercised"
    upstream = simulator_arms(sim_url, KEYS * (FAILED_ATTEMPTS + 1) + 10)
    for name, arm in answered.items():
        expected = [(retry, 503, arm) for retry in range(FAILED_ATTEMPTS)]
        assert attempts.seen[name] == [*expected, (FAILED_ATTEMPTS, 200, arm)], name
        assert sorted(upstream[name]) == [(r, arm) for r in range(FAILED_ATTEMPTS + 1)], name
    ids = {rid for rids in attempts.request_ids.values() for rid in rids}
    logged = logged_arms(canary_proxy, ids)
    for name, arm in answered.items():
        assert [logged[rid] for rid in attempts.request_ids[name]] == [arm] * 3, name


def test_retries_after_failures_the_proxy_reports_itself_keep_the_arm(
    canary_proxy: ProxyProc, sim_url: str
) -> None:
    """The provider drops the connection on the first two attempts, so the proxy answers
    502 itself (no ``x-prompt-arm`` on those: the error middleware builds them); the SDK
    retries, and the simulator and the access log show all three attempts on one arm."""
    slug = "retries-dropped"
    rollout_id = start_canary(canary_proxy, slug, "header:x-user-id")
    # The SDK's own backoff applies here (no retry-after on the proxy's 502, about 1.3 s per
    # call), so fewer calls, with keys chosen to cover both arms.
    canary = [
        k for k in (f"key-{n}" for n in range(100)) if bucket(PromptKey(slug), rollout_id, k) < 5000
    ]
    stable = [
        k
        for k in (f"key-{n}" for n in range(100))
        if bucket(PromptKey(slug), rollout_id, k) >= 5000
    ]
    keys = canary[:4] + stable[:4]
    attempts = Attempts(fault="drop")
    client = attempts.client(canary_proxy, slug)
    answered: dict[str, str] = {}
    with client:
        for n, key in enumerate(keys):
            name = f"{slug}-call-{n}"
            options = {"extra_headers": {"x-user-id": key, CALL_HEADER: name}}
            # Streams are left out: a dropped stream has already answered 200 and is not retried.
            answered[name] = call(client, "chat", n, options, streams=False)

    assert list(answered.values()) == ["canary"] * 4 + ["stable"] * 4
    upstream = simulator_arms(sim_url, len(keys) * (FAILED_ATTEMPTS + 1) + 10)
    ids = {rid for rids in attempts.request_ids.values() for rid in rids}
    logged = logged_arms(canary_proxy, ids)
    for name, arm in answered.items():
        statuses = [status for _, status, _ in attempts.seen[name]]
        assert statuses == [502] * FAILED_ATTEMPTS + [200], name
        assert sorted(upstream[name]) == [(r, arm) for r in range(FAILED_ATTEMPTS + 1)], name
        assert [logged[rid] for rid in attempts.request_ids[name]] == [arm] * 3, name
