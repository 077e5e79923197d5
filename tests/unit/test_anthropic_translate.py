"""The chat completions <-> Messages API translation (proxy/anthropic), each direction,
from the request and event sequences of Anthropic's API reference. Answers are checked
against the real SDKs' models (openai's ChatCompletion / ChatCompletionChunk, anthropic's
Message) and error statuses against the openai SDK's own class choice and retry rule."""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import typing_extensions
from anthropic._types import SequenceNotStr
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage

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


def sdk_assistant_message(**fields: Any) -> ChatCompletionMessage:
    return ChatCompletionMessage.model_validate({"role": "assistant", **fields})


@pytest.mark.parametrize("dump", ["to_dict", "model_dump"])
def test_assistant_messages_as_the_openai_sdk_returns_them_are_replayed(dump: str) -> None:
    """``message.to_dict()`` carries ``annotations: []``, ``model_dump()`` also
    ``function_call``/``audio``/``tool_calls: None``: all hold nothing and are accepted."""
    said = sdk_assistant_message(content="Paris.", annotations=[], refusal=None)
    called = sdk_assistant_message(
        content=None,
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            }
        ],
    )
    history = [getattr(m, dump)() for m in (said, called)]
    assert "annotations" in history[0]
    out = translate(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Capital of France?"},
            history[0],
            {"role": "user", "content": "Weather there?"},
            history[1],
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ],
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Paris."}],
    }
    assert out["messages"][3]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}
    ]
    assert_valid_request(out)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("annotations", [{"type": "url_citation", "url_citation": {"url": "https://x.test"}}]),
        ("function_call", {"name": "f", "arguments": "{}"}),
        ("audio", {"id": "audio_1"}),
        ("refusal", "I cannot help with that."),
    ],
)
def test_assistant_keys_that_hold_something_are_refused_by_name(key: str, value: Any) -> None:
    error = refused(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", key: value},
            {"role": "user", "content": "Again"},
        ]
    )
    assert error.param == f"messages[1].{key}"


@pytest.mark.parametrize("tools", [None, []])
def test_tool_choice_without_tools_is_refused(tools: list[Any] | None) -> None:
    for choice in ("auto", "required", "none", {"type": "function", "function": {"name": "f"}}):
        fields: dict[str, Any] = {"tool_choice": choice}
        if tools is not None:
            fields["tools"] = tools
        assert refused(**fields).param == "tool_choice"


def test_whitespace_only_user_text_is_refused_naming_the_field() -> None:
    assert refused(messages=[{"role": "user", "content": " \n\t"}]).param == "messages[0].content"
    parts = [{"type": "text", "text": "Look"}, {"type": "text", "text": "   "}]
    error = refused(messages=[{"role": "user", "content": parts}])
    assert error.param == "messages[0].content[1]"
    assert error.code == "unsupported_value"


def test_whitespace_only_system_assistant_and_tool_text_is_left_out() -> None:
    call = {"id": "t1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    out = translate(
        tools=[{"type": "function", "function": {"name": "now"}}],
        messages=[
            {"role": "system", "content": "  "},
            {"role": "developer", "content": [{"type": "text", "text": "\n"}]},
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": " ", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "t1", "content": "\n"},
            {"role": "user", "content": "Thanks"},
        ],
    )
    assert "system" not in out
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "now", "input": {}}
    ]
    assert out["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "t1"}
    assert_valid_request(out)
    # An assistant message of whitespace only says nothing at all: refused.
    error = refused(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "  "},
            {"role": "user", "content": "Again"},
        ]
    )
    assert error.param == "messages[1].content"


CALL_T1 = {
    "role": "assistant",
    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}],
}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "tool", "tool_call_id": "t1", "content": "x"},
            ],
            "messages[1]",
        ),
        (
            [
                {"role": "tool", "tool_call_id": "t1", "content": "x"},
                {"role": "user", "content": "Hi"},
            ],
            "messages[0]",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                CALL_T1,
                {"role": "user", "content": "Go on"},
                {"role": "tool", "tool_call_id": "t1", "content": "x"},
            ],
            "messages[3]",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "tool", "tool_call_id": "t1", "content": "x"},
            ],
            "messages[2]",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                CALL_T1,
                {"role": "tool", "tool_call_id": "t2", "content": "x"},
            ],
            "messages[2].tool_call_id",
        ),
    ],
)
def test_a_tool_message_that_does_not_follow_its_tool_call_is_refused(
    messages: list[dict[str, Any]], param: str
) -> None:
    """Merged into the user turn it would give [text, tool_result] or a result with no
    tool_use before it, which the Messages API refuses."""
    assert refused(messages=messages).param == param


def test_tool_messages_after_a_system_message_still_follow_their_call() -> None:
    out = translate(
        messages=[
            {"role": "user", "content": "Hi"},
            CALL_T1,
            {"role": "system", "content": "Be brief."},
            {"role": "tool", "tool_call_id": "t1", "content": "12:00"},
        ]
    )
    assert out["messages"][2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize(
    ("parameters", "schema"),
    [
        ({}, {"type": "object"}),
        (
            {"properties": {"q": {"type": "string"}}},
            {"type": "object", "properties": {"q": {"type": "string"}}},
        ),
    ],
)
def test_a_schema_without_type_becomes_an_object_schema(
    parameters: dict[str, Any], schema: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    out = translate(tools=[tool])
    assert out["tools"][0]["input_schema"] == schema
    assert parameters.get("type") is None  # the caller's body is not changed
    assert_valid_request(out)


def test_a_schema_of_another_type_is_refused() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    assert refused(tools=[tool]).param == "tools[0].function.parameters.type"


_REQUIRED = (typing.Required, typing_extensions.Required)
_NOT_REQUIRED = (typing.NotRequired, typing_extensions.NotRequired)
_SEQUENCES = (list, collections.abc.Iterable, collections.abc.Sequence, SequenceNotStr)


def shape_errors(value: Any, hint: Any, path: str = "body") -> list[str]:
    """Where ``value`` (JSON) does not match the anthropic SDK's request type ``hint``
    (its TypedDicts): a missing required key, an unknown key, a wrong literal or type, at
    any depth. Unlike pydantic's lax TypedDict validation it refuses extra keys, and it
    walks ``Iterable`` fields, which pydantic validates only lazily."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return []
    if origin is typing.Annotated or origin in _REQUIRED or origin in _NOT_REQUIRED:
        return shape_errors(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        failures = [shape_errors(value, option, path) for option in args]
        if any(not failure for failure in failures):
            return []
        return min(failures, key=len)  # the closest option's mistakes say most
    if origin is typing.Literal or origin is typing_extensions.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if typing_extensions.is_typeddict(hint):
        return _typeddict_errors(value, hint, path)
    if origin in _SEQUENCES:
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            e for i, item in enumerate(value) for e in shape_errors(item, args[0], f"{path}[{i}]")
        ]
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        item = args[1] if args else Any
        return [e for k, v in value.items() for e in shape_errors(v, item, f"{path}.{k}")]
    if hint is type(None):
        return [] if value is None else [f"{path}: not null"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:
        # IO[bytes], PathLike...: no JSON value is one (the safe answer for what the checker
        # does not know is "no match", never "anything goes").
        ok = False
    return [] if ok else [f"{path}: {value!r} is not a {hint}"]


def _typeddict_errors(value: Any, hint: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: not an object ({hint.__name__})"]
    fields: dict[str, Any] = {}
    required: set[str] = set()
    # The SDK's modules use postponed annotations, so __required_keys__ only knows the
    # totality of each class: Required[...] / NotRequired[...] are read from the hints.
    for name, field in typing.get_type_hints(hint, include_extras=True).items():
        fields[name] = field
        inner = typing.get_origin(field)
        if inner is typing.Annotated:
            inner = typing.get_origin(typing.get_args(field)[0])
        if inner in _REQUIRED or (name in hint.__required_keys__ and inner not in _NOT_REQUIRED):
            required.add(name)
    extra_allowed = getattr(hint, "__pydantic_config__", {}).get("extra") == "allow"
    errors = [
        f"{path}.{k}: not a field of {hint.__name__}"
        for k in value
        if k not in fields and not extra_allowed
    ]
    errors += [f"{path}.{k}: required by {hint.__name__}" for k in required if k not in value]
    for key, item in value.items():
        if key in fields:
            errors += shape_errors(item, fields[key], f"{path}.{key}")
    return errors


def test_the_shape_checker_finds_nested_mistakes() -> None:
    """The checker below is only worth what it refuses."""
    params = anthropic.types.MessageCreateParams
    good = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert shape_errors(good, params) == []
    bad_block = {**good, "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    assert shape_errors(bad_block, params)  # a text block without text
    extra = {**good, "messages": [{"role": "user", "content": "x", "name": "bob"}]}
    assert shape_errors(extra, params)  # a key the Messages API does not have
    choice = {**good, "tool_choice": {"type": "required"}}
    assert shape_errors(choice, params)  # OpenAI's word, not Anthropic's
    source = {
        **good,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "url", "data": "x"}}],
            }
        ],
    }
    assert shape_errors(source, params)  # a url source needs url, has no data
    missing = {"model": MODEL, "messages": good["messages"]}
    assert shape_errors(missing, params)  # max_tokens is required


def assert_valid_request(out: dict[str, Any]) -> None:
    assert shape_errors(out, anthropic.types.MessageCreateParams) == []
    # The SDK types take any dict as input_schema; the API requires type "object".
    assert all(tool["input_schema"]["type"] == "object" for tool in out.get("tools", ()))


def test_the_translated_request_is_a_valid_anthropic_request_shape() -> None:
    """Every key at every depth matches the anthropic SDK's own request types
    (``MessageCreateParams`` and the TypedDicts under it: messages, content blocks, image
    sources, tools, tool choice, system, metadata)."""
    out = translate(
        tools=[
            WEATHER_TOOL,
            {"type": "function", "function": {"name": "now"}},
            {"type": "function", "function": {"name": "ping", "parameters": {}}},
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather where this photo was taken?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
                    },
                    {"id": "toolu_01B", "type": "function", "function": {"name": "now"}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "4 C"},
            {
                "role": "tool",
                "tool_call_id": "toolu_01B",
                "content": [{"type": "text", "text": "12:00"}],
            },
            {"role": "user", "content": "Thanks. And tomorrow?"},
        ],
        stop="END",
        user="u1",
        max_completion_tokens=200,
    )
    # temperature and top_p are left out: the installed anthropic SDK (2.17) no longer
    # lists any sampling parameter in MessageCreateParams, so it cannot vouch for them.
    assert_valid_request(out)
    assert_valid_request({**translate(stream=True), "stream": True})
    for choice in ("auto", "none", {"type": "function", "function": {"name": "get_weather"}}):
        assert_valid_request(translate(tools=[WEATHER_TOOL], tool_choice=choice))


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


ODD_ANSWERS: list[tuple[Any, str]] = [
    ([{"type": "message"}], "the answer"),
    ("Hello", "the answer"),
    (None, "the answer"),
    ({"stop_reason": ["end_turn"]}, "stop_reason"),
    ({"stop_reason": {"kind": "end_turn"}}, "stop_reason"),
    ({"stop_reason": 1}, "stop_reason"),
    ({"id": 42}, "id"),
    ({"content": {"type": "text", "text": "x"}}, "content"),
    ({"content": "Hello"}, "content"),
    ({"content": ["Hello"]}, "a content block"),
    ({"content": [{"type": ["text"], "text": "x"}]}, "a content block's type"),
    ({"content": [{"type": "text", "text": 5}]}, "a text block's text"),
    ({"content": [{"type": "text", "text": ["a"]}]}, "a text block's text"),
    ({"content": [{"type": "text"}]}, "a text block's text"),
    ({"content": [{"type": "tool_use", "id": 1, "name": "f", "input": {}}]}, "id"),
    ({"content": [{"type": "tool_use", "id": "t", "name": None, "input": {}}]}, "name"),
    ({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}, "input"),
]


def odd(fields: Any) -> Any:
    if not isinstance(fields, dict):
        return fields
    return {**message(), **fields}


@pytest.mark.parametrize(("answer", "named"), ODD_ANSWERS)
def test_a_malformed_answer_is_an_upstream_error_naming_what_is_wrong(
    answer: Any, named: str
) -> None:
    with pytest.raises(UpstreamError) as caught:
        to_chat_completion(odd(answer), model="m", created=0)
    assert caught.value.status == 502
    assert caught.value.code == "malformed_answer"
    assert named in caught.value.message


def test_usage_counts_that_are_not_integers_are_left_out() -> None:
    out = completion(message())
    odd_usage = {
        "input_tokens": "10",
        "output_tokens": 5,
        "cache_read_input_tokens": [1],
        "cache_creation_input_tokens": True,
    }
    out = to_chat_completion({**message(), "usage": odd_usage}, model="m", created=0)
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 5, "total_tokens": 5}
    for value in ("x", [1], {"a": 1}, 1.5, None):
        out = to_chat_completion({**message(), "usage": value}, model="m", created=0)
        ChatCompletion.model_validate(out)


ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], ["a"], {}, {"a": 1}, [{}]]


def test_no_odd_value_anywhere_in_an_answer_raises_anything_but_upstream_error() -> None:
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}
    places: list[Any] = [
        lambda v: v,
        lambda v: {**message(), "stop_reason": v},
        lambda v: {**message(), "id": v},
        lambda v: {**message(), "content": v},
        lambda v: {**message(), "content": [v]},
        lambda v: {**message(), "content": [{"type": v, "text": "x"}]},
        lambda v: {**message(), "content": [{"type": "text", "text": v}]},
        lambda v: {**message(), "content": [{**tool, "id": v}]},
        lambda v: {**message(), "content": [{**tool, "name": v}]},
        lambda v: {**message(), "content": [{**tool, "input": v}]},
        lambda v: {**message(), "usage": v},
        lambda v: {**message(), "usage": {"input_tokens": v, "output_tokens": v}},
    ]
    for place in places:
        for value in ODD_VALUES:
            try:
                out = to_chat_completion(place(value), model="m", created=0)
            except UpstreamError:
                continue
            ChatCompletion.model_validate(out)


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


def joined_arguments(chunks: list[dict[str, Any]]) -> dict[int, str]:
    joined: dict[int, str] = {}
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []) if chunk["choices"] else []:
            joined[call["index"]] = joined.get(call["index"], "") + call["function"]["arguments"]
    return joined


def tool_stream(*middle: dict[str, Any], start: dict[str, Any] | None = None) -> list[Any]:
    return [
        MESSAGE_START,
        start or tool_start(0, "toolu_01A"),
        *middle,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]


def test_a_streamed_tool_call_without_arguments_ends_with_an_empty_object() -> None:
    """As the non-streamed answer gives "{}" for the same call, never ""."""
    expected = completion(
        message(content=[{"type": "tool_use", "id": "t", "name": "now", "input": {}}])
    )["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert expected == "{}"
    for middle in ((), (json_delta(0, ""),), (json_delta(0, ""), json_delta(0, ""))):
        _, chunks = run(tool_stream(*middle))
        assert joined_arguments(chunks) == {0: "{}"}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Arguments that did come are not followed by anything.
    _, chunks = run(tool_stream(json_delta(0, ""), json_delta(0, '{"location": "Oslo"}')))
    assert joined_arguments(chunks) == {0: '{"location": "Oslo"}'}
    # A start block that carries its input (no deltas): that input.
    start = tool_start(0, "toolu_01A")
    start["content_block"]["input"] = {"location": "Paris"}
    _, chunks = run(tool_stream(start=start))
    assert json.loads(joined_arguments(chunks)[0]) == {"location": "Paris"}


def test_message_delta_with_cumulative_input_and_cache_counts() -> None:
    """The current API repeats the input and cache counts, cumulative, in message_delta:
    the latest value of each counts once."""
    start = json.loads(json.dumps(MESSAGE_START))
    start["message"]["usage"] = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    events = [*TEXT_STREAM]
    events[0] = start
    events[-2] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 1000,
            "output_tokens": 15,
        },
    }
    _, chunks = run(events, include_usage=True)
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 1225,
        "completion_tokens": 15,
        "total_tokens": 1240,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


ODD_EVENTS: list[Any] = [
    lambda v: {**MESSAGE_START, "message": {**MESSAGE_START["message"], "id": v}},
    lambda v: {**MESSAGE_START, "message": {**MESSAGE_START["message"], "usage": v}},
    lambda v: {"type": "content_block_start", "index": 0, "content_block": v},
    lambda v: {"type": "content_block_start", "index": 0, "content_block": {"type": v}},
    lambda v: {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": v},
    },
    lambda v: {**tool_start(0, "t"), "content_block": {"type": "tool_use", "id": v, "name": "f"}},
    lambda v: {**tool_start(0, "t"), "content_block": {"type": "tool_use", "id": "t", "name": v}},
    lambda v: {
        **tool_start(0, "t"),
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": v},
    },
    lambda v: {
        "type": "content_block_delta",
        "index": v,
        "delta": {"type": "text_delta", "text": "x"},
    },
    lambda v: {"type": "content_block_delta", "index": 0, "delta": v},
    lambda v: {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": v},
    },
    lambda v: {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": v},
    },
    lambda v: {"type": "content_block_stop", "index": v},
    lambda v: {"type": "message_delta", "delta": {"stop_reason": v}, "usage": {"output_tokens": 3}},
    lambda v: {"type": "message_delta", "delta": v, "usage": v},
    lambda v: {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": v},
    },
    lambda v: {"type": "error", "error": v},
]


def test_no_odd_value_in_a_stream_raises_and_every_chunk_is_valid() -> None:
    for make in ODD_EVENTS:
        for value in ODD_VALUES:
            translator = StreamTranslator(model="m", created=0, include_usage=True)
            chunks = translator.feed("message_start", MESSAGE_START)
            chunks += translator.feed("content_block_start", tool_start(0, "t"))
            event = make(value)
            chunks += translator.feed(event["type"], event)
            chunks += translator.feed("message_stop", {"type": "message_stop"})
            for chunk in chunks:
                if "error" in chunk:
                    assert chunk["error"]["type"] == "api_error"
                else:
                    ChatCompletionChunk.model_validate(chunk)


def test_a_malformed_stop_reason_ends_the_stream_with_an_error_chunk() -> None:
    translator, chunks = run(
        [
            MESSAGE_START,
            {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}, "usage": {}},
            {"type": "message_stop"},
        ]
    )
    assert chunks[-1]["error"]["code"] == "malformed_answer"
    assert "stop_reason" in chunks[-1]["error"]["message"]
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
        (409, "conflict_error", 409, "invalid_request_error", openai.ConflictError, True),
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
