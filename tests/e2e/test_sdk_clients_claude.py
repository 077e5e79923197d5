"""openai-python, openai-node and the anthropic SDK against a Claude model through
promptproxy processes: a
simulator process for each provider (each wanting its own key), a proxy process routing
`claude-*` to Anthropic's Messages API by the native translation. The node test installs
the pinned `openai` package (tests/e2e/node/package-lock.json) with `npm ci` into a
temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.processes import ProxyProc, proxy, simulator

pytestmark = pytest.mark.e2e

CLAUDE = "claude-sonnet-4-5-20250929"
ANTHROPIC_KEY = "sk-ant-provider"
OPENAI_KEY = "sk-openai-provider"
NODE_PROJECT = Path(__file__).parent / "node"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You answer in one short paragraph about the weather."},
    {"role": "user", "content": "What is the weather like in Lisbon?"},
]
#: An npm install fetches from the registry: bounded, but generous for a cold cache.
NPM_TIMEOUT = 300
NODE_TIMEOUT = 120


class Routed:
    def __init__(self, proc: ProxyProc, anthropic_url: str) -> None:
        self.proc = proc
        self.anthropic_url = anthropic_url

    def messages_seen(self) -> int:
        with urllib.request.urlopen(f"{self.anthropic_url}/_sim/requests") as resp:
            entries = json.load(resp)
        return sum(1 for entry in entries if entry["path"] == "/v1/messages")

    def forget(self) -> None:
        request = urllib.request.Request(f"{self.anthropic_url}/_sim/requests", method="DELETE")
        urllib.request.urlopen(request).close()


@pytest.fixture(scope="module")
def routed(procs_dir: Path) -> Iterator[Routed]:
    with (
        simulator(procs_dir, "--api-key", OPENAI_KEY) as (openai_url, _),
        simulator(procs_dir, "--api-key", ANTHROPIC_KEY, "--chunks", "4") as (claude_url, _),
    ):
        anthropic_url = claude_url.removesuffix("/v1")
        config = f"""
providers:
  - name: openai
    kind: openai
    base_url: {openai_url}
    api_key_env: E2E_OPENAI_KEY
    models: ["gpt-*"]
  - name: anthropic
    kind: anthropic
    base_url: {anthropic_url}
    api_key_env: E2E_ANTHROPIC_KEY
    models: ["claude-*"]
"""
        env = {"E2E_OPENAI_KEY": OPENAI_KEY, "E2E_ANTHROPIC_KEY": ANTHROPIC_KEY}
        with proxy(procs_dir, None, config, env=env) as proc:
            yield Routed(proc, anthropic_url)


def test_openai_python(routed: Routed) -> None:
    client = openai.OpenAI(base_url=routed.proc.url, api_key="sk-callers-own", max_retries=0)
    whole = client.chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model=CLAUDE,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model=CLAUDE, messages=MESSAGES, extra_headers={"x-sim-status": "529"}
        )
    assert (raised.value.status_code, raised.value.code) == (503, "overloaded_error")
    routed.forget()
    retrying = client.with_options(max_retries=2)
    with pytest.raises(openai.RateLimitError):
        retrying.chat.completions.create(
            model=CLAUDE,
            messages=MESSAGES,
            extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "10"},
        )
    assert routed.messages_seen() == 3


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned openai-node, installed into a temporary folder with the test's script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed (README: what the tests need)")
    folder = tmp_path_factory.mktemp("openai-node")
    for name in ("package.json", "package-lock.json", "claude.mjs"):
        shutil.copy(NODE_PROJECT / name, folder / name)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        check=True,
        timeout=NPM_TIMEOUT,
        capture_output=True,
    )
    return folder


def test_openai_node(routed: Routed, node_client: Path) -> None:
    routed.forget()
    run = subprocess.run(
        ["node", "claude.mjs", routed.proc.url, CLAUDE],
        cwd=node_client,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)

    assert seen["whole"]["text"]
    assert (seen["whole"]["finish"], seen["whole"]["model"]) == ("stop", CLAUDE)
    assert seen["stream"]["text"] == seen["whole"]["text"]
    assert seen["stream"]["usage"] == seen["whole"]["usage"]

    calls = seen["tools"]["calls"]
    assert [calls[i]["name"] for i in ("0", "1")] == ["get_weather", "get_time"]
    assert isinstance(json.loads(calls["0"]["arguments"])["city"], str)
    assert isinstance(json.loads(calls["1"]["arguments"]), dict)
    assert seen["tools"]["finish"] == "tool_calls"

    assert seen["errors"] == {
        "400": ["BadRequestError", 400, "invalid_request_error"],
        "401": ["AuthenticationError", 401, "authentication_error"],
        "403": ["PermissionDeniedError", 403, "permission_error"],
        "404": ["NotFoundError", 404, "not_found_error"],
        "429": ["RateLimitError", 429, "rate_limit_error"],
        "500": ["InternalServerError", 500, "api_error"],
        "529": ["InternalServerError", 503, "overloaded_error"],
    }
    assert seen["retried"] == {"429": "RateLimitError", "529": "InternalServerError"}
    # 7 error calls once each, 2 retried calls three times each, and 4 answered calls.
    assert routed.messages_seen() == 7 + 2 * 3 + 4
    name, message = seen["streamError"]
    assert name == "APIError"
    assert "overloaded" in message.lower()


def test_anthropic_python(routed: Routed) -> None:
    routed.forget()
    client = anthropic.Anthropic(
        base_url=routed.proc.url.removesuffix("/v1"), api_key="sk-ant-callers-own", max_retries=0
    )
    message = client.messages.create(model=CLAUDE, max_tokens=100, messages=MESSAGES[1:])
    assert message.stop_reason == "end_turn"
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=MESSAGES[1:]) as stream:
        assert stream.get_final_text() == "".join(
            block.text for block in message.content if block.type == "text"
        )
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(
            model=CLAUDE,
            max_tokens=100,
            messages=MESSAGES[1:],
            extra_headers={"x-sim-status": "529"},
        )
    assert routed.messages_seen() == 3
