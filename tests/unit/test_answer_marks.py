"""The byte searches that decide which stream events are decoded agree with the regular
expressions they replaced, on every event: a missed event would lose a usage count, a
finish reason or an error."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.exchange.answer import needs_look
from proxy.sse import SSESplitter

# What the proxy used before: one regex pass over each raw event.
_MARKS = (
    rb'"usage":\s*\{|"finish_reason":\s*"|"error"|event:\s*error'
    rb"|response\.(?:completed|incomplete|failed)"
)
_BEFORE = re.compile(_MARKS)
_BEFORE_AFTER_CAP = re.compile(_MARKS + rb"|tool_calls|function_call|response\.output_item")
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")

TOKENS = [
    b'"usage":', b'"finish_reason":', b"event:", b"error", b'"error"', b"{", b'"', b"null",
    b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"data: ", b"response.", b"completed",
    b"incomplete", b"failed", b"tool_calls", b"function_call", b"response.output_item",
    b'"stop"', b"x", b":", b'"usage"', b'"finish_reason"',
]  # fmt: skip
events = st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join)

REAL = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"content":"Hi"},"finish_reason":null}],"usage":null}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}\n\n',
    b'event: error\ndata: {"error":{"message":"x"}}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n\n',
    b"data: [DONE]\n\n",
]


@given(events)
@settings(max_examples=3000)
def test_the_byte_search_marks_what_the_regex_marked(raw: bytes) -> None:
    assert needs_look(raw) == (_BEFORE.search(raw) is not None)
    assert needs_look(raw, after_cap=True) == (_BEFORE_AFTER_CAP.search(raw) is not None)


def test_real_events() -> None:
    for raw in REAL:
        assert needs_look(raw) == (_BEFORE.search(raw) is not None), raw
        assert needs_look(raw, after_cap=True) == (_BEFORE_AFTER_CAP.search(raw) is not None)
    assert not needs_look(REAL[0])  # the common content chunk is not decoded
    assert needs_look(REAL[1])  # a finish reason
    assert needs_look(REAL[2])  # the usage chunk


def _split_as_before(data: bytes) -> list[bytes]:
    events, start = [], 0
    for match in _EVENT_END.finditer(data):
        events.append(data[start : match.end()])
        start = match.end()
    return events


@given(st.lists(st.sampled_from([b"data: x", b"\n", b"\r", b"\r\n", b"a", b":"]), max_size=40))
@settings(max_examples=2000)
def test_the_splitter_cuts_where_the_regex_cut(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    for size in (1, 3, len(data) or 1):
        splitter = SSESplitter()
        got: list[bytes] = []
        for i in range(0, len(data), size):
            got += splitter.feed(data[i : i + size])
        assert got == _split_as_before(data), (size, data)
        assert b"".join(got) + splitter.flush() == data
