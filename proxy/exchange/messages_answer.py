"""What a Messages API answer says, read as it is relayed to an anthropic SDK client
(``/v1/messages``): the model, the usage, the stop reason, and for a shadow pair the text
and tool calls. ``AnswerReader`` decodes each event once and hands it here.

Usage is counted as the chat completion translation counts it (``anthropic/response.py``):
input tokens include the prompt cache's reads and writes, so the metrics of a Claude model
are the same whichever API a client called it through; the stop reason is recorded by its
chat completions name (``end_turn`` as ``stop``, ``max_tokens`` as ``length``...), which is
the bounded ``finish_reason`` label set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from proxy.anthropic.response import finish_reason, is_count, usage

if TYPE_CHECKING:
    from proxy.exchange.answer import Answer
    from proxy.exchange.outcome import Exchange

#: The events that can carry what is recorded when no text is captured (the rest, content
#: deltas, are most of a stream and are not decoded): looked for with a byte search.
_MARKS = (b"message_start", b"message_delta", b"error")
#: Once a pair's text budget is spent, its tool calls still matter.
_TOOL_MARKS = (b"tool_use", b"input_json_delta", b"content_block_stop")


def needs_look(raw: bytes, answer: Answer | None) -> bool:
    """Whether a raw Messages event can carry something recorded."""
    if answer is not None and not answer.full:
        return b"data:" in raw
    if any(mark in raw for mark in _MARKS):
        return True
    return answer is not None and any(mark in raw for mark in _TOOL_MARKS)


class MessagesRead:
    """The state of one Messages answer being read: its usage counts so far."""

    __slots__ = ("_answer", "_counts", "_exchange")

    def __init__(self, exchange: Exchange, answer: Answer | None) -> None:
        self._exchange = exchange
        self._answer = answer
        self._counts: dict[str, int] = {}

    def event(self, kind: Any, payload: dict[str, Any]) -> bool:
        """One stream event; True when it is an error event."""
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._model(message.get("model"))
                self._usage(message.get("usage"))
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                self._stop(delta.get("stop_reason"))
            self._usage(payload.get("usage"))
        elif kind == "error":
            return True
        elif self._answer is not None:
            self._content(self._answer, kind, payload)
        return False

    def message(self, payload: dict[str, Any]) -> bool:
        """A whole answer (a Message object); True when it is an error object."""
        if payload.get("type") == "error" or isinstance(payload.get("error"), dict):
            return True
        self._model(payload.get("model"))
        self._usage(payload.get("usage"))
        self._stop(payload.get("stop_reason"))
        answer = self._answer
        content = payload.get("content")
        if answer is None or not isinstance(content, list):
            return False
        for index, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                answer.add_text(block.get("text") or "")
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                answer.call_parts(index, block.get("name"), arguments, whole=True)
        return False

    def _content(self, answer: Answer, kind: Any, payload: dict[str, Any]) -> None:
        index = payload.get("index")
        if not isinstance(index, int):
            return
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str):
                    answer.add_text(text)
            elif delta.get("type") == "input_json_delta":
                answer.call_parts(index, None, delta.get("partial_json"), whole=False)
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if not isinstance(block, dict):
                return
            if block.get("type") == "tool_use":
                answer.call_parts(index, block.get("name"), None, whole=False)
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                answer.add_text(block["text"])
        elif kind == "content_block_stop" and answer.call_without_arguments(index):
            # A call with no input streams no delta: its arguments are `{}`, as unstreamed.
            answer.call_parts(index, None, "{}", whole=True)

    def _model(self, model: Any) -> None:
        if isinstance(model, str):
            self._exchange.model_answered = model

    def _stop(self, stop_reason: Any) -> None:
        reason = finish_reason(stop_reason)
        if reason is not None:
            self._exchange.finish_reason = reason
            if self._answer is not None:
                self._answer.finish_reason = reason

    def _usage(self, part: Any) -> None:
        # message_start carries the input counts, message_delta the cumulative output: the
        # latest value of each wins.
        if not isinstance(part, dict):
            return
        self._counts.update((k, v) for k, v in part.items() if is_count(v))
        counted = usage(self._counts)
        exchange = self._exchange
        exchange.input_tokens = counted["prompt_tokens"]
        exchange.output_tokens = counted["completion_tokens"]
