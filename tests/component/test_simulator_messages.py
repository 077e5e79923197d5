"""The simulator's Messages API face, driven by the real ``anthropic`` SDK (and raw HTTP where
the SDK hides the wire: event order, headers, requests it would refuse to build)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock

from proxy.simulator import SimulatorSettings, start_simulator
from tests.component.test_simulator import sim_url  # noqa: F401  (a fixture: chunks=4)

pytestmark = pytest.mark.timeout(10)

MODEL = "claude-sonnet-4-5"
USER: list[Any] = [{"role": "user", "content": "Hi there"}]
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "kelvin"]}},
        "required": ["city", "unit"],
    },
}
TIME: dict[str, Any] = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture
async def claude(sim_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:  # noqa: F811
    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="x", max_retries=0, timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def keyed_url() -> AsyncIterator[str]:
    """A simulator that wants the key ``secret``."""
    runner, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(api_key="secret"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def create(client: anthropic.AsyncAnthropic, **kwargs: Any) -> Message:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER, **kwargs}
    return await client.messages.create(**params)


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


def tool_uses(message: Message) -> list[ToolUseBlock]:
    return [b for b in message.content if isinstance(b, ToolUseBlock)]


async def raw_post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/messages", data=orjson.dumps(body), headers=headers) as resp,
    ):
        return resp.status, (resp.headers, await resp.read())


async def requests_seen(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/requests") as resp:
        entries = await resp.json()
    return sum(1 for e in entries if e["path"] == "/v1/messages")


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse strictly: every event is ``event: <name>\\ndata: <json>\\n\\n``."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        events.append((name_line[7:].decode(), orjson.loads(data_line[6:])))
    return events


# --- answers ------------------------------------------------------------------------------


async def test_text_answer_follows_system_and_last_user_turn(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await create(claude, system="Answer like a pirate.")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    text = text_of(message)
    assert text.startswith("Simulated answer to: Hi there.")
    # Themed by the system prompt, as the chat face is.
    assert "pirate" in text
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 6  # "Answer like a pirate." + "Hi there"
    assert message.usage.output_tokens == len(text.split())
    assert message._request_id is not None
    assert message._request_id.startswith("req_")
    other = await create(claude, system="Answer like a poet.")
    assert text_of(other) != text  # another prompt version answers differently


async def test_stream_yields_the_same_message_as_create(claude: anthropic.AsyncAnthropic) -> None:
    expected = await create(claude)
    pieces: list[str] = []
    async with claude.messages.stream(model=MODEL, max_tokens=256, messages=USER) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert len(pieces) == 4  # the fixture's chunks=4
    assert "".join(pieces) == text_of(expected) == text_of(final)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == expected.usage.output_tokens
    assert final.usage.input_tokens == expected.usage.input_tokens == 2


async def test_stream_sends_the_documented_event_sequence(sim_url: str) -> None:  # noqa: F811
    body = {"model": MODEL, "max_tokens": 64, "messages": USER, "stream": True}
    status, (headers, raw) = await raw_post(sim_url, body, {**VERSION, "x-api-key": "x"})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = sse_events(raw)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert {d["delta"]["type"] for n, d in events if n == "content_block_delta"} == {"text_delta"}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert delta["usage"]["output_tokens"] == len(text.split())
    # Cumulative, as the current API sends it: the input and cache counts again.
    start_usage = start["usage"]
    assert delta["usage"] == {
        "input_tokens": start_usage["input_tokens"],
        "cache_creation_input_tokens": start_usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": start_usage["cache_read_input_tokens"],
        "output_tokens": len(text.split()),
    }
    anthropic.types.MessageDeltaUsage.model_validate(delta["usage"])


async def test_named_tool_is_called_with_schema_shaped_input(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await create(
        claude, tools=[TIME, WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    )
    assert message.stop_reason == "tool_use"
    assert len(message.content) == 1  # a forced call comes without a preamble
    (call,) = tool_uses(message)
    assert call.id.startswith("toolu_")
    assert call.name == "get_weather"
    assert call.input == {"city": "simulated city", "unit": "celsius"}


async def test_auto_tool_use_streams_input_json_deltas_the_sdk_assembles(
    claude: anthropic.AsyncAnthropic,
) -> None:
    expected = await create(claude, tools=[WEATHER, TIME])
    assert [b.type for b in expected.content] == ["text", "tool_use", "tool_use"]
    fragments: list[str] = []
    async with claude.messages.stream(
        model=MODEL, max_tokens=256, messages=USER, tools=[WEATHER, TIME]
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                fragments.append(event.partial_json)
        final = await stream.get_final_message()
    assert len([f for f in fragments if f]) > 2  # the input really arrived in pieces
    assert final.stop_reason == "tool_use"
    assert [(c.name, c.input) for c in tool_uses(final)] == [
        (c.name, c.input) for c in tool_uses(expected)
    ]
    assert all(c.id.startswith("toolu_") for c in tool_uses(final))
    assert tool_uses(final)[0].input == {"city": "simulated city", "unit": "celsius"}
    assert text_of(final) == text_of(expected) == "I'll use get_weather and get_time for this."


async def test_tool_choice_none_and_single_call(claude: anthropic.AsyncAnthropic) -> None:
    plain = await create(claude, tools=[WEATHER], tool_choice={"type": "none"})
    assert plain.stop_reason == "end_turn"
    assert not tool_uses(plain)
    single = await create(
        claude,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert [c.name for c in tool_uses(single)] == ["get_weather"]


async def test_stop_sequence_ends_the_answer_before_it(claude: anthropic.AsyncAnthropic) -> None:
    full = text_of(await create(claude))
    word = full.split(" ")[6]
    message = await create(claude, stop_sequences=["never-there", word])
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == word
    assert text_of(message) == full[: full.index(word)].rstrip(" ")
    async with claude.messages.stream(
        model=MODEL, max_tokens=256, messages=USER, stop_sequences=[word]
    ) as stream:
        streamed = await stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", word)
    assert text_of(streamed) == text_of(message)


async def test_max_tokens_truncates(claude: anthropic.AsyncAnthropic) -> None:
    full = text_of(await create(claude))
    message = await create(claude, max_tokens=3)
    assert message.stop_reason == "max_tokens"
    assert text_of(message) == " ".join(full.split(" ")[:3])
    assert message.usage.output_tokens == 3
    async with claude.messages.stream(model=MODEL, max_tokens=3, messages=USER) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == 3


async def test_truncate_directive_in_system_reports_max_tokens(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await create(claude, system="[[sim truncate=1]]")
    assert message.stop_reason == "max_tokens"
    full = await create(claude, system="[[sim truncate=0]]")
    assert message.usage.output_tokens < full.usage.output_tokens


# --- errors -------------------------------------------------------------------------------


async def test_missing_max_tokens_is_a_bad_request(claude: anthropic.AsyncAnthropic) -> None:
    # The SDK will not build such a request itself, so post the body through its raw client.
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.post("/v1/messages", cast_to=Message, body={"model": MODEL, "messages": USER})
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": caught.value.request_id,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"messages": []}, "messages: at least one message is required"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        ({"system": [{"type": "image"}]}, "system.0.type: Input should be 'text'"),
        (
            {"extra_body": {"temperature": 1.5}},  # this SDK no longer takes temperature itself
            "temperature: Input should be between 0 and 1",
        ),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id: Input should be a valid string"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema: Field required"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice.name: Tool 'nope' not found in 'tools'.",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice: tool_choice may only be specified"),
    ],
)
async def test_invalid_requests_name_the_field(
    claude: anthropic.AsyncAnthropic, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await create(claude, **change)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["message"].startswith(message)


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (409, anthropic.ConflictError, "conflict_error"),
        (413, anthropic.ContentTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_injected_status_raises_the_sdk_class(
    claude: anthropic.AsyncAnthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(error_class) as caught:
        await create(claude, extra_headers={"x-sim-status": str(status)})
    error = caught.value
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == error_type
    assert error.body["request_id"] == error.response.headers["request-id"]
    assert ("retry-after" in error.response.headers) == (status in (429, 529))


async def test_sdk_retries_529_and_429_then_raises(sim_url: str) -> None:  # noqa: F811
    client = anthropic.AsyncAnthropic(base_url=sim_url, api_key="x", max_retries=2, timeout=5)
    try:
        for status, error_class in (
            (529, anthropic.OverloadedError),
            (429, anthropic.RateLimitError),
        ):
            before = await requests_seen(sim_url)
            headers = {"x-sim-status": str(status), "x-sim-retry-after-ms": "10"}
            with pytest.raises(error_class):
                await create(client, extra_headers=headers)
            assert await requests_seen(sim_url) - before == 3  # the first try and two retries
        before = await requests_seen(sim_url)
        with pytest.raises(anthropic.BadRequestError):
            await create(client, max_tokens=0)
        assert await requests_seen(sim_url) - before == 1  # a 400 is never retried
    finally:
        await client.close()


async def test_error_event_inside_a_stream(claude: anthropic.AsyncAnthropic) -> None:
    pieces: list[str] = []

    async def read_stream() -> None:
        async with claude.messages.stream(
            model=MODEL,
            max_tokens=256,
            messages=USER,
            extra_headers={"x-sim-stream-error": "529"},
        ) as stream:
            async for text in stream.text_stream:
                pieces.append(text)

    with pytest.raises(anthropic.APIStatusError) as caught:
        await read_stream()
    assert pieces  # the 200 and some text went out before the overload
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    # Without a stream the same control can only show as the status.
    with pytest.raises(anthropic.OverloadedError):
        await create(claude, extra_headers={"x-sim-stream-error": "529"})


async def test_error_directive_answers_api_error(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        await create(claude, system="[[sim error=1]]")
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"


# --- headers ------------------------------------------------------------------------------


async def test_api_key_by_x_api_key_or_bearer(keyed_url: str) -> None:
    by_key = anthropic.AsyncAnthropic(base_url=keyed_url, api_key="secret", max_retries=0)
    by_token = anthropic.AsyncAnthropic(base_url=keyed_url, auth_token="secret", max_retries=0)
    wrong = anthropic.AsyncAnthropic(base_url=keyed_url, api_key="guess", max_retries=0)
    try:
        assert text_of(await create(by_key))
        assert text_of(await create(by_token))
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await create(wrong)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["error"]["message"] == "invalid x-api-key"
    finally:
        for client in (by_key, by_token, wrong):
            await client.close()
    body = {"model": MODEL, "max_tokens": 8, "messages": USER}
    status, (_, raw) = await raw_post(keyed_url, body, VERSION)
    assert status == 401
    assert orjson.loads(raw)["error"]["message"] == "x-api-key header is required"


async def test_anthropic_version_header_is_required(sim_url: str) -> None:  # noqa: F811
    body = {"model": MODEL, "max_tokens": 8, "messages": USER}
    status, (headers, raw) = await raw_post(sim_url, body, {})
    assert status == 400
    error = orjson.loads(raw)
    assert error["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }
    assert error["request_id"] == headers["request-id"]
    assert "x-request-id" not in headers  # OpenAI's header name stays on the OpenAI face


async def test_a_claude_model_answers_as_the_chat_face_does_for_the_same_prompt(
    claude: anthropic.AsyncAnthropic,
    sim_url: str,  # noqa: F811
) -> None:
    """The same system prompt and turns answer with the same text on both faces, so a
    prompt moved from a GPT model to a Claude one through the translation is compared on
    what the prompt changed, not on which face answered; another prompt answers otherwise."""
    turns = [{"role": "user", "content": "Where is my parcel?"}]
    for system in ("You are a terse courier assistant.", "You write long, warm poems."):
        message = await create(
            claude,
            model="claude-3-5-sonnet-20241022",
            max_tokens=200,
            system=system,
            messages=turns,
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sim_url}/v1/chat/completions",
                json={
                    "model": "gpt-4o",
                    "messages": [{"role": "system", "content": system}, *turns],
                },
            ) as resp,
        ):
            chat = orjson.loads(await resp.read())
        assert text_of(message) == chat["choices"][0]["message"]["content"]
    first = await create(
        claude,
        model="m",
        max_tokens=200,
        system="You are a terse courier assistant.",
        messages=turns,
    )
    second = await create(
        claude, model="m", max_tokens=200, system="You write long, warm poems.", messages=turns
    )
    assert text_of(first) != text_of(second)
