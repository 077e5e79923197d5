"""The anthropic SDK with promptproxy as its base URL: `/v1/messages` and
`/p/{slug}/v1/messages` relayed to the `kind: anthropic` provider (the simulator's Messages
face, wanting its own key as `x-api-key`), with the registry's prompt in `system`, and the
same metrics, shadows and errors as the OpenAI routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import TextBlock

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, VersionDraft
from tests.component.test_claude_translation import (
    ANTHROPIC_KEY,
    Proxy,
    Sims,
    running_proxy,
    running_sims,
)
from tests.component.test_registry_swap_in import ready_for
from tests.component.test_shadow_admin import recorded

pytestmark = pytest.mark.timeout(20)

MODEL = "claude-sonnet-4-5-20250929"
USER: list[Any] = [{"role": "user", "content": "What is the weather like in Lisbon?"}]


@pytest.fixture
async def sims() -> AsyncIterator[Sims]:
    async with running_sims() as started:
        yield started


@pytest.fixture
async def proxy(tmp_path: Path, sims: Sims) -> AsyncIterator[Proxy]:
    async with running_proxy(tmp_path, sims) as started:
        yield started


def root(proxy: Proxy, slug: str | None = None) -> str:
    """The anthropic SDK's base URL for the proxy (it adds `/v1/messages` itself)."""
    base = proxy.url.removesuffix("/v1")
    return base if slug is None else f"{base}/p/{slug}"


@pytest.fixture
async def claude(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=root(proxy), api_key="sk-ant-callers-own", max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def direct(sims: Sims) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=sims.anthropic, api_key=ANTHROPIC_KEY, max_retries=0, timeout=10
    ) as client:
        yield client


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


async def test_messages_are_relayed_with_the_providers_key(
    claude: anthropic.AsyncAnthropic,
    direct: anthropic.AsyncAnthropic,
    sims: Sims,
) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 200,
        "system": "Answer briefly.",
        "messages": USER,
    }
    through = await claude.messages.create(**params)
    assert text_of(through) == text_of(await direct.messages.create(**params))
    assert through.stop_reason == "end_turn"
    sent = (await sims.seen())[0]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY  # the caller's own never travels
    # The SDK's own API version, relayed as it was sent.
    assert sent["headers"]["anthropic-version"] == claude.default_headers["anthropic-version"]
    assert sent["body"] == params  # unchanged: no prompt named


async def test_a_stream_is_relayed_event_by_event(
    claude: anthropic.AsyncAnthropic,
) -> None:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 200, "messages": USER}
    whole = await claude.messages.create(**params)
    async with claude.messages.stream(**params) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == text_of(whole)
    assert final.usage.output_tokens == whole.usage.output_tokens


async def test_a_prompt_is_swapped_into_system_and_counted(
    proxy: Proxy,
    sims: Sims,
) -> None:
    services = proxy.services
    key = PromptKey("support")
    await services.registry.push(
        VersionDraft(key=key, template="You are the Lisbon support desk.", model=MODEL),
        actor="t",
    )
    await services.registry.promote(key, 1, "t", "")
    await ready_for(services)
    async with anthropic.AsyncAnthropic(
        base_url=root(proxy, "support"), api_key="sk-ant-callers-own", max_retries=0
    ) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-3-5-haiku-20241022",
            max_tokens=100,
            system="The caller's own system prompt.",
            messages=USER,
        )
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as s:
            await s.get_final_text()
    assert (raw.headers["x-prompt-version"], raw.headers["x-prompt-slug"]) == ("1", "support")
    assert (await raw.parse()).model == MODEL  # the version's pin
    for sent in await sims.seen():
        assert sent["body"]["model"] == MODEL
        # The prompt replaces the caller's system, as on the OpenAI routes.
        assert sent["body"]["system"] == [
            {"type": "text", "text": "You are the Lisbon support desk."}
        ]
    value = services.metrics.registry.get_sample_value
    labels = {
        "route": "messages",
        "slug": "support",
        "version": "1",
        "arm": "stable",
        "provider": "anthropic",
        "model": "other",  # a model without a price is no label of its own
        "tier": "",
        "variant": "",
    }
    assert value("promptproxy_requests_total", {**labels, "status_class": "2xx"}) == 2
    # `end_turn` counted by its chat completions name, as a translated answer's.
    assert value("promptproxy_finish_reasons_total", {**labels, "finish_reason": "stop"}) == 2
    assert (value("promptproxy_tokens_total", {**labels, "direction": "output"}) or 0) > 0
    assert (value("promptproxy_tokens_total", {**labels, "direction": "input"}) or 0) > 0


async def test_anthropics_errors_reach_the_sdk_as_they_came(
    claude: anthropic.AsyncAnthropic, direct: anthropic.AsyncAnthropic
) -> None:
    for status in (400, 429, 529):
        headers = {"x-sim-status": str(status)}
        raised = []
        for client in (claude, direct):
            with pytest.raises(anthropic.APIStatusError) as error:
                await client.messages.create(
                    model=MODEL, max_tokens=10, messages=USER, extra_headers=headers
                )
            raised.append((type(error.value), error.value.status_code))
        assert raised[0] == raised[1], status


async def test_the_proxys_own_errors_come_in_anthropics_shape(
    proxy: Proxy,
    claude: anthropic.AsyncAnthropic,
    sims: Sims,
) -> None:
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await claude.messages.create(model="mystery-model", max_tokens=10, messages=USER)
    # The proxy's own request id, where Anthropic gives its own.
    request_id = unknown.value.response.headers["x-promptproxy-request-id"]
    assert unknown.value.body == {
        "request_id": request_id,
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "model: The model 'mystery-model' is not served by any provider of this "
            "proxy.",
        },
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{root(proxy)}/v1/messages", data=b"{oops") as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]
    assert await sims.seen() == []


async def test_a_messages_request_for_a_gpt_model_is_relayed_as_any_other(
    claude: anthropic.AsyncAnthropic, sims: Sims
) -> None:
    # An OpenAI-shaped provider gets /v1/messages as it came (some such servers speak it):
    # here the OpenAI simulator, which has a Messages face too, with its own key.
    message = await claude.messages.create(model="gpt-4o", max_tokens=10, messages=USER)
    assert text_of(message)
    assert await sims.seen() == []  # not the Anthropic provider


async def test_a_shadow_of_a_messages_prompt_pairs_two_claude_answers(
    proxy: Proxy,
    sims: Sims,
) -> None:
    services = proxy.services
    key = PromptKey("support")
    for template in ("You are the stable desk.", "You are the candidate desk."):
        await services.registry.push(
            VersionDraft(key=key, template=template, model=MODEL), actor="t"
        )
    await services.registry.promote(key, 1, "t", "")
    await services.registry.set_rollout(key, 2, RolloutMode.SHADOW, 100, None, "t", "")
    await ready_for(services)
    async with anthropic.AsyncAnthropic(
        base_url=root(proxy, "support"), api_key="sk-ant-callers-own", max_retries=0
    ) as client:
        await client.messages.create(model=MODEL, max_tokens=100, messages=USER)
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as s:
            await s.get_final_text()
    pairs = await recorded(proxy.admin, 2, since="5m")
    assert {p["stream"] for p in pairs} == {False, True}
    for pair in pairs:
        assert (pair["primary"]["version"], pair["shadow"]["version"]) == (1, 2)
        assert pair["primary"]["text"]
        assert pair["shadow"]["text"]
        assert pair["shadow"]["error_class"] is None
        assert pair["shadow"]["output_tokens"]
        assert pair["primary"]["output_tokens"]
    systems = sorted(s["body"]["system"][0]["text"] for s in await sims.seen())
    assert systems == ["You are the candidate desk."] * 2 + ["You are the stable desk."] * 2


async def test_a_batch_by_id_goes_to_the_anthropic_provider(proxy: Proxy, sims: Sims) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=root(proxy), api_key="sk-ant-callers-own", max_retries=0
    ) as client:
        # The simulator has no batches: its 404 proves where the call went.
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve("msgbatch_01")
    [sent] = await sims.seen()
    assert sent["path"] == "/v1/messages/batches/msgbatch_01"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY


async def test_a_canary_pinned_away_from_anthropic_leaves_messages_calls_to_stable(
    proxy: Proxy, sims: Sims
) -> None:
    services = proxy.services
    key = PromptKey("support")
    await services.registry.push(
        VersionDraft(key=key, template="You are the Claude desk.", model=MODEL), actor="t"
    )
    # A GPT candidate cannot take a Messages API call: stable answers, counted.
    await services.registry.push(
        VersionDraft(key=key, template="You are the GPT desk.", model="gpt-4o"), actor="t"
    )
    await services.registry.promote(key, 1, "t", "")
    await services.registry.set_rollout(key, 2, RolloutMode.CANARY, 100, None, "t", "")
    await ready_for(services)
    async with anthropic.AsyncAnthropic(
        base_url=root(proxy, "support"), api_key="sk-ant-callers-own", max_retries=0
    ) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=50, messages=USER
        )
    assert (raw.headers["x-prompt-arm"], raw.headers["x-prompt-version"]) == ("stable", "1")
    [sent] = await sims.seen()
    assert sent["body"]["system"][0]["text"] == "You are the Claude desk."
    value = services.metrics.registry.get_sample_value
    counted = {"slug": "support", "reason": "untranslatable"}
    assert value("promptproxy_rollout_fallbacks_total", counted) == 1
