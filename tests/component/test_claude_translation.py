"""Chat completions to a Claude model, through the proxy, to Anthropic's Messages API and
back: the real openai SDK as the client, the simulator's Messages face as the provider (it
validates requests as the API does and wants its key as ``x-api-key``), everything on
127.0.0.1. The simulator's record of what it received shows the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest

from proxy.config import load_config
from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, VariableSpec, VersionDraft
from proxy.services import Services
from proxy.simulator import SimulatorSettings, start_simulator
from tests.component.test_registry_swap_in import ready_for
from tests.component.test_shadow_admin import recorded
from tests.support import proxy_clients

pytestmark = pytest.mark.timeout(20)

CLAUDE = "claude-3-5-sonnet-20241022"
ANTHROPIC_KEY = "sk-ant-provider"
OPENAI_KEY = "sk-openai-provider"
SYSTEM = "You answer in one short paragraph about the weather."
MESSAGES: list[Any] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the weather like in Lisbon?"},
]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


class Sims:
    def __init__(self, openai_url: str, anthropic_url: str) -> None:
        self.openai = openai_url
        self.anthropic = anthropic_url

    async def seen(self) -> list[dict[str, Any]]:
        """What the Anthropic simulator received, oldest first (its own log)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.anthropic}/_sim/requests") as resp,
        ):
            entries: list[dict[str, Any]] = await resp.json()
        return [e for e in entries if e["path"].startswith("/v1/")]


@asynccontextmanager
async def running_sims() -> AsyncIterator[Sims]:
    """An OpenAI simulator and an Anthropic one, each wanting its own key."""
    gpt, gpt_port = await start_simulator("127.0.0.1", 0, SimulatorSettings(api_key=OPENAI_KEY))
    claude, claude_port = await start_simulator(
        "127.0.0.1", 0, SimulatorSettings(api_key=ANTHROPIC_KEY, chunks=4)
    )
    try:
        yield Sims(f"http://127.0.0.1:{gpt_port}/v1", f"http://127.0.0.1:{claude_port}")
    finally:
        await claude.cleanup()
        await gpt.cleanup()


def settings(tmp_path: Path, sims: Sims) -> Any:
    return load_config(
        None,
        environ={"OPENAI_KEY": OPENAI_KEY, "ANTHROPIC_KEY": ANTHROPIC_KEY},
        overrides={
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
            "shadow.noise_share": 0.0,
            "providers": [
                {
                    "name": "openai",
                    "kind": "openai",
                    "base_url": sims.openai,
                    "api_key_env": "OPENAI_KEY",
                    "models": ["gpt-*"],
                },
                {
                    "name": "anthropic",
                    "kind": "anthropic",
                    "base_url": sims.anthropic,
                    "api_key_env": "ANTHROPIC_KEY",
                    "models": ["claude-*"],
                    "default_max_tokens": 1000,
                },
            ],
        },
    )


class Proxy:
    def __init__(self, url: str, admin: TestClient[Any, Any], services: Services) -> None:
        self.url = url
        self.admin = admin
        self.services = services

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        params: dict[str, Any] = {
            "base_url": self.url,
            "api_key": "sk-callers-own",
            "max_retries": 0,
            "timeout": 10,
        }
        return openai.AsyncOpenAI(**{**params, **kwargs})


@asynccontextmanager
async def running_proxy(tmp_path: Path, sims: Sims) -> AsyncIterator[Proxy]:
    """The proxy in-process, routing `gpt-*` and `claude-*` to ``sims``."""
    async with proxy_clients(settings(tmp_path, sims)) as (data, admin, services):
        yield Proxy(str(data.make_url("/v1")), admin, services)


@pytest.fixture
async def sims() -> AsyncIterator[Sims]:
    async with running_sims() as started:
        yield started


@pytest.fixture
async def proxy(tmp_path: Path, sims: Sims) -> AsyncIterator[Proxy]:
    async with running_proxy(tmp_path, sims) as started:
        yield started


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    async with proxy.client() as sdk:
        yield sdk


async def direct_text(sims: Sims, body: dict[str, Any]) -> str:
    """What the simulator's Messages face answers for ``body`` sent to it directly."""
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sims.anthropic}/v1/messages", json=body, headers=headers) as resp,
    ):
        message = await resp.json()
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


async def test_a_claude_model_is_answered_through_the_messages_api(
    client: openai.AsyncOpenAI, sims: Sims
) -> None:
    answer = await client.chat.completions.create(
        model=CLAUDE, messages=MESSAGES, temperature=0.2, user="u-42"
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert answer.model == CLAUDE
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + (
        answer.usage.completion_tokens
    )

    [sent] = await sims.seen()
    assert sent["path"] == "/v1/messages"
    headers = sent["headers"]
    # The provider's key as Anthropic reads it; the caller's own key never travels.
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert sent["body"] == {
        "model": CLAUDE,
        "max_tokens": 1000,  # the provider's default: the request named none
        "system": [{"type": "text", "text": SYSTEM}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the weather like in Lisbon?"}],
            }
        ],
        "temperature": 0.2,
        "metadata": {"user_id": "u-42"},
    }
    # The answer is the provider's, word for word.
    assert choice.message.content == await direct_text(sims, sent["body"])


def output_tokens_counted(services: Services) -> float:
    metrics = generate_latest(services.metrics.registry).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("promptproxy_tokens_total{")
        and 'provider="anthropic"' in line
        and 'direction="output"' in line
    )


async def test_a_stream_carries_the_same_answer_and_the_usage_asked_for(
    proxy: Proxy, client: openai.AsyncOpenAI
) -> None:
    whole = await client.chat.completions.create(model=CLAUDE, messages=MESSAGES)
    stream = await client.chat.completions.create(
        model=CLAUDE, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert whole.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    # Without the option, no usage chunk (as OpenAI streams).
    counted = output_tokens_counted(proxy.services)
    plain = await client.chat.completions.create(model=CLAUDE, messages=MESSAGES, stream=True)
    assert all(c.usage is None and c.choices for c in [c async for c in plain])
    # ...but the proxy counts its tokens all the same.
    assert output_tokens_counted(proxy.services) == counted + last.usage.completion_tokens


async def test_two_parallel_tool_calls_stream_their_arguments(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=CLAUDE,
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice="required",
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    async for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"name": "", "arguments": "", "id": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] += call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    assert all(calls[i]["id"] for i in (0, 1))
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)
    assert isinstance(json.loads(calls[1]["arguments"]), dict)
    assert [r for r in reasons if r] == ["tool_calls"]

    # The same call unstreamed gives the same calls.
    whole = await client.chat.completions.create(
        model=CLAUDE, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required"
    )
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls"
    assert [
        (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()
    ] == [  # type: ignore[union-attr]
        (calls[i]["name"], json.loads(calls[i]["arguments"])) for i in (0, 1)
    ]


async def test_a_tool_result_round_trip_reaches_claude_as_tool_use_and_tool_result(
    client: openai.AsyncOpenAI, sims: Sims
) -> None:
    first = await client.chat.completions.create(
        model=CLAUDE, messages=MESSAGES, tools=[WEATHER], tool_choice="required"
    )
    message = first.choices[0].message
    [call] = message.tool_calls or []
    history: list[Any] = [
        *MESSAGES,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    second = await client.chat.completions.create(model=CLAUDE, messages=history, tools=[WEATHER])
    assert second.choices[0].message.content
    sent = (await sims.seen())[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][-1]["type"] == "tool_use"
    assert sent[1]["content"][-1]["id"] == call.id
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}
    ]


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "authentication_error"),
        (403, openai.PermissionDeniedError, "permission_error"),
        (404, openai.NotFoundError, "not_found_error"),
        (429, openai.RateLimitError, "rate_limit_error"),
        (500, openai.InternalServerError, "api_error"),
        (529, openai.InternalServerError, "overloaded_error"),
    ],
)
async def test_anthropic_errors_raise_the_openai_sdks_class(
    client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError], code: str
) -> None:
    with pytest.raises(error) as raised:
        await client.chat.completions.create(
            model=CLAUDE, messages=MESSAGES, extra_headers={"x-sim-status": str(status)}
        )
    assert raised.value.code == code
    assert raised.value.status_code == (503 if status == 529 else status)


async def test_429_and_529_are_retried_as_the_sdk_retries_them(proxy: Proxy, sims: Sims) -> None:
    async with proxy.client(max_retries=2) as sdk:
        for status in (429, 529):
            with pytest.raises(openai.APIStatusError) as raised:
                await sdk.chat.completions.create(
                    model=CLAUDE,
                    messages=MESSAGES,
                    extra_headers={"x-sim-status": str(status), "x-sim-retry-after-ms": "10"},
                )
            # Anthropic's wait reaches the SDK, which waits that long and tries again.
            assert raised.value.response.headers["retry-after-ms"] == "10"
    assert len(await sims.seen()) == 6  # each: the first try and two retries


async def test_an_error_inside_a_stream_raises_in_the_sdk_and_ends_without_done(
    proxy: Proxy, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model=CLAUDE,
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-sim-stream-error": "529"},
    )
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    assert "overloaded" in str(raised.value).lower()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/chat/completions",
            json={"model": CLAUDE, "messages": MESSAGES, "stream": True},
            headers={"x-sim-stream-error": "529"},
        ) as resp,
    ):
        raw = await resp.text()
    assert resp.status == 200
    assert '"code":"overloaded_error"' in raw
    assert "[DONE]" not in raw


async def test_a_stream_cut_before_its_end_says_so(
    proxy: Proxy,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/chat/completions",
            json={"model": CLAUDE, "messages": MESSAGES, "stream": True},
            headers={"x-sim-fault": "drop"},
        ) as resp,
    ):
        raw = await resp.text()
    assert '"code":"stream_interrupted"' in raw
    assert "[DONE]" not in raw


async def test_what_cannot_be_translated_is_refused_by_name_and_never_sent(
    client: openai.AsyncOpenAI, sims: Sims
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model=CLAUDE,
            messages=MESSAGES,
            response_format={"type": "json_object"},
        )
    assert raised.value.param == "response_format"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model=CLAUDE, messages=MESSAGES, temperature=1.5)
    assert raised.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as raised:
        await client.embeddings.create(model=CLAUDE, input="hi")
    assert raised.value.code == "unsupported_for_provider"
    assert await sims.seen() == []


async def test_the_model_list_and_a_models_description_come_from_anthropic(
    client: openai.AsyncOpenAI,
) -> None:
    owners = {model.id: model.owned_by for model in (await client.models.list()).data}
    assert owners[CLAUDE] == "anthropic"
    assert "gpt-4o" in owners  # the openai provider's list, merged
    assert all(owners[name] == "anthropic" for name in owners if name.startswith("claude"))
    described = await client.models.retrieve(CLAUDE)
    assert (described.id, described.owned_by, described.created) == (
        CLAUDE,
        "anthropic",
        1729555200,  # 2024-10-22T00:00:00Z, the simulator's date
    )


async def test_a_prompt_pinned_to_claude_is_swapped_into_system_and_counted(
    proxy: Proxy, client: openai.AsyncOpenAI, sims: Sims
) -> None:
    services = proxy.services
    key = PromptKey("support")
    await services.registry.push(
        VersionDraft(key=key, template="You are the Lisbon support desk.", model=CLAUDE),
        actor="t",
    )
    await services.registry.promote(key, 1, "t", "")
    await ready_for(services)
    async with proxy.client(base_url=proxy.url.replace("/v1", "/p/support/v1")) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, stream=False
        )
    assert raw.headers["x-prompt-version"] == "1"
    answer = raw.parse()
    assert answer.model == CLAUDE
    sent = (await sims.seen())[-1]["body"]
    assert sent["model"] == CLAUDE
    assert sent["system"] == [{"type": "text", "text": "You are the Lisbon support desk."}]
    metrics = generate_latest(services.metrics.registry).decode()
    assert 'provider="anthropic"' in metrics
    token_lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("promptproxy_tokens_total") and 'provider="anthropic"' in line
    ]
    assert token_lines
    assert all(float(line.rsplit(" ", 1)[1]) > 0 for line in token_lines)


async def gpt_then_claude(services: Services, mode: RolloutMode) -> None:
    """`support`: stable v1 pinned to GPT, a 100 % rollout of v2 pinned to Claude."""
    key = PromptKey("support")
    await services.registry.push(
        VersionDraft(key=key, template="You are the stable desk.", model="gpt-4o"), actor="t"
    )
    await services.registry.push(
        VersionDraft(key=key, template="You are the Claude desk.", model=CLAUDE), actor="t"
    )
    await services.registry.promote(key, 1, "t", "")
    await services.registry.set_rollout(key, 2, mode, 100, None, "t", "")
    await ready_for(services)


async def test_a_shadow_from_gpt_to_claude_pairs_both_answers(proxy: Proxy, sims: Sims) -> None:
    await gpt_then_claude(proxy.services, RolloutMode.SHADOW)
    async with proxy.client(base_url=proxy.url.replace("/v1", "/p/support/v1")) as sdk:
        whole = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert whole.model.startswith("gpt-4o")  # the caller gets stable's answer
        stream = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert [chunk async for chunk in stream]

    pairs = await recorded(proxy.admin, 2, since="5m")
    assert {p["stream"] for p in pairs} == {False, True}
    for pair in pairs:
        assert (pair["primary"]["version"], pair["shadow"]["version"]) == (1, 2)
        assert pair["primary"]["text"]
        assert pair["shadow"]["text"]
        assert pair["shadow"]["error_class"] is None
        assert pair["shadow"]["output_tokens"]
        assert pair["divergence"]["text_distance"] is not None
    streamed = next(p for p in pairs if p["stream"])
    assert streamed["shadow"]["ttft_ms"] is not None
    # Both copies went to Anthropic translated, with its key, the candidate in `system`.
    sent = await sims.seen()
    assert [s["path"] for s in sent] == ["/v1/messages", "/v1/messages"]
    assert {s["headers"]["x-api-key"] for s in sent} == {ANTHROPIC_KEY}
    assert all(s["body"]["system"][0]["text"] == "You are the Claude desk." for s in sent)


async def test_a_canary_to_claude_leaves_what_claude_cannot_take_to_stable(
    proxy: Proxy, sims: Sims
) -> None:
    services = proxy.services
    await gpt_then_claude(services, RolloutMode.CANARY)
    async with proxy.client(base_url=proxy.url.replace("/v1", "/p/support/v1")) as sdk:
        canary = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        # JSON mode has no faithful Messages API equivalent: stable answers, not a 400.
        fallback = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert (canary.headers["x-prompt-arm"], canary.headers["x-prompt-version"]) == (
        "canary",
        "2",
    )
    assert canary.parse().model == CLAUDE
    assert (fallback.headers["x-prompt-arm"], fallback.headers["x-prompt-version"]) == (
        "stable",
        "1",
    )
    assert fallback.parse().model.startswith("gpt-4o")
    assert len(await sims.seen()) == 1  # only the canary's request reached Claude
    value = services.metrics.registry.get_sample_value
    counted = {"slug": "support", "reason": "untranslatable"}
    assert value("promptproxy_rollout_fallbacks_total", counted) == 1


async def test_when_stable_cannot_serve_either_the_caller_gets_the_candidates_error(
    proxy: Proxy,
) -> None:
    services = proxy.services
    key = PromptKey("support")
    await services.registry.push(VersionDraft(key=key, template="Stable."), actor="t")
    await services.registry.push(
        VersionDraft(
            key=key,
            template="Weather in {{ city }}.",
            variables=(VariableSpec("city", "string", "Lisbon", has_default=True),),
            model=CLAUDE,
        ),
        actor="t",
    )
    await services.registry.promote(key, 1, "t", "")
    await services.registry.set_rollout(key, 2, RolloutMode.CANARY, 100, None, "t", "")
    await ready_for(services)
    async with proxy.client(base_url=proxy.url.replace("/v1", "/p/support/v1")) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                extra_body={"prompt_variables": {"city": 5}},
            )
    # The candidate's complaint (a number for a string), not stable's (no such variable).
    assert "city" in refused.value.message
    assert "not declared" not in refused.value.message
    value = services.metrics.registry.get_sample_value
    assert (
        value("promptproxy_rollout_fallbacks_total", {"slug": "support", "reason": "render_failed"})
        is None
    )
