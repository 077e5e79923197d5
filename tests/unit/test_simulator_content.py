"""Pure generation/rendering logic of the simulated provider (no sockets)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.simulator import SimulatorSettings
from proxy.simulator.chat import chat_body, chat_events, plan_chat
from proxy.simulator.completions import completion_events, plan_completion
from proxy.simulator.content import (
    answer_text,
    embedding_base64,
    embedding_vector,
    request_digest,
    split_even,
    split_words,
    tool_arguments,
    truncate_words,
)
from proxy.simulator.errors import RequestError
from proxy.simulator.faults import Fault, parse_control
from proxy.simulator.responses_api import plan_response, response_events

pytestmark = pytest.mark.timeout(5)

USER = [{"role": "user", "content": "What is the capital of France?"}]


def _data_events(events: list[bytes]) -> list[Any]:
    """Decode ``data:`` events; [DONE] stays a string so tests can see where it is."""
    out: list[Any] = []
    for event in events:
        assert event.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        payload = event[len(b"data: ") : -2]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


# --- text ---------------------------------------------------------------------------------


def test_answer_echoes_prompt_and_is_deterministic() -> None:
    first = answer_text("What is the capital of France?")
    assert first.startswith("Simulated answer to: What is the capital of France?")
    assert answer_text("What is the capital of France?") == first


def test_answer_choices_differ_by_variant() -> None:
    assert answer_text("hi", variant=0) != answer_text("hi", variant=1)


def test_answer_has_enough_words_for_requested_chunks() -> None:
    assert len(answer_text("hi", min_words=50).split()) >= 50


def test_answer_echo_is_bounded_for_huge_prompts() -> None:
    assert len(answer_text("word " * 100_000).split()) < 100


@pytest.mark.parametrize("pieces", [1, 3, 8, 1000])
def test_split_words_reassembles_exactly(pieces: int) -> None:
    text = answer_text("split me into pieces please")
    parts = split_words(text, pieces)
    assert "".join(parts) == text
    assert len(parts) == min(pieces, len(text.split()))
    assert all(part.startswith(" ") for part in parts[1:])


def test_split_even_reassembles_exactly() -> None:
    text = '{"city":"simulated city"}'
    parts = split_even(text, 5)
    assert len(parts) == 5
    assert "".join(parts) == text
    assert split_even("ab", 10) == ["a", "b"]


def test_truncate_words_reports_cut() -> None:
    assert truncate_words("a b c d", 2) == ("a b", True)
    assert truncate_words("a b", 5) == ("a b", False)
    assert truncate_words("a b", None) == ("a b", False)


# --- tool arguments -----------------------------------------------------------------------


def test_tool_arguments_follow_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": ["integer", "null"]},
            "verbose": {"type": "boolean"},
        },
        "required": ["city", "unit", "days"],
    }
    args = orjson.loads(tool_arguments(schema))
    assert set(args) == {"city", "unit", "days"}
    assert isinstance(args["city"], str)
    assert args["unit"] == "celsius"
    assert args["days"] == 1


def test_tool_arguments_without_schema_is_still_an_object() -> None:
    assert isinstance(orjson.loads(tool_arguments(None)), dict)


# --- embeddings ---------------------------------------------------------------------------


def test_embedding_vector_is_unit_length_and_deterministic() -> None:
    vector = embedding_vector("hello", 64)
    assert len(vector) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    assert embedding_vector("hello", 64) == vector
    assert embedding_vector("other", 64) != vector
    assert embedding_vector([1, 2, 3], 8) == embedding_vector([1, 2, 3], 8)


def test_embedding_base64_is_little_endian_float32_of_the_vector() -> None:
    vector = embedding_vector("hello", 16)
    raw = base64.b64decode(embedding_base64(vector))
    assert list(struct.unpack("<16f", raw)) == vector.tolist()


# --- request identity ---------------------------------------------------------------------


def test_digest_ignores_key_order_and_stream_options() -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    reordered = {"stream": True, "messages": USER, "model": "m"}
    injected = {**body, "stream_options": {"include_usage": True}}
    assert request_digest(body) == request_digest(reordered) == request_digest(injected)
    assert request_digest(body) != request_digest({**body, "model": "other"})


# --- per-request control ------------------------------------------------------------------


def test_control_defaults_come_from_settings() -> None:
    settings = SimulatorSettings(first_byte_ms=5, chunk_delay_ms=2, chunks=3)
    control = parse_control(CIMultiDict(), "gpt-4o-mini", settings)
    assert (control.first_byte_ms, control.chunk_delay_ms, control.chunks) == (5, 2, 3)
    assert control.status is None
    assert control.fault is None


def test_control_from_model_name() -> None:
    settings = SimulatorSettings()
    assert parse_control(CIMultiDict(), "sim-status-429", settings).status == 429
    assert parse_control(CIMultiDict(), "sim-drop", settings).fault is Fault.DROP
    assert parse_control(CIMultiDict(), "sim-hang", settings).fault is Fault.HANG
    mid = parse_control(CIMultiDict(), "sim-hang-mid-stream", settings)
    assert mid.fault is Fault.HANG_MID_STREAM


def test_control_headers_win_over_model() -> None:
    headers = CIMultiDict(
        {
            "X-Sim-Status": "503",
            "x-sim-fault": "none",
            "x-sim-chunks": "4",
            "x-sim-first-byte-ms": "1.5",
            "x-sim-retry-after-ms": "20",
        }
    )
    control = parse_control(headers, "sim-drop", SimulatorSettings())
    assert control.status == 503
    assert control.fault is None
    assert control.chunks == 4
    assert control.first_byte_ms == 1.5
    assert control.retry_after_ms == 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-sim-status", "teapot"),
        ("x-sim-fault", "explode"),
        ("x-sim-chunks", "0"),
        ("x-sim-first-byte-ms", "-1"),
        ("x-sim-chunk-delay-ms", "nan"),
        ("x-sim-retry-after-ms", "soon"),
    ],
)
def test_control_rejects_bad_header_values(name: str, value: str) -> None:
    with pytest.raises(RequestError, match=name):
        parse_control(CIMultiDict({name: value}), "m", SimulatorSettings())


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="chunks"):
        SimulatorSettings(chunks=0)


# --- chat rendering -----------------------------------------------------------------------


def test_chat_stream_without_include_usage_has_no_usage_key() -> None:
    events = _data_events(chat_events(plan_chat({"model": "m", "messages": USER}, 4), 4))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_with_include_usage_matches_openai() -> None:
    body = {
        "model": "m",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _data_events(chat_events(plan_chat(body, 4), 4))
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in chunks)
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_chat_stream_content_matches_non_stream_answer() -> None:
    body = {"model": "m", "messages": USER}
    message = orjson.loads(chat_body(plan_chat(body, 8)))["choices"][0]["message"]
    events = _data_events(chat_events(plan_chat({**body, "stream": True}, 8), 8))[:-1]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == message["content"]
    content_events = [e for e in events if e["choices"][0]["delta"].get("content")]
    assert len(content_events) == 8


def test_chat_n_choices_are_interleaved_by_index() -> None:
    answer = plan_chat({"model": "m", "messages": USER, "n": 3}, 2)
    events = _data_events(chat_events(answer, 2))[:-1]
    indices = [e["choices"][0]["index"] for e in events]
    assert indices[:6] == [0, 1, 2, 0, 1, 2]
    finals = [e["choices"][0] for e in events if e["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1, 2]


def test_chat_max_tokens_cuts_with_length() -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = orjson.loads(chat_body(plan_chat({"model": "m", "messages": USER, field: 3}, 8)))
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        assert len(choice["message"]["content"].split()) == 3
        assert body["usage"]["completion_tokens"] == 3


def _tools(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        for i in range(count)
    ]


def test_chat_stream_tool_calls_reassemble_to_json() -> None:
    body = {"model": "m", "messages": USER, "tools": _tools(3), "stream": True}
    events = _data_events(chat_events(plan_chat(body, 5), 5))[:-1]
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        for call in event["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            if "id" in call:
                assert call["type"] == "function"
                assert call["function"]["arguments"] == ""
                entry["name"] = call["function"]["name"]
            entry["arguments"] += call["function"]["arguments"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["tool_0", "tool_1"]
    assert all(isinstance(orjson.loads(c["arguments"]), dict) for c in calls.values())
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"parallel_tool_calls": False}, ["tool_0"]),
        ({"tool_choice": {"type": "function", "function": {"name": "tool_1"}}}, ["tool_1"]),
        ({"tool_choice": "required"}, ["tool_0", "tool_1"]),
    ],
)
def test_chat_tool_selection(extra: dict[str, Any], expected: list[str]) -> None:
    body = {"model": "m", "messages": USER, "tools": _tools(2), **extra}
    message = orjson.loads(chat_body(plan_chat(body, 8)))["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == expected


def test_chat_tool_choice_none_answers_with_text() -> None:
    body = {"model": "m", "messages": USER, "tools": _tools(2), "tool_choice": "none"}
    choice = orjson.loads(chat_body(plan_chat(body, 8)))["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": USER, "n": 0}, "n"),
        ({"model": "m", "messages": USER, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "m", "messages": USER, "stream_options": {"include_usage": True}}, None),
    ],
)
def test_chat_rejects_invalid_requests(body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        plan_chat(body, 8)
    assert caught.value.param == (param or "stream_options")


# --- legacy completions and Responses API -------------------------------------------------


def test_completion_stream_with_multiple_prompts_numbers_choices_prompt_major() -> None:
    body = {"model": "m", "prompt": ["a", "b"], "n": 2, "stream": True}
    events = _data_events(completion_events(plan_completion(body, 2), 2))[:-1]
    assert all(e["object"] == "text_completion" for e in events)
    finals = [e["choices"][0]["index"] for e in events if e["choices"][0]["finish_reason"]]
    assert sorted(finals) == [0, 1, 2, 3]


def test_responses_events_are_named_and_sequenced() -> None:
    answer = plan_response({"model": "m", "input": "hi", "instructions": "be brief"}, 3)
    events = response_events(answer, 3)
    seen = []
    for seq, event in enumerate(events):
        name_line, data_line, *_ = event.decode().split("\n")
        name = name_line.removeprefix("event: ")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        assert data["sequence_number"] == seq
        seen.append(name)
    assert seen[0] == "response.created"
    assert seen[-1] == "response.completed"
    assert seen.count("response.output_text.delta") == 3
    assert not any(b"[DONE]" in e for e in events)
    assert answer.response["instructions"] == "be brief"


def test_responses_max_output_tokens_makes_it_incomplete() -> None:
    answer = plan_response({"model": "m", "input": "hi", "max_output_tokens": 2}, 8)
    assert answer.response["status"] == "incomplete"
    assert answer.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response_events(answer, 8)[-1].startswith(b"event: response.incomplete\n")
