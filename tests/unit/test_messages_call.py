"""A chat completions call on the Messages API wire: which headers go, and how a stream that
breaks or stops early is told to the client."""

from __future__ import annotations

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange.messages_call import (
    ChatStream,
    chat_answer,
    client_key,
    messages_call,
    messages_headers,
)


def client(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


OPENAI_CLIENT = client(
    ("Authorization", "Bearer sk-caller"),
    ("X-Goog-Api-Key", "g-caller"),
    ("OpenAI-Organization", "org-1"),
    ("Content-Type", "application/json; charset=utf-8"),
    ("traceparent", "00-abc-def-01"),
    ("X-Prompt-Slug", "support"),
    ("Connection", "keep-alive"),
)


def test_the_providers_key_goes_as_x_api_key_and_the_callers_never() -> None:
    headers = messages_headers(
        OPENAI_CLIENT, "sk-ant-provider", stream=True, drop=frozenset({"x-prompt-slug"})
    )
    assert dict(headers) == {
        # Relayed as to any provider: tracing survives the translation.
        "traceparent": "00-abc-def-01",
        "Accept-Encoding": "identity",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant-provider",
    }


def test_without_a_provider_key_the_callers_own_is_forwarded_as_x_api_key() -> None:
    assert messages_headers(OPENAI_CLIENT, None, stream=False)["x-api-key"] == "sk-caller"
    anthropic_style = client(("x-api-key", "sk-ant-caller"))
    assert messages_headers(anthropic_style, None, stream=False)["x-api-key"] == "sk-ant-caller"
    assert "x-api-key" not in messages_headers(client(), None, stream=False)
    assert client_key(client(("Authorization", "Basic abc"))) is None


def test_the_call_keeps_what_the_answer_needs() -> None:
    call = messages_call(
        {
            "model": "claude-x",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        default_max_tokens=321,
    )
    assert (call.model, call.stream, call.include_usage) == ("claude-x", True, True)
    assert orjson.loads(call.body)["max_tokens"] == 321


def events(*payloads: dict[str, object]) -> bytes:
    return b"".join(
        b"event: " + str(p["type"]).encode() + b"\ndata: " + orjson.dumps(p) + b"\n\n"
        for p in payloads
    )


START = {
    "type": "message_start",
    "message": {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}},
}
TEXT = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
DELTA = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}


def test_a_stream_split_anywhere_gives_the_same_chunks() -> None:
    wire = events(START, TEXT, DELTA, {"type": "message_stop"})
    whole = ChatStream("claude-x", include_usage=False).feed(wire)
    stream = ChatStream("claude-x", include_usage=False)
    pieces = [c for i in range(len(wire)) for c in stream.feed(wire[i : i + 1])]
    assert [c["choices"] for c in pieces] == [c["choices"] for c in whole]
    assert stream.finished
    assert stream.usage()["prompt_tokens"] == 5


def test_an_event_that_is_not_json_ends_the_stream_with_an_error() -> None:
    stream = ChatStream("claude-x", include_usage=False)
    chunks = stream.feed(events(START, TEXT) + b"event: content_block_delta\ndata: {oops\n\n")
    assert chunks[-1]["error"]["code"] == "malformed_answer"
    assert stream.finished
    assert stream.feed(events(DELTA)) == []  # nothing after the error


def test_a_stream_that_stops_before_message_stop_is_not_finished() -> None:
    stream = ChatStream("claude-x", include_usage=False)
    stream.feed(events(START, TEXT, DELTA))
    assert stream.flush() == []
    assert not stream.finished


def test_an_error_that_is_not_json_still_answers_in_the_openai_shape() -> None:
    # A 413 from the load balancer in front of the API is HTML.
    answer = chat_answer(413, b"<html>too large</html>", {}, "claude-x")
    assert answer.status == 413
    assert orjson.loads(answer.body)["error"]["code"] == "request_too_large"
    overloaded = chat_answer(
        529,
        orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        {"retry-after": "3", "x-other": "no"},
        "claude-x",
    )
    assert (overloaded.status, overloaded.headers) == (503, {"retry-after": "3"})


def test_events_of_every_shape_translate_alike() -> None:
    plain = events(START, TEXT, DELTA, {"type": "message_stop"})
    crlf = plain.replace(b"\n", b"\r\n")
    # A provider whose data leaves the type to the event's name.
    untyped = b"".join(
        b"event: "
        + str(p["type"]).encode()
        + b"\ndata: "
        + orjson.dumps({k: v for k, v in p.items() if k != "type"})
        + b"\n\n"
        for p in (START, TEXT, DELTA, {"type": "message_stop"})
    )
    pinged = plain.replace(
        b"event: content_block_start",
        b'event: ping\ndata: {"type": "ping"}\n\nevent: content_block_start',
        1,
    )
    expected = [c["choices"] for c in ChatStream("claude-x", include_usage=False).feed(plain)]
    for wire in (crlf, untyped, pinged):
        stream = ChatStream("claude-x", include_usage=False)
        assert [c["choices"] for c in stream.feed(wire)] == expected
        assert stream.finished
