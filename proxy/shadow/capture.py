"""What an arm answered, captured from its bytes: text, tool calls, finish reason, usage.

Used for both halves of a pair. The primary path calls ``event`` for every relayed event of
a shadowed request, so the per-event work is one ``orjson.loads`` and a few dict lookups;
once the text is full, events that cannot carry anything still recorded are skipped with a
byte scan. Input is the provider's, so nothing here may raise: garbage is counted and
ignored (``garbage``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.models import Route
from proxy.pipeline.observe import usage_tokens
from proxy.shadow.models import ArmResult, ToolCall
from proxy.sse import parse_event

#: A hostile or broken provider must not grow the capture without limit.
MAX_TOOL_CALLS = 128
_LEGACY_CALL = "function_call"
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Once the text budget is spent, only these events still matter.
_AFTER_CAP = re.compile(
    rb'"usage":\s*\{|"finish_reason":\s*"|tool_calls|function_call|"error"'
    rb"|response\.(?:completed|incomplete|failed|output_item)"
)


class _Call:
    __slots__ = ("args", "name", "size")

    def __init__(self) -> None:
        self.name = ""
        self.args: list[str] = []
        self.size = 0


class OutputCapture:
    """Feed either the raw SSE events of a stream (``event``) or one JSON body (``body``),
    then read the ``result``. ``max_chars`` caps the text and each call's arguments."""

    __slots__ = (
        "_calls",
        "_full",
        "_max",
        "_route",
        "_size",
        "_text",
        "finish_reason",
        "garbage",
        "input_tokens",
        "model",
        "output_tokens",
        "truncated",
        "upstream_error",
    )

    def __init__(self, route: Route, max_chars: int) -> None:
        self._route = route
        self._max = max_chars
        self._text: list[str] = []
        self._size = 0
        self._full = False
        self._calls: dict[int | str, _Call] = {}
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.truncated = False
        #: The answer carried an error (an error event or a failed Responses object).
        self.upstream_error = False
        #: Events or bodies that could not be understood.
        self.garbage = 0

    @property
    def has_content(self) -> bool:
        """Some text or a tool call arrived: the moment that defines time to first token."""
        return self._size > 0 or bool(self._calls)

    # -- input ----------------------------------------------------------------------------

    def event(self, raw: bytes) -> None:
        """One raw SSE event exactly as relayed (``b'data: {...}\\n\\n'``)."""
        if b"data:" not in raw or (self._full and _AFTER_CAP.search(raw) is None):
            return
        try:
            name: str | None = None
            data = raw[6:].rstrip(b"\r\n") if raw.startswith(b"data: ") else b""
            if not data or b"\n" in data or b"\r" in data:
                # Not the common one-line `data: {...}` event: take the full parser.
                parsed = parse_event(raw)
                name, data = parsed.event, parsed.data
            if not data or data == b"[DONE]":
                return
            payload = orjson.loads(data)
            if not isinstance(payload, dict):
                self.garbage += 1
                return
            if self._route is Route.RESPONSES:
                self._responses_event(name, payload)
            else:
                self._chunk(payload)
        except Exception:  # the provider's bytes must never break the relay
            self.garbage += 1

    def body(self, body: bytes) -> None:
        """A whole non-stream JSON answer."""
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                self.garbage += 1
                return
            if self._route is Route.RESPONSES:
                self._response_object(payload, whole=True)
            else:
                self._chunk(payload)
        except Exception:
            self.garbage += 1

    def result(self, version: int) -> ArmResult:
        """The captured answer; status, latency, ttft and error_class are the caller's."""
        return ArmResult(
            version=version,
            text="".join(self._text),
            tool_calls=[ToolCall(c.name, "".join(c.args)) for c in self._calls.values()],
            finish_reason=self.finish_reason,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            truncated=self.truncated,
        )

    # -- accumulation ---------------------------------------------------------------------

    def _add_text(self, piece: str) -> None:
        if not piece:
            return
        room = self._max - self._size
        if len(piece) > room:
            piece = piece[: max(room, 0)]
            self.truncated = self._full = True
            if not piece:
                return
        self._text.append(piece)
        self._size += len(piece)

    def _call(self, key: int | str) -> _Call | None:
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= MAX_TOOL_CALLS:
                self.truncated = True
                return None
            call = self._calls[key] = _Call()
        return call

    def _call_parts(self, key: int | str, name: Any, arguments: Any, *, whole: bool) -> None:
        call = self._call(key)
        if call is None:
            return
        # OpenAI names a call once; some compatible servers repeat the name on every delta.
        if isinstance(name, str) and name and name != call.name:
            call.name = name if not call.name else call.name + name
        if not isinstance(arguments, str):
            return
        if whole:  # a final, complete value replaces the deltas gathered so far
            call.args.clear()
            call.size = 0
        room = self._max - call.size
        if len(arguments) > room:
            arguments = arguments[: max(room, 0)]
            self.truncated = True
        if arguments:
            call.args.append(arguments)
            call.size += len(arguments)

    def _usage(self, usage: Any) -> None:
        inp, out = usage_tokens(usage)
        if inp is not None:
            self.input_tokens = inp
        if out is not None:
            self.output_tokens = out

    def _model(self, model: Any) -> None:
        if self.model is None and isinstance(model, str):
            self.model = model

    # -- chat completions and completions (stream chunks and whole bodies alike) ----------

    def _chunk(self, payload: dict[str, Any]) -> None:
        if payload.get("error"):
            self.upstream_error = True
            return
        self._model(payload.get("model"))
        if "usage" in payload:
            self._usage(payload["usage"])
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            # `n > 1` answers: the pair compares the first choice only.
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self.finish_reason = reason
        text = choice.get("text")  # completions
        if isinstance(text, str):
            self._add_text(text)
        message = choice.get("delta")
        whole = message is None
        if whole:
            message = choice.get("message")
        if not isinstance(message, dict):
            return
        content = message.get("content")
        if isinstance(content, str):
            self._add_text(content)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if not isinstance(call, dict):
                    continue
                index = call.get("index", position)
                function = call.get("function")
                if isinstance(index, int) and isinstance(function, dict):
                    self._call_parts(
                        index, function.get("name"), function.get("arguments"), whole=whole
                    )
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            self._call_parts(_LEGACY_CALL, legacy.get("name"), legacy.get("arguments"), whole=whole)

    # -- Responses API --------------------------------------------------------------------

    def _responses_event(self, name: str | None, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = name or ""
        if kind == "response.output_text.delta":
            delta = payload.get("delta")
            if isinstance(delta, str):
                self._add_text(delta)
        elif kind == "response.function_call_arguments.delta":
            self._call_parts(_output_key(payload), None, payload.get("delta"), whole=False)
        elif kind == "response.function_call_arguments.done":
            self._call_parts(_output_key(payload), None, payload.get("arguments"), whole=True)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = payload.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                done = kind == "response.output_item.done"
                arguments = item.get("arguments") if done else None
                self._call_parts(_output_key(payload), item.get("name"), arguments, whole=done)
        elif kind in _RESPONSES_FINAL:
            self._response_object(payload.get("response"), whole=False)
        elif kind == "response.created":
            response = payload.get("response")
            if isinstance(response, dict):
                self._model(response.get("model"))
        elif kind == "error" or name == "error":
            self.upstream_error = True

    def _response_object(self, response: Any, *, whole: bool) -> None:
        """A Responses API ``response`` object: a non-stream body or a stream's last event.

        A stream's deltas already gave text and calls; its final object only fills them
        in when the provider sent no deltas.
        """
        if not isinstance(response, dict):
            return
        if response.get("error") and response.get("status") in (None, "failed"):
            self.upstream_error = True
        self._model(response.get("model"))
        self._usage(response.get("usage"))
        status = response.get("status")
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            self.finish_reason = details["reason"]
        elif isinstance(status, str):
            self.finish_reason = status
            if status == "failed":
                self.upstream_error = True
        if whole or not self.has_content:
            self._output_items(response.get("output"))

    def _output_items(self, output: Any) -> None:
        if not isinstance(output, list):
            return
        for position, item in enumerate(output):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "message" and isinstance(item.get("content"), list):
                for part in item["content"]:
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        text = part.get("text")
                        if isinstance(text, str):
                            self._add_text(text)
            elif kind == "function_call":
                self._call_parts(position, item.get("name"), item.get("arguments"), whole=True)


def _output_key(payload: dict[str, Any]) -> int | str:
    index = payload.get("output_index")
    if isinstance(index, int):
        return index
    item_id = payload.get("item_id")
    return item_id if isinstance(item_id, str) else 0
