import re

import pytest

from proxy.sse import SSESplitter, parse_event

STREAM = (
    b'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'event: response.output_text.delta\ndata: {"delta":"lo"}\n\n'
    b"data: line one\ndata: line two\r\n\r\n"
    b": keep-alive comment\n\n"
    b"data: [DONE]\n\n"
)


def split_all(chunks: list[bytes]) -> list[bytes]:
    splitter = SSESplitter()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    tail = splitter.flush()
    return [*events, tail] if tail else events


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte_gives_the_same_events_and_bytes(cut: int) -> None:
    whole = split_all([STREAM])
    assert split_all([STREAM[:cut], STREAM[cut:]]) == whole
    assert b"".join(whole) == STREAM


def test_one_byte_at_a_time() -> None:
    events = split_all([bytes([b]) for b in STREAM])
    assert len(events) == 5
    assert b"".join(events) == STREAM


def test_parse_event_fields() -> None:
    events = split_all([STREAM])
    named = parse_event(events[1])
    assert named.event == "response.output_text.delta"
    assert named.data == b'{"delta":"lo"}'
    assert parse_event(events[2]).data == b"line one\nline two"
    assert parse_event(events[3]).data == b""
    assert parse_event(events[4]).is_done


def test_unterminated_last_event_is_kept_for_flush() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\n\ndata: b") == [b"data: a\n\n"]
    assert splitter.pending == len(b"data: b")
    assert splitter.flush() == b"data: b"


def test_an_event_that_never_ends_is_not_buffered_without_limit() -> None:
    splitter = SSESplitter(max_pending=1000)
    data = b"data: " + b"x" * 5000
    pieces: list[bytes] = []
    for start in range(0, len(data), 300):
        pieces.extend(splitter.feed(data[start : start + 300]))
        assert splitter.pending <= 1000
    pieces.extend(splitter.feed(b"\n\ndata: next\n\n"))
    assert b"".join(pieces) == data + b"\n\ndata: next\n\n"
    assert pieces[-1] == b"data: next\n\n"


def _line_by_line(raw: bytes) -> tuple[str | None, bytes]:
    """What the spec's line-by-line reading gives (the parser before its quick path)."""
    event: str | None = None
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\n|\r", raw):
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        elif line.startswith(b"event:"):
            value = line[7:] if line.startswith(b"event: ") else line[6:]
            event = value.decode("utf-8", "replace")
    return event, b"\n".join(data)


@pytest.mark.parametrize(
    "raw",
    [
        b'event: message_start\ndata: {"type":"message_start"}\n\n',
        b'data: {"choices":[]}\n\n',
        b"data: [DONE]\n\n",
        b"event: ping\r\ndata: {}\r\n\r\n",
        b"data: a\ndata: b\n\n",
        b": keep-alive\n\n",
        b"event: x\ndata: {}\nid: 3\n\n",
        b'data:{"no":"space"}\n\n',
        b"event: e\ndata: \n\n",
        b"event: e\n\n",
        b"data: unterminated",
        b"event: caf\xc3\xa9\ndata: {}\n\n",
    ],
)
def test_every_shape_parses_as_the_spec_reads_it(raw: bytes) -> None:
    event = parse_event(raw)
    assert (event.event, event.data) == _line_by_line(raw)
