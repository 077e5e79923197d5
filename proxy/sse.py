"""Incremental Server-Sent Events splitting that never changes a byte.

The proxy forwards upstream SSE bytes unchanged, but it has to see event boundaries: to
parse a tee'd copy (usage, finish reason) and to drop the one usage chunk it asked for on
the client's behalf. ``SSESplitter`` cuts the byte stream into whole raw events; joining
the raw events it returns gives back exactly the bytes fed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at an empty line; lines end with CRLF, LF or CR (WHATWG SSE spec).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")
_LINE_SPLIT = re.compile(rb"\r\n|\n|\r")
# A boundary is at most 4 bytes long, so it may straddle two chunks by 3 bytes.
_OVERLAP = 3
#: A provider that never ends an event must not make us buffer without limit: past this,
#: the unfinished bytes are handed on as they are.
MAX_PENDING = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    raw: bytes
    event: str | None
    data: bytes

    @property
    def is_done(self) -> bool:
        return self.data == b"[DONE]"


def parse_event(raw: bytes) -> SSEEvent:
    """Extract the ``event`` name and the joined ``data`` lines of one raw event."""
    quick = _common_event(raw)
    if quick is not None:
        return quick
    event: str | None = None
    data_lines: list[bytes] = []
    for line in _LINE_SPLIT.split(raw):
        if line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            value = line[6:]
            event = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
    return SSEEvent(raw=raw, event=event, data=b"\n".join(data_lines))


def _common_event(raw: bytes) -> SSEEvent | None:
    """The event as providers send nearly all of them, ``[event: NAME\\n]data: VALUE\\n\\n``
    (Anthropic names each event, OpenAI none), read with a few byte searches; None for any
    other shape (CRs, comments, several data lines, other fields), which the line-by-line
    parser reads. A stream of translated events decodes each one, and the regex split was
    two thirds of what a translated stream cost (loadtest/README.md)."""
    event: str | None = None
    rest = raw
    if raw.startswith(b"event: "):
        end = raw.find(b"\n", 7)
        if end == -1:
            return None
        event = raw[7:end].decode("utf-8", "replace")
        rest = raw[end + 1 :]
    if not rest.startswith(b"data: ") or not rest.endswith(b"\n\n"):
        return None
    data = rest[6:-2]
    if b"\n" in data or b"\r" in data or (event is not None and "\r" in event):
        return None
    return SSEEvent(raw=raw, event=event, data=data)


class SSESplitter:
    """Feed bytes as they arrive; get back the complete raw events they finish (and, past
    ``max_pending`` unfinished bytes, those bytes as they are)."""

    __slots__ = ("_buffer", "_max_pending", "_scanned")

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        self._max_pending = max_pending

    def feed(self, chunk: bytes) -> list[bytes]:
        if (
            not self._buffer
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n\n") == len(chunk) - 2
            and b"\r" not in chunk
        ):
            return [chunk]  # one whole event in one chunk, as providers mostly send them
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        pos = max(0, self._scanned - _OVERLAP)
        buffer = self._buffer
        # Without a CR only `\n\n` can end an event: one byte search instead of the regex,
        # which tried its five alternatives at every byte (most providers send LF only).
        plain = buffer.find(b"\r", pos) == -1
        while True:
            if plain:
                found = buffer.find(b"\n\n", pos)
                if found == -1:
                    break
                end = found + 2
            else:
                match = _EVENT_END.search(buffer, pos)
                if match is None:
                    break
                end = match.end()
            events.append(bytes(buffer[start:end]))
            start = pos = end
        if start:
            del buffer[:start]
        if len(buffer) > self._max_pending:
            events.append(bytes(buffer))
            buffer.clear()
        self._scanned = len(buffer)
        return events

    @property
    def pending(self) -> int:
        """Bytes of an event not finished yet."""
        return len(self._buffer)

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated last event)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest
