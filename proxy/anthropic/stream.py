"""A Messages API stream, translated to chat completion chunks one event at a time.

``StreamTranslator.feed(event, data)`` takes one SSE event (its name and its parsed
``data``) and returns the ``chat.completion.chunk`` objects to send for it, in order,
often none. The caller writes each as ``data: <json>`` and, once ``finished`` is true,
``data: [DONE]``. State is a few scalars and the tool blocks still open, so each event
costs O(1).

===================================  ====================================================
Messages event                       chunks
===================================  ====================================================
``message_start``                    one: ``delta: {"role": "assistant", "content": ""}``
``content_block_start`` text         none (or a content delta if it carries text)
``content_block_start`` tool_use     one: ``tool_calls: [{index, id, type, function:
                                     {name, arguments: ""}}]``; the index counts tool
                                     blocks only (the first tool call is 0 even after text)
``content_block_delta`` text_delta   one content delta
``content_block_delta``              one ``tool_calls: [{index, function: {arguments}}]``
``input_json_delta``                 on the tool index of the block the event names
``content_block_stop``               none
``message_delta``                    one: ``delta: {}`` with the ``finish_reason``
``message_stop``                     with ``stream_options.include_usage``, the usage
                                     chunk (``choices: []``); ``finished`` becomes true
``ping``                             none
``error``                            one ``{"error": {...}}`` in the OpenAI shape (the
                                     openai SDKs raise ``APIError`` on it);
                                     ``finished`` becomes true
===================================  ====================================================

Thinking and signature deltas are not shown (response.py says why); an event or delta
type this module does not know is skipped, as Anthropic's versioning policy asks of
clients (new event types may be added). A content block of an unknown type ends the stream
with an error chunk: an answer we cannot show whole is not shown in part. With
``include_usage`` every chunk carries ``"usage": null`` and the last one the totals, as
OpenAI streams do.
"""

from __future__ import annotations

from typing import Any

from proxy.anthropic.errors import openai_error_body
from proxy.anthropic.response import finish_reason, tool_call, usage

JSON = dict[str, Any]

_HIDDEN_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class StreamTranslator:
    __slots__ = (
        "_created",
        "_id",
        "_include_usage",
        "_model",
        "_open_tools",
        "_tool_count",
        "_usage",
        "finished",
    )

    def __init__(self, *, model: str, created: int, include_usage: bool = False) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id: str | None = None
        #: Content block index -> tool call index, for the tool blocks still open.
        self._open_tools: dict[int, int] = {}
        self._tool_count = 0
        self._usage: JSON = {}
        #: True after ``message_stop`` or ``error``: the caller sends ``data: [DONE]``.
        self.finished = False

    def feed(self, event: str | None, data: Any) -> list[JSON]:
        """The chunks for one Messages SSE event; ``event`` may be None (then ``data``'s
        ``type`` names it)."""
        if self.finished or not isinstance(data, dict):
            return []
        kind = event or data.get("type")
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_stop":
            index = data.get("index")
            if isinstance(index, int):
                self._open_tools.pop(index, None)
            return []
        if kind == "message_start":
            message = data.get("message")
            message = message if isinstance(message, dict) else {}
            self._id = message.get("id")
            self._add_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            self._add_usage(data.get("usage"))
            delta = data.get("delta")
            reason = finish_reason(delta.get("stop_reason")) if isinstance(delta, dict) else None
            return [] if reason is None else [self._chunk({}, reason)]
        if kind == "message_stop":
            self.finished = True
            if not self._include_usage:
                return []
            return [self._frame([], usage(self._usage))]
        if kind == "error":
            self.finished = True
            return [openai_error_body(data.get("error"))]
        return []  # ping, and event types added to the API later

    def _add_usage(self, part: Any) -> None:
        # message_start carries the input counts, message_delta the cumulative output
        # (and, on some models, the input counts again): the latest value of each wins.
        if isinstance(part, dict):
            self._usage.update((k, v) for k, v in part.items() if isinstance(v, int))

    def _block_start(self, data: JSON) -> list[JSON]:
        block = data.get("content_block")
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = block.get("text") if isinstance(block, dict) else None
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use" and isinstance(block, dict):
            index = self._tool_count
            self._tool_count += 1
            position = data.get("index")
            if isinstance(position, int):
                self._open_tools[position] = index
            call = tool_call(block, index)
            call["function"]["arguments"] = ""  # the input arrives as input_json_delta
            return [self._chunk({"tool_calls": [call]})]
        if kind in _HIDDEN_BLOCKS:
            return []
        self.finished = True
        return [
            {
                "error": {
                    "message": f"the provider answered a content block of type {kind!r}, "
                    "which cannot be translated to a chat completion",
                    "type": "api_error",
                    "param": None,
                    "code": "untranslatable_answer",
                }
            }
        ]

    def _delta(self, data: JSON) -> list[JSON]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            position = data.get("index")
            index = self._open_tools.get(position) if isinstance(position, int) else None
            partial = delta.get("partial_json")
            if index is None or not partial:
                return []
            return [
                self._chunk({"tool_calls": [{"index": index, "function": {"arguments": partial}}]})
            ]
        return []  # thinking, signature, citations and later delta types

    def _chunk(self, delta: JSON, reason: str | None = None) -> JSON:
        return self._frame(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}], None
        )

    def _frame(self, choices: list[JSON], usage_value: JSON | None) -> JSON:
        chunk: JSON = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage_value
        return chunk
