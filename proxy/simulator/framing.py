"""Server-sent-event framing for the chat/completions chunk streams and the Responses API.

Every chunk of one stream shares the same ``id``/``created``/``model`` header, so
that part is encoded once and each event only serialises its small ``choices``
list; this keeps the per-event CPU cost low for latency benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import orjson

DONE: Final = b"data: [DONE]\n\n"


class ChunkFramer:
    """Encodes ``data: {...header, "choices": [...]}\\n\\n`` events for one stream."""

    __slots__ = ("_prefix", "_suffix", "_usage_prefix")

    def __init__(self, header: Mapping[str, Any], include_usage: bool) -> None:
        opened = b"data: " + orjson.dumps(header)[:-1]  # drop the closing brace
        self._prefix = opened + b',"choices":'
        # OpenAI puts "usage":null on every chunk only when include_usage was requested.
        self._suffix = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._usage_prefix = opened + b',"choices":[],"usage":'

    def choices(self, choices: Sequence[Mapping[str, Any]]) -> bytes:
        return self._prefix + orjson.dumps(choices) + self._suffix

    def usage(self, usage: Mapping[str, Any]) -> bytes:
        return self._usage_prefix + orjson.dumps(usage) + b"}\n\n"


def interleave(per_choice: Sequence[Sequence[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Round-robin the choices' chunks so ``n > 1`` streams mix indices like OpenAI's do."""
    longest = max((len(chunks) for chunks in per_choice), default=0)
    for step in range(longest):
        for chunks in per_choice:
            if step < len(chunks):
                yield chunks[step]


def named_event(name: str, data: Mapping[str, Any]) -> bytes:
    """Responses API framing: an ``event:`` line naming the type, then the JSON data."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
