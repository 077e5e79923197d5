"""What a pair records of each route's answer, streamed or whole: captured by the same read
that records usage (``AnswerReader`` with an ``Answer``), capped, and never raising."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.exchange.answer import MAX_TOOL_CALLS, Answer, AnswerReader
from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.shadow.models import ArmResult


class OutputCapture:
    """One exchange read with its answer captured, as a pair half (``ArmResult.of``)."""

    def __init__(self, route: Route, max_chars: int) -> None:
        self.answer = Answer(max_chars)
        self.exchange = Exchange(
            request_id="r", method="POST", route=route, started=0.0, answer=self.answer
        )
        self.reader = AnswerReader(self.exchange)

    def event(self, raw: bytes) -> None:
        assert self.reader.accept(raw)  # everything is relayed

    def body(self, body: bytes) -> None:
        self.reader.body(body)

    def result(self, version: int) -> ArmResult:
        self.exchange.version = str(version)
        return ArmResult.of(self.exchange)

    @property
    def has_content(self) -> bool:
        return self.answer.has_content

    @property
    def upstream_error(self) -> bool:
        return self.reader.error_event or self.reader.failed

    @property
    def garbage(self) -> int:
        return self.reader.garbage


def sse(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    return sse(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
    )


USAGE_CHUNK = sse(
    {"id": "c1", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
)
DONE = b"data: [DONE]\n\n"


def feed(capture: OutputCapture, events: list[bytes]) -> None:
    for raw in events:
        capture.event(raw)


# -- chat completions ---------------------------------------------------------------------


def test_chat_body_gives_text_finish_reason_model_and_usage() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    capture.body(
        orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello there"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2},
            }
        )
    )
    arm = capture.result(3)
    assert (arm.version, arm.text, arm.finish_reason, arm.model) == (
        3,
        "Hello there",
        "stop",
        "gpt-4o-mini",
    )
    assert (arm.input_tokens, arm.output_tokens, arm.truncated) == (5, 2, False)
    assert arm.tool_calls == []


def test_chat_stream_joins_deltas_and_reads_the_usage_chunk() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    capture.event(chat_chunk({"role": "assistant", "content": ""}))
    assert not capture.has_content  # a role-only chunk is not the first token
    feed(
        capture,
        [
            chat_chunk({"content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, finish="stop"),
            USAGE_CHUNK,
            DONE,
        ],
    )
    assert capture.has_content
    arm = capture.result(1)
    assert (arm.text, arm.finish_reason, arm.model) == ("Hello", "stop", "gpt-4o-mini-2024-07-18")
    assert (arm.input_tokens, arm.output_tokens) == (11, 7)


def test_chat_stream_with_crlf_framing() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    raw = chat_chunk({"content": "crlf"}).replace(b"\n", b"\r\n")
    capture.event(raw)
    assert capture.result(1).text == "crlf"


def test_parallel_tool_call_deltas_are_accumulated_by_index() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    feed(
        capture,
        [
            chat_chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                }
            ),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chat_chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_b", "function": {"name": "get_time"}},
                    ]
                }
            ),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":"CET"}'}}]}),
            chat_chunk({}, finish="tool_calls"),
        ],
    )
    arm = capture.result(2)
    assert [c.to_dict() for c in arm.tool_calls] == [
        {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"name": "get_time", "arguments": '{"tz":"CET"}'},
    ]
    assert arm.finish_reason == "tool_calls"
    assert arm.text == ""


def test_tool_index_starting_at_one_and_arguments_in_one_burst() -> None:
    # Providers that number calls from 1 (litellm#32759) or send the arguments whole at the
    # end (litellm#38926) must give the same result.
    capture = OutputCapture(Route.CHAT, 1000)
    feed(
        capture,
        [
            chat_chunk({"tool_calls": [{"index": 1, "function": {"name": "lookup"}}]}),
            chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"id": 7}'}}]}),
        ],
    )
    assert [c.to_dict() for c in capture.result(1).tool_calls] == [
        {"name": "lookup", "arguments": '{"id": 7}'}
    ]


def test_a_name_repeated_on_every_delta_is_kept_once() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    feed(
        capture,
        [
            chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "}"}}]}),
        ],
    )
    assert [c.to_dict() for c in capture.result(1).tool_calls] == [{"name": "f", "arguments": "{}"}]


def test_chat_body_tool_calls_and_legacy_function_call() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    capture.body(
        orjson.dumps(
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "content": None,
                            "tool_calls": [
                                {"id": "x", "function": {"name": "a", "arguments": "{}"}},
                                {"id": "y", "function": {"name": "b", "arguments": '{"k":1}'}},
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ]
            }
        )
    )
    assert [(c.name, c.arguments) for c in capture.result(1).tool_calls] == [
        ("a", "{}"),
        ("b", '{"k":1}'),
    ]

    legacy = OutputCapture(Route.CHAT, 1000)
    feed(
        legacy,
        [
            chat_chunk({"function_call": {"name": "old_style", "arguments": ""}}),
            chat_chunk({"function_call": {"arguments": '{"q":'}}),
            chat_chunk({"function_call": {"arguments": '"x"}'}}, finish="function_call"),
        ],
    )
    arm = legacy.result(1)
    assert [c.to_dict() for c in arm.tool_calls] == [
        {"name": "old_style", "arguments": '{"q":"x"}'}
    ]
    assert arm.finish_reason == "function_call"


def test_only_the_first_choice_is_compared() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    feed(
        capture,
        [
            chat_chunk({"content": "first"}, index=0),
            chat_chunk({"content": "SECOND"}, index=1),
            chat_chunk({}, finish="length", index=1),
            chat_chunk({}, finish="stop", index=0),
        ],
    )
    arm = capture.result(1)
    assert (arm.text, arm.finish_reason) == ("first", "stop")


def test_the_first_choice_finish_reason_is_the_pairs_whatever_the_order() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    feed(
        capture, [chat_chunk({}, finish="stop", index=0), chat_chunk({}, finish="length", index=1)]
    )
    assert capture.result(1).finish_reason == "stop"


def test_an_error_event_in_the_stream_is_flagged() -> None:
    capture = OutputCapture(Route.CHAT, 1000)
    feed(capture, [chat_chunk({"content": "par"}), sse({"error": {"message": "overloaded"}})])
    assert capture.upstream_error
    assert capture.result(1).text == "par"


# -- completions --------------------------------------------------------------------------


def test_completions_stream_and_body() -> None:
    stream = OutputCapture(Route.COMPLETIONS, 1000)
    for piece, finish in (("Once", None), (" upon", None), ("", "length")):
        stream.event(
            sse(
                {
                    "model": "gpt-3.5-turbo-instruct",
                    "choices": [{"index": 0, "text": piece, "finish_reason": finish}],
                }
            )
        )
    stream.event(DONE)
    arm = stream.result(1)
    assert (arm.text, arm.finish_reason, arm.model) == (
        "Once upon",
        "length",
        "gpt-3.5-turbo-instruct",
    )

    body = OutputCapture(Route.COMPLETIONS, 1000)
    body.body(
        orjson.dumps(
            {
                "choices": [{"index": 0, "text": "a time", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        )
    )
    arm = body.result(1)
    assert (arm.text, arm.finish_reason, arm.input_tokens, arm.output_tokens) == (
        "a time",
        "stop",
        3,
        2,
    )


# -- Responses API ------------------------------------------------------------------------

RESPONSE_USAGE = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}


def test_responses_body_gives_message_text_and_function_calls() -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    capture.body(
        orjson.dumps(
            {
                "object": "response",
                "model": "gpt-4.1",
                "status": "completed",
                "output": [
                    {"type": "reasoning", "summary": []},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [
                            {"type": "output_text", "text": "Part one. "},
                            {"type": "output_text", "text": "Part two."},
                        ],
                    },
                    {
                        "type": "function_call",
                        "name": "search",
                        "arguments": '{"q":"x"}',
                        "call_id": "c",
                    },
                ],
                "usage": RESPONSE_USAGE,
            }
        )
    )
    arm = capture.result(4)
    assert arm.text == "Part one. Part two."
    assert [c.to_dict() for c in arm.tool_calls] == [{"name": "search", "arguments": '{"q":"x"}'}]
    assert (arm.finish_reason, arm.model, arm.input_tokens, arm.output_tokens) == (
        "completed",
        "gpt-4.1",
        9,
        4,
    )


def test_responses_incomplete_reports_its_reason() -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    capture.body(
        orjson.dumps(
            {
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "output": [],
            }
        )
    )
    assert capture.result(1).finish_reason == "max_output_tokens"


def responses_stream() -> list[bytes]:
    final = {
        "model": "gpt-4.1",
        "status": "completed",
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi there"}]},
            {"type": "function_call", "name": "lookup", "arguments": '{"id":1}'},
        ],
        "usage": RESPONSE_USAGE,
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"model": "gpt-4.1", "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message"}},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"},
        {"type": "response.output_text.delta", "output_index": 0, "delta": " there"},
        {"type": "response.output_text.done", "output_index": 0, "text": "Hi there"},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "name": "lookup", "arguments": ""},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '{"id"'},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": ":1}"},
        {
            "type": "response.function_call_arguments.done",
            "output_index": 1,
            "arguments": '{"id":1}',
        },
        {"type": "response.output_item.done", "output_index": 1, "item": final["output"][1]},
        {"type": "response.completed", "response": final},
    ]
    return [sse(e, event=e["type"]) for e in events]


def test_responses_stream_reads_deltas_and_the_final_object() -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    feed(capture, responses_stream())
    arm = capture.result(2)
    # The deltas gave the text; the final object must not add it a second time.
    assert arm.text == "Hi there"
    assert [c.to_dict() for c in arm.tool_calls] == [{"name": "lookup", "arguments": '{"id":1}'}]
    assert (arm.finish_reason, arm.input_tokens, arm.output_tokens, arm.model) == (
        "completed",
        9,
        4,
        "gpt-4.1",
    )


def test_responses_stream_without_event_lines_uses_the_data_type() -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    feed(capture, [raw.split(b"\n", 1)[1] for raw in responses_stream()])
    assert capture.result(1).text == "Hi there"


def test_responses_stream_with_only_a_final_object_still_has_the_text() -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    capture.event(responses_stream()[-1])
    assert capture.result(1).text == "Hi there"


@pytest.mark.parametrize(
    "raw",
    [
        sse({"type": "error", "message": "boom"}, event="error"),
        sse({"type": "response.failed", "response": {"status": "failed", "error": {"x": 1}}}),
    ],
    ids=["error-event", "response-failed"],
)
def test_responses_stream_errors_are_flagged(raw: bytes) -> None:
    capture = OutputCapture(Route.RESPONSES, 1000)
    capture.event(raw)
    assert capture.upstream_error


# -- caps and garbage ---------------------------------------------------------------------


def test_text_is_cut_at_max_chars_and_marked_truncated() -> None:
    capture = OutputCapture(Route.CHAT, 10)
    feed(capture, [chat_chunk({"content": "hello "}) for _ in range(5)])
    feed(capture, [chat_chunk({}, finish="length"), USAGE_CHUNK])
    arm = capture.result(1)
    assert arm.text == "hello hell"
    assert arm.truncated
    # What comes after the cap is still read.
    assert (arm.finish_reason, arm.output_tokens) == ("length", 7)


def test_text_that_fits_exactly_is_not_truncated() -> None:
    capture = OutputCapture(Route.CHAT, 10)
    feed(capture, [chat_chunk({"content": "0123456789"}), chat_chunk({}, finish="stop")])
    arm = capture.result(1)
    assert (arm.text, arm.truncated) == ("0123456789", False)
    capture.event(chat_chunk({"content": "!"}))
    assert capture.result(1).truncated


def test_tool_arguments_and_tool_count_are_capped() -> None:
    capture = OutputCapture(Route.CHAT, 8)
    capture.event(
        chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "x" * 50}}]})
    )
    arm = capture.result(1)
    assert (arm.tool_calls[0].arguments, arm.truncated) == ("x" * 8, True)

    many = OutputCapture(Route.CHAT, 100)
    for index in range(MAX_TOOL_CALLS + 20):
        many.event(chat_chunk({"tool_calls": [{"index": index, "function": {"name": "g"}}]}))
    arm = many.result(1)
    assert len(arm.tool_calls) == MAX_TOOL_CALLS
    assert arm.truncated


GARBAGE = [
    b"",
    b": keep-alive comment\n\n",
    b"data: {not json\n\n",
    b"\xff\xfe\x00data:\x80\n\n",
    b"data: [1, 2, 3]\n\n",
    b'data: {"choices": "nope"}\n\n',
    b'data: {"choices": [{"index": 0, "delta": "text"}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": 5, "tool_calls": "x"}}]}\n\n',
    b'data: {"choices": [{"delta": {"tool_calls": [1, {"index": "a"}, {"function": []}]}}]}\n\n',
    b'data: {"usage": {"prompt_tokens": "many"}, "model": 7}\n\n',
    b'data: {"type": "response.output_text.delta", "delta": null}\n\n',
    b'data: {"type": "response.completed", "response": {"output": [1, {"type": "message"}]}}\n\n',
]


@pytest.mark.parametrize("route", [Route.CHAT, Route.COMPLETIONS, Route.RESPONSES])
def test_garbage_never_raises_and_leaves_a_usable_result(route: Route) -> None:
    capture = OutputCapture(route, 100)
    for raw in GARBAGE:
        capture.event(raw)
    for body in (b"", b"<html>502</html>", b"[]", b"null", b'{"choices": null, "output": 3}'):
        capture.body(body)
    arm = capture.result(1)
    assert arm.text == ""
    assert capture.garbage > 0
    assert not capture.has_content
