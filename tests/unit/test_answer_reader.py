"""AnswerReader: model, usage and finish reason read from an answer as it is relayed, each
event decoded at most once, and only the events that can carry something when no pair needs
the answer's text."""

import json
import time
from typing import Any

import pytest

from proxy.exchange import answer as answer_module
from proxy.exchange.answer import Answer, AnswerReader
from proxy.exchange.outcome import Exchange
from proxy.models import Route


def exchange(route: Route = Route.CHAT) -> Exchange:
    return Exchange(request_id="r", method="POST", route=route, started=time.perf_counter())


def ev(data: str, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {data}\n\n".encode()


CHAT_STREAM = [
    ev(
        '{"id":"c","model":"gpt-4o-2024","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}'
    ),
    ev(
        '{"id":"c","model":"gpt-4o-2024","choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}'
    ),
    ev(
        '{"id":"c","model":"gpt-4o-2024","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
    ),
    ev("[DONE]"),
]


def test_stream_records_model_finish_reason_and_usage() -> None:
    ex = exchange()
    observer = AnswerReader(ex, strip_usage_chunk=False)
    kept = [raw for raw in CHAT_STREAM if observer.accept(raw)]
    assert kept == CHAT_STREAM
    assert (ex.model_answered, ex.finish_reason) == ("gpt-4o-2024", "length")
    assert (ex.input_tokens, ex.output_tokens) == (7, 3)


def test_injected_usage_chunk_is_dropped_but_counted() -> None:
    ex = exchange()
    observer = AnswerReader(ex, strip_usage_chunk=True)
    kept = [raw for raw in CHAT_STREAM if observer.accept(raw)]
    assert kept == [CHAT_STREAM[0], CHAT_STREAM[1], CHAT_STREAM[3]]
    assert (ex.input_tokens, ex.output_tokens) == (7, 3)


def test_error_event_inside_stream_is_noticed_and_relayed() -> None:
    ex = exchange()
    observer = AnswerReader(ex, strip_usage_chunk=True)
    assert observer.accept(CHAT_STREAM[0])
    assert observer.accept(ev('{"error":{"message":"boom","type":"server_error"}}'))
    assert observer.error_event


def test_responses_stream_reads_the_final_event() -> None:
    ex = exchange(Route.RESPONSES)
    observer = AnswerReader(ex, strip_usage_chunk=False)
    final = (
        '{"type":"response.completed","response":{"model":"gpt-4o","status":"completed",'
        '"usage":{"input_tokens":5,"output_tokens":9}}}'
    )
    for raw in (
        ev('{"type":"response.output_text.delta","delta":"x"}', "response.output_text.delta"),
        ev(final, "response.completed"),
    ):
        assert observer.accept(raw)
    assert (ex.model_answered, ex.finish_reason, ex.input_tokens, ex.output_tokens) == (
        "gpt-4o",
        "completed",
        5,
        9,
    )


def test_body_observation_for_chat_and_embeddings() -> None:
    ex = exchange()
    AnswerReader(ex).body(
        b'{"model":"m1","choices":[{"finish_reason":"tool_calls"}],'
        b'"usage":{"prompt_tokens":4,"completion_tokens":2}}',
    )
    assert (ex.model_answered, ex.finish_reason, ex.input_tokens, ex.output_tokens) == (
        "m1",
        "tool_calls",
        4,
        2,
    )
    emb = exchange(Route.EMBEDDINGS)
    AnswerReader(emb).body(b'{"model":"e","data":[],"usage":{"prompt_tokens":3,"total_tokens":3}}')
    assert (emb.input_tokens, emb.output_tokens) == (3, None)


def test_garbage_body_is_ignored() -> None:
    ex = exchange()
    AnswerReader(ex).body(b"<html>bad gateway</html>")
    assert ex.model_answered is None


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    decoded: list[bytes] = []
    real = answer_module._loads

    def counting(data: bytes) -> Any:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(answer_module, "_loads", counting)
    return decoded


def test_only_marked_events_are_decoded_after_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = counting_decodes(monkeypatch)
    ex = exchange()
    observer = AnswerReader(ex, strip_usage_chunk=True)
    plain = ev(
        '{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}'
    )
    stream = [plain] * 50 + CHAT_STREAM[1:]
    kept = [raw for raw in stream if observer.accept(raw)]
    assert len(kept) == 51 + 1  # the injected usage chunk is gone
    assert len(decoded) == 3  # first chunk, finish chunk, usage chunk
    assert (ex.finish_reason, ex.output_tokens) == ("length", 3)


def test_a_shadowed_stream_decodes_each_event_once_and_records_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = counting_decodes(monkeypatch)
    plain = ev(
        '{"id":"c","model":"gpt-4o-2024","choices":[{"index":0,"delta":{"content":"x"},'
        '"finish_reason":null}]}'
    )
    stream = [plain] * 20 + CHAT_STREAM[1:]
    alone = exchange()
    alone_kept = [raw for raw in stream if AnswerReader(alone, strip_usage_chunk=True).accept(raw)]
    decoded.clear()

    shadowed = exchange()
    shadowed.answer = Answer(1000)
    reader = AnswerReader(shadowed, strip_usage_chunk=True)
    kept = [raw for raw in stream if reader.accept(raw)]

    assert kept == alone_kept  # the client gets the same bytes
    assert len(decoded) == 22  # every event with data, once: 20 text, finish, usage
    assert shadowed.answer.text == "x" * 20
    for field in ("model_answered", "finish_reason", "input_tokens", "output_tokens"):
        assert getattr(shadowed, field) == getattr(alone, field)


def test_a_full_answer_stops_decoding_text_but_still_reads_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = counting_decodes(monkeypatch)
    ex = exchange()
    ex.answer = Answer(5)
    reader = AnswerReader(ex, strip_usage_chunk=True)
    plain = ev(
        '{"model":"m","choices":[{"index":0,"delta":{"content":"xyz"},"finish_reason":null}]}'
    )
    for raw in [plain] * 30 + CHAT_STREAM[1:]:
        reader.accept(raw)
    assert (ex.answer.text, ex.answer.truncated) == ("xyzxy", True)
    assert len(decoded) == 4  # two to fill the text, then the finish and usage chunks
    assert (ex.finish_reason, ex.output_tokens) == ("length", 3)


def claude_stream(*tool_input_pieces: str) -> list[bytes]:
    """A Messages API stream: text, then one tool call streaming ``tool_input_pieces``."""
    start = (
        '{"type":"message_start","message":{"id":"msg_1","model":"claude-x",'
        '"usage":{"input_tokens":9,"cache_read_input_tokens":3,"output_tokens":1}}}'
    )
    events = [
        ev(start, "message_start"),
        ev(
            '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            "content_block_start",
        ),
        *[
            ev(
                '{"type":"content_block_delta","index":0,'
                '"delta":{"type":"text_delta","text":"Hi "}}',
                "content_block_delta",
            )
        ]
        * 20,
        ev('{"type":"content_block_stop","index":0}', "content_block_stop"),
        ev(
            '{"type":"content_block_start","index":1,"content_block":'
            '{"type":"tool_use","id":"toolu_1","name":"get_time","input":{}}}',
            "content_block_start",
        ),
        *[
            ev(
                json.dumps(
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                ),
                "content_block_delta",
            )
            for piece in tool_input_pieces
        ],
        ev('{"type":"content_block_stop","index":1}', "content_block_stop"),
        ev(
            '{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":12}}',
            "message_delta",
        ),
        ev('{"type":"message_stop"}', "message_stop"),
    ]
    return events


def test_a_messages_stream_is_read_by_its_own_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = counting_decodes(monkeypatch)
    ex = exchange(Route.MESSAGES)
    reader = AnswerReader(ex)
    assert all(reader.accept(raw) for raw in claude_stream())
    # The model and input counts, the stop reason (by its chat completions name) and the
    # output count: only the two events that carry them are decoded.
    assert (ex.model_answered, ex.finish_reason) == ("claude-x", "tool_calls")
    assert (ex.input_tokens, ex.output_tokens) == (12, 12)  # cache reads count as input
    assert len(decoded) == 2


def test_a_shadowed_messages_stream_captures_text_and_tool_calls() -> None:
    for pieces, arguments in ((('{"zone":', '"UTC"}'), '{"zone":"UTC"}'), ((), "{}")):
        ex = exchange(Route.MESSAGES)
        ex.answer = Answer(max_chars=1000)
        reader = AnswerReader(ex)
        for raw in claude_stream(*pieces):
            reader.accept(raw)
        assert ex.answer.text == "Hi " * 20
        # A call without input streams no delta: `{}`, as the whole answer gives it.
        assert ex.answer.tool_calls() == [("get_time", arguments)]
        assert not reader.error_event


def test_a_messages_body_and_an_error_event() -> None:
    ex = exchange(Route.MESSAGES)
    ex.answer = Answer(max_chars=1000)
    reader = AnswerReader(ex)
    reader.body(
        b'{"type":"message","model":"claude-x","content":[{"type":"text","text":"Hello"},'
        b'{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"max_tokens",'
        b'"usage":{"input_tokens":4,"output_tokens":6}}'
    )
    assert (ex.finish_reason, ex.input_tokens, ex.output_tokens) == ("length", 4, 6)
    assert (ex.answer.text, ex.answer.tool_calls()) == ("Hello", [("f", '{"a":1}')])
    assert not reader.failed
    errored = AnswerReader(exchange(Route.MESSAGES))
    errored.accept(
        ev('{"type":"error","error":{"type":"overloaded_error","message":"x"}}', "error")
    )
    assert errored.error_event
