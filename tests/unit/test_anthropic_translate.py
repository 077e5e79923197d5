"""The chat completions <-> Messages API translation (proxy/anthropic), each direction,
from the request and event sequences of Anthropic's API reference. Answers are checked
against the real SDKs' models (openai's ChatCompletion / ChatCompletionChunk, anthropic's
Message) and error statuses against the openai SDK's own class choice and retry rule."""

from __future__ import annotations

import inspect
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.anthropic.errors import to_openai_error
from proxy.anthropic.request import to_messages
from proxy.anthropic.response import to_chat_completion
from proxy.anthropic.stream import StreamTranslator
from proxy.errors import InvalidRequest, UpstreamError

MODEL = "claude-sonnet-4-5"


def translate(**fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], **fields}
    return to_messages(body, default_max_tokens=1024)


def refused(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate(**fields)
    assert caught.value.status == 400
    return caught.value


# -- request ------------------------------------------------------------------------------


def test_a_plain_request() -> None:
    assert translate() == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }


def test_every_system_and_developer_message_becomes_the_system_field_in_order() -> None:
    out = to_messages(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Salut."},
                {"role": "system", "content": "Now be polite."},
                {"role": "user", "content": "Again"},
            ],
        },
        default_max_tokens=64,
    )
    assert out["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French."},
        {"type": "text", "text": "Now be polite."},
    ]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_no_system_message_no_system_field_and_empty_system_text_is_left_out() -> None:
    assert "system" not in translate()
    out = translate(messages=[{"role": "system", "content": ""}, {"role": "user", "content": "x"}])
    assert "system" not in out


def test_consecutive_messages_of_one_role_are_merged_in_order() -> None:
    out = translate(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def test_a_tool_round_trip_with_two_parallel_calls() -> None:
    out = translate(
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    },
                    {
                        "id": "toolu_01B",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18 C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_01B",
                "content": [{"type": "text", "text": "4 C, snow"}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert out["tool_choice"] == {"type": "auto"}
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_01A",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "toolu_01B",
                "name": "get_weather",
                "input": {"location": "Oslo"},
            },
        ],
    }
    # Both results and the next question in one user turn, the results first.
    assert out["messages"][2:] == [
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18 C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": [{"type": "text", "text": "4 C, snow"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        }
    ]


def test_an_assistant_turn_of_tool_calls_only_and_empty_arguments() -> None:
    out = translate(
        messages=[
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "12:00"},
        ]
    )
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "now", "input": {}}
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert translate(tools=[WEATHER_TOOL], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    assert translate(tools=[WEATHER_TOOL], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    out = translate(tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    out = translate(tools=[WEATHER_TOOL], tool_choice="none", parallel_tool_calls=False)
    assert out["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in translate(tools=[WEATHER_TOOL], parallel_tool_calls=True)


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    assert translate(tools=[tool])["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_images_from_data_urls_and_https_urls() -> None:
    out = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "auto"},
                    },
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("image_url", "param"),
    [
        ({"url": "data:image/bmp;base64,Qk0="}, "messages[0].content[0].image_url.url"),
        ({"url": "http://example.com/cat.jpg"}, "messages[0].content[0].image_url.url"),
        (
            {"url": "https://example.com/c.jpg", "detail": "low"},
            "messages[0].content[0].image_url.detail",
        ),
    ],
)
def test_images_that_cannot_be_translated_are_refused_by_name(
    image_url: dict[str, str], param: str
) -> None:
    error = refused(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": image_url}]}]
    )
    assert error.param == param


def test_the_other_translated_fields() -> None:
    out = translate(
        max_completion_tokens=300,
        stop="\n\nHuman:",
        temperature=0.7,
        top_p=0.9,
        user="user-42",
        stream=True,
        stream_options={"include_usage": True},
        store=False,
        metadata={"team": "search"},
        n=1,
        presence_penalty=0,
        response_format={"type": "text"},
    )
    assert out == {
        "model": MODEL,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.7,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert translate(max_tokens=77, stop=["END", "STOP"])["stop_sequences"] == ["END", "STOP"]
    assert translate(max_tokens=77)["max_tokens"] == 77


def test_temperature_above_one_is_refused_and_one_is_kept() -> None:
    assert translate(temperature=1)["temperature"] == 1
    assert translate(temperature=0)["temperature"] == 0
    error = refused(temperature=1.2)
    assert error.param == "temperature"
    assert error.code == "unsupported_value"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"seed": 7}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            "response_format",
        ),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"verbosity": "low"}, "verbosity"),
        ({"some_future_field": 1}, "some_future_field"),
        ({"max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
        ({"stop": ["  "]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"chunk_size": 3}}, "stream_options.chunk_size"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
        ),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "The answer is"},
                ]
            },
            "messages[1]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "t", "content": "ok"},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ],
)
def test_what_cannot_be_translated_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    error = refused(**fields)
    assert error.param == param
    assert error.to_openai_body()["error"]["param"] == param
    assert error.to_openai_body()["error"]["type"] == "invalid_request_error"


def test_defaults_of_refused_fields_are_accepted() -> None:
    out = translate(
        n=None,
        logprobs=False,
        top_logprobs=None,
        frequency_penalty=0.0,
        logit_bias={},
        seed=None,
        modalities=["text"],
        service_tier="auto",
        prompt_cache_key="k",
    )
    assert set(out) == {"model", "max_tokens", "messages"}


def test_the_translated_request_is_a_valid_anthropic_request_shape() -> None:
    """The SDK's own request model accepts what we send (field names and nesting)."""
    out = translate(
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        stop="END",
        user="u1",
    )
    client = anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1:9")
    # The SDK builds its request body from keyword arguments: every key we send is one of
    # its parameters, and every key it requires is sent.
    parameters = inspect.signature(client.messages.create).parameters
    assert set(out) <= set(parameters)
    assert {"model", "max_tokens", "messages"} <= set(out)
    assert set(out) == {
        "model",
        "max_tokens",
        "system",
        "messages",
        "tools",
        "tool_choice",
        "stop_sequences",
        "metadata",
    }


# -- response -----------------------------------------------------------------------------


def message(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503},
    }
    base.update(fields)
    anthropic.types.Message.model_validate(base)  # a real Messages answer shape
    return base


def completion(answer: dict[str, Any]) -> dict[str, Any]:
    out = to_chat_completion(answer, model="claude-alias", created=1700000000)
    ChatCompletion.model_validate(out)  # a real chat completion shape
    return out


def test_a_text_answer() -> None:
    out = completion(
        message(content=[{"type": "text", "text": "Hi! "}, {"type": "text", "text": "Bye."}])
    )
    assert out["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert out["object"] == "chat.completion"
    assert out["model"] == "claude-alias"
    assert out["created"] == 1700000000
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi! Bye.",
        "refusal": None,
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}


def test_a_tool_use_answer() -> None:
    out = completion(
        message(
            content=[
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01B",
                    "name": "get_weather",
                    "input": {"location": "Oslo"},
                },
            ],
            stop_reason="tool_use",
        )
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    calls = choice["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_01A", "toolu_01B"]
    assert calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[1]["function"]["arguments"]) == {"location": "Oslo"}


def test_an_answer_of_tool_calls_only_has_null_content() -> None:
    out = completion(
        message(
            content=[{"type": "tool_use", "id": "t", "name": "now", "input": {}}],
            stop_reason="tool_use",
        )
    )
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "length"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    assert (
        completion(message(stop_reason=stop_reason))["choices"][0]["finish_reason"] == finish_reason
    )


def test_cache_tokens_count_in_the_prompt_and_reads_are_cached_tokens() -> None:
    out = completion(
        message(
            usage={
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 1000,
                "output_tokens": 5,
            }
        )
    )
    assert out["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 5,
        "total_tokens": 1215,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


def test_thinking_is_not_shown_and_an_unknown_block_is_an_upstream_error() -> None:
    out = completion(
        message(
            content=[
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "42"},
            ]
        )
    )
    assert out["choices"][0]["message"]["content"] == "42"
    with pytest.raises(UpstreamError) as caught:
        to_chat_completion(
            {
                **message(),
                "content": [
                    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
                ],
            },
            model="m",
            created=0,
        )
    assert caught.value.code == "untranslatable_answer"


# -- stream -------------------------------------------------------------------------------

MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    },
}


def run(
    events: list[dict[str, Any]], *, include_usage: bool = False
) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    translator = StreamTranslator(
        model="claude-alias", created=1700000000, include_usage=include_usage
    )
    chunks: list[dict[str, Any]] = []
    for data in events:
        chunks.extend(translator.feed(data["type"], data))
    for chunk in chunks:
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)
    return translator, chunks


TEXT_STREAM = [
    MESSAGE_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]


def test_a_streamed_text_answer() -> None:
    translator, chunks = run(TEXT_STREAM)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)
    assert translator.finished


def test_a_streamed_answer_with_usage() -> None:
    _, chunks = run(TEXT_STREAM, include_usage=True)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}


def tool_start(index: int, tool_id: str) -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}},
    }


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def test_a_streamed_answer_with_two_parallel_tool_calls() -> None:
    _, chunks = run(
        [
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Checking both."},
            },
            {"type": "content_block_stop", "index": 0},
            tool_start(1, "toolu_01A"),
            tool_start(2, "toolu_01B"),
            json_delta(1, ""),
            json_delta(1, '{"location": "Pa'),
            json_delta(2, '{"location": '),
            json_delta(1, 'ris"}'),
            json_delta(2, '"Oslo"}'),
            {"type": "content_block_stop", "index": 1},
            {"type": "content_block_stop", "index": 2},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
            {"type": "message_stop"},
        ]
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"content": "Checking both."}
    # Tool indices count tool blocks only: block 1 is tool 0, block 2 is tool 1.
    assert deltas[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_01A",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    assert deltas[3]["tool_calls"][0]["index"] == 1
    assert deltas[3]["tool_calls"][0]["id"] == "toolu_01B"
    arguments = [d["tool_calls"][0] for d in deltas[4:8]]
    assert arguments == [
        {"index": 0, "function": {"arguments": '{"location": "Pa'}},
        {"index": 1, "function": {"arguments": '{"location": '}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
        {"index": 1, "function": {"arguments": '"Oslo"}'}},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert len(chunks) == 9
    # Reassembled the way a client does it: by index.
    joined: dict[int, str] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            joined[call["index"]] = joined.get(call["index"], "") + call["function"]["arguments"]
    assert {i: json.loads(s) for i, s in joined.items()} == {
        0: {"location": "Paris"},
        1: {"location": "Oslo"},
    }


def test_an_error_event_becomes_an_openai_error_the_sdk_raises_on() -> None:
    translator, chunks = run(
        [
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ]
    )
    assert chunks[-1] == {
        "error": {
            "message": "Overloaded",
            "type": "api_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert len(chunks) == 3  # nothing after the error
    assert translator.finished


def test_the_openai_sdk_raises_on_the_error_chunk() -> None:
    _, chunks = run(
        [MESSAGE_START, {"type": "error", "error": {"type": "api_error", "message": "boom"}}]
    )
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=body.encode()
        )

    client = openai.OpenAI(
        api_key="x",
        base_url="http://proxy.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="boom"):
        list(stream)


def test_unknown_events_and_thinking_deltas_are_skipped_and_an_unknown_block_ends_the_stream() -> (
    None
):
    translator, chunks = run(
        [
            MESSAGE_START,
            {"type": "some_future_event", "x": 1},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
            {"type": "content_block_stop", "index": 0},
        ]
    )
    assert len(chunks) == 1
    assert not translator.finished
    more = translator.feed(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "server_tool_use",
                "id": "s",
                "name": "web_search",
                "input": {},
            },
        },
    )
    assert more[0]["error"]["code"] == "untranslatable_answer"
    assert translator.finished


# -- errors -------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str = "details") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


SDK = openai.OpenAI(api_key="x", base_url="http://proxy.test/v1", max_retries=2)


def sdk_view(status: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[type, bool]:
    """The exception class the openai SDK raises for this answer, and whether it retries."""
    response = httpx2.Response(
        status,
        headers=headers,
        json=body,
        request=httpx2.Request("POST", "http://proxy.test/v1/chat/completions"),
    )
    error = SDK._make_status_error("m", body=body, response=response)
    return type(error), SDK._should_retry(response)


@pytest.mark.parametrize(
    ("status", "kind", "sent", "openai_type", "sdk_class", "retried"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", openai.BadRequestError, False),
        (
            401,
            "authentication_error",
            401,
            "authentication_error",
            openai.AuthenticationError,
            False,
        ),
        (402, "billing_error", 402, "invalid_request_error", openai.APIStatusError, False),
        (403, "permission_error", 403, "permission_error", openai.PermissionDeniedError, False),
        (404, "not_found_error", 404, "invalid_request_error", openai.NotFoundError, False),
        (413, "request_too_large", 413, "invalid_request_error", openai.APIStatusError, False),
        (429, "rate_limit_error", 429, "rate_limit_error", openai.RateLimitError, True),
        (500, "api_error", 500, "api_error", openai.InternalServerError, True),
        (504, "timeout_error", 504, "api_error", openai.InternalServerError, True),
        (529, "overloaded_error", 503, "api_error", openai.InternalServerError, True),
    ],
)
def test_the_error_table(
    status: int, kind: str, sent: int, openai_type: str, sdk_class: type, retried: bool
) -> None:
    out = to_openai_error(status, anthropic_error(kind, "It went wrong"), {"request-id": "req_1"})
    assert out.status == sent
    assert out.body == {
        "error": {"message": "It went wrong", "type": openai_type, "param": None, "code": kind}
    }
    assert out.headers == {}
    raised, retries = sdk_view(out.status, out.body, out.headers)
    assert raised is sdk_class
    assert retries is retried


def test_retry_after_and_should_retry_are_kept() -> None:
    out = to_openai_error(
        429,
        anthropic_error("rate_limit_error"),
        {"Retry-After": "7", "x-should-retry": "true", "anthropic-ratelimit-requests-limit": "50"},
    )
    assert out.headers == {"retry-after": "7", "x-should-retry": "true"}
    out = to_openai_error(529, anthropic_error("overloaded_error"), {"x-should-retry": "false"})
    assert sdk_view(out.status, out.body, out.headers) == (openai.InternalServerError, False)


def test_a_spend_limit_429_is_not_retried() -> None:
    body = anthropic_error("rate_limit_error")
    body["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
    out = to_openai_error(429, body, {})
    assert out.headers == {"x-should-retry": "false"}
    assert sdk_view(out.status, out.body, out.headers) == (openai.RateLimitError, False)


def test_an_error_answer_that_is_not_json() -> None:
    out = to_openai_error(413, None, {})
    assert out.status == 413
    assert out.body["error"]["code"] == "request_too_large"
    assert out.body["error"]["type"] == "invalid_request_error"
    assert "413" in out.body["error"]["message"]
    out = to_openai_error(529, "<html>overloaded</html>", {})
    assert (out.status, out.body["error"]["code"]) == (503, "overloaded_error")
    out = to_openai_error(418, {"unexpected": True}, {})
    assert (out.status, out.body["error"]["type"], out.body["error"]["code"]) == (
        418,
        "invalid_request_error",
        None,
    )
