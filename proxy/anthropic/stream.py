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
``content_block_stop``               none; for a tool block whose ``input_json_delta``
                                     pieces were all empty (or absent), one
                                     ``tool_calls: [{index, function: {arguments}}]``
                                     with ``"{}"`` (or the start block's ``input``), so
                                     the joined arguments are what the non-streamed
                                     answer gives, never ``""``
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

An event of the wrong shape (a ``stop_reason``, ``id``, text, ``partial_json``, tool id or
name that is not a string, a tool input that is not an object) ends the stream with an
error chunk (``code="malformed_answer"``), as ``response.py``'s ``UpstreamError``;
``feed`` itself never raises on what the provider sent. Usage counts that are not integers
are left out.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.anthropic.errors import openai_error_body
from proxy.anthropic.response import finish_reason, is_count, malformed, tool_call, usage
from proxy.errors import UpstreamError

JSON = dict[str, Any]

_HIDDEN_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class _OpenTool:
    """A tool block still open: its tool call index, the ``input`` its start block carried
    and whether a non-empty ``partial_json`` came for it."""

    __slots__ = ("has_arguments", "index", "start_input")

    def __init__(self, index: int, start_input: JSON) -> None:
        self.index = index
        self.start_input = start_input
        self.has_arguments = False


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
        #: Content block index -> its tool call, for the tool blocks still open.
        self._open_tools: dict[int, _OpenTool] = {}
        self._tool_count = 0
        self._usage: JSON = {}
        #: True after ``message_stop`` or ``error``: the caller sends ``data: [DONE]``.
        self.finished = False

    def feed(self, event: str | None, data: Any) -> list[JSON]:
        """The chunks for one Messages SSE event; ``event`` may be None (then ``data``'s
        ``type`` names it)."""
        if self.finished or not isinstance(data, dict):
            return []
        try:
            return self._feed(event or data.get("type"), data)
        except UpstreamError as error:
            self.finished = True
            return [error.to_openai_body()]

    def _feed(self, kind: Any, data: JSON) -> list[JSON]:
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_stop":
            return self._block_stop(data)
        if kind == "message_start":
            message = data.get("message")
            message = message if isinstance(message, dict) else {}
            message_id = message.get("id")
            if not isinstance(message_id, str):
                raise malformed("the message id", message_id)
            self._id = message_id
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

    @property
    def started(self) -> bool:
        """``message_start`` came: the answer's usage counts exist (0 is a count then)."""
        return self._id is not None

    def usage(self) -> JSON:
        """The usage so far, as the usage chunk states it: what the proxy records, whether
        or not the client asked for that chunk."""
        return usage(self._usage)

    def _add_usage(self, part: Any) -> None:
        # message_start carries the input counts, message_delta the cumulative output
        # (and, on some models, the input counts again): the latest value of each wins.
        if isinstance(part, dict):
            self._usage.update((k, v) for k, v in part.items() if is_count(v))

    def _block_start(self, data: JSON) -> list[JSON]:
        block = data.get("content_block")
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block, dict):
            text = block.get("text")
            if text is not None and not isinstance(text, str):
                raise malformed("a text block's text", text)
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use" and isinstance(block, dict):
            call = tool_call(block, self._tool_count)
            self._tool_count += 1
            position = data.get("index")
            if isinstance(position, int):
                self._open_tools[position] = _OpenTool(call["index"], block.get("input") or {})
            call["function"]["arguments"] = ""  # the input arrives as input_json_delta
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(kind, str) and kind in _HIDDEN_BLOCKS:
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

    def _block_stop(self, data: JSON) -> list[JSON]:
        position = data.get("index")
        tool = self._open_tools.pop(position, None) if isinstance(position, int) else None
        if tool is None or tool.has_arguments:
            return []
        # No input_json_delta said anything: the arguments are the start block's input, as
        # in the non-streamed answer ("{}" for a tool without parameters), never "".
        arguments = orjson.dumps(tool.start_input).decode()
        return [
            self._chunk(
                {"tool_calls": [{"index": tool.index, "function": {"arguments": arguments}}]}
            )
        ]

    def _delta(self, data: JSON) -> list[JSON]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise malformed("a text_delta's text", text)
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            position = data.get("index")
            tool = self._open_tools.get(position) if isinstance(position, int) else None
            partial = delta.get("partial_json")
            if not isinstance(partial, str):
                raise malformed("an input_json_delta's partial_json", partial)
            if tool is None or not partial:
                return []
            tool.has_arguments = True
            arguments = {"arguments": partial}
            return [self._chunk({"tool_calls": [{"index": tool.index, "function": arguments}]})]
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
