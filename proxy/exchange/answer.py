"""Read what the provider answered, once, for both arms: model, usage and finish reason into
the ``Exchange``, and (only when a shadow pair needs it) the text and tool calls into its
``Answer``.

Works on a copy: a JSON body after it was received, stream events one by one while their
bytes are relayed unchanged. Each event is decoded at most once. Decoding every chunk of a
stream would cost more than relaying it, so without an ``Answer`` only events that can
carry something recorded are decoded (cheap byte checks first); with one, every event
with data is, until the text is full. Input is the provider's, so nothing here raises:
what cannot be understood is counted (``garbage``) and skipped.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.exchange.messages_answer import MessagesRead
from proxy.exchange.messages_answer import needs_look as messages_needs_look
from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.sse import parse_event

#: A hostile or broken provider must not grow the capture without limit.
MAX_TOOL_CALLS = 128
_LEGACY_CALL = "function_call"
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

# An event needs decoding only if it can carry something we record or must act on: a usage
# object, a finish reason that is a string, an error, a final Responses event. Looked for
# with byte searches (C, memchr-fast): a regex with these alternatives tried each of them at
# every byte of every event, and that was most of what a relayed stream cost.
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_RESPONSES_FINAL_MARKS = (b"response.completed", b"response.incomplete", b"response.failed")


def _followed_by(raw: bytes, key: bytes, opener: bytes) -> bool:
    """Some ``key`` in ``raw`` is followed, after optional whitespace, by ``opener``."""
    at = raw.find(key)
    while at != -1:
        end = at + len(key)
        while end < len(raw) and raw[end] in _WHITESPACE:
            end += 1
        if raw.startswith(opener, end):
            return True
        at = raw.find(key, end)
    return False


def needs_look(raw: bytes, *, after_cap: bool = False) -> bool:
    """Whether a raw SSE event can carry something recorded (see above).

    Written for the common event, a content chunk, which needs no look: each test first
    asks the cheapest question that rules its mark out (a relayed stream pays this per
    event, so it is one call with a few C searches)."""
    if b'"error"' in raw:
        return True
    if b"response." in raw and (
        any(mark in raw for mark in _RESPONSES_FINAL_MARKS)
        or (after_cap and b"response.output_item" in raw)
    ):
        return True
    # Once an answer's text budget is spent, tool calls still matter too.
    if after_cap and (b"tool_calls" in raw or b"function_call" in raw):
        return True
    # Most chunks say `"finish_reason":null` (and `"usage":null` when usage was asked for):
    # when every occurrence of the key is that, two counts rule it out.
    reasons = raw.count(b'"finish_reason":')
    if (
        reasons
        and reasons != raw.count(b'"finish_reason":null')
        and _followed_by(raw, b'"finish_reason":', b'"')
    ):
        return True
    usages = raw.count(b'"usage":')
    if usages and usages != raw.count(b'"usage":null') and _followed_by(raw, b'"usage":', b"{"):
        return True
    return b"event:" in raw and _followed_by(raw, b"event:", b"error")


def _loads(data: bytes) -> Any:
    return orjson.loads(data)


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(input, output) tokens of a provider's `usage` object; None where it says nothing."""
    if not isinstance(usage, dict):
        return None, None
    # Chat/completions/embeddings say prompt/completion; the Responses API says input/output.
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (inp if isinstance(inp, int) else None), (out if isinstance(out, int) else None)


class _Call:
    __slots__ = ("args", "name", "size")

    def __init__(self) -> None:
        self.name = ""
        self.args: list[str] = []
        self.size = 0


class Answer:
    """The answer's text and tool calls as a pair compares them: the first choice only,
    the text and each call's arguments capped at ``max_chars``."""

    __slots__ = ("_calls", "_max", "_size", "_text", "finish_reason", "full", "truncated")

    def __init__(self, max_chars: int) -> None:
        self._max = max_chars
        self._text: list[str] = []
        self._size = 0
        self._calls: dict[int | str, _Call] = {}
        #: The first choice's finish reason (chat and completions; see ``Exchange`` too).
        self.finish_reason: str | None = None
        #: The text budget is spent: only events that can carry something else are read.
        self.full = False
        #: The text, an argument or the number of calls was cut.
        self.truncated = False

    @property
    def text(self) -> str:
        return "".join(self._text)

    def tool_calls(self) -> list[tuple[str, str]]:
        """(name, arguments) of each call, in the order they began."""
        return [(c.name, "".join(c.args)) for c in self._calls.values()]

    @property
    def has_content(self) -> bool:
        """Some text or a tool call arrived: the moment that defines time to first token."""
        return self._size > 0 or bool(self._calls)

    def add_text(self, piece: str) -> None:
        if not piece:
            return
        room = self._max - self._size
        if len(piece) > room:
            piece = piece[: max(room, 0)]
            self.truncated = self.full = True
            if not piece:
                return
        self._text.append(piece)
        self._size += len(piece)

    def call_without_arguments(self, key: int | str) -> bool:
        """A call began under ``key`` and no piece of its arguments came yet."""
        call = self._calls.get(key)
        return call is not None and call.size == 0

    def call_parts(self, key: int | str, name: Any, arguments: Any, *, whole: bool) -> None:
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= MAX_TOOL_CALLS:
                self.truncated = True
                return
            call = self._calls[key] = _Call()
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

    def choice(self, choice: dict[str, Any]) -> None:
        """One choice of a chat or completions chunk or body."""
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self.finish_reason = reason
        text = choice.get("text")  # completions
        if isinstance(text, str):
            self.add_text(text)
        message = choice.get("delta")
        whole = message is None
        if whole:
            message = choice.get("message")
        if not isinstance(message, dict):
            return
        content = message.get("content")
        if isinstance(content, str):
            self.add_text(content)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if not isinstance(call, dict):
                    continue
                index = call.get("index", position)
                function = call.get("function")
                if isinstance(index, int) and isinstance(function, dict):
                    self.call_parts(
                        index, function.get("name"), function.get("arguments"), whole=whole
                    )
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            self.call_parts(_LEGACY_CALL, legacy.get("name"), legacy.get("arguments"), whole=whole)

    def responses_event(self, kind: str, payload: dict[str, Any]) -> None:
        """The content events of a Responses API stream (deltas, output items)."""
        if kind == "response.output_text.delta":
            delta = payload.get("delta")
            if isinstance(delta, str):
                self.add_text(delta)
        elif kind == "response.function_call_arguments.delta":
            self.call_parts(_output_key(payload), None, payload.get("delta"), whole=False)
        elif kind == "response.function_call_arguments.done":
            self.call_parts(_output_key(payload), None, payload.get("arguments"), whole=True)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = payload.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                done = kind == "response.output_item.done"
                arguments = item.get("arguments") if done else None
                self.call_parts(_output_key(payload), item.get("name"), arguments, whole=done)

    def output_items(self, output: Any) -> None:
        """The ``output`` of a Responses API ``response`` object."""
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
                            self.add_text(text)
            elif kind == "function_call":
                self.call_parts(position, item.get("name"), item.get("arguments"), whole=True)


def _output_key(payload: dict[str, Any]) -> int | str:
    index = payload.get("output_index")
    if isinstance(index, int):
        return index
    item_id = payload.get("item_id")
    return item_id if isinstance(item_id, str) else 0


class AnswerReader:
    """Reads one exchange's answer into it (and into ``exchange.answer`` when set). Feed
    either the raw SSE events of a stream (``accept``) or one JSON body (``body``)."""

    __slots__ = (
        "_answer",
        "_exchange",
        "_looked_once",
        "_messages",
        "_responses",
        "_strip_usage_chunk",
        "error_event",
        "failed",
        "garbage",
    )

    def __init__(self, exchange: Exchange, *, strip_usage_chunk: bool = False) -> None:
        """``strip_usage_chunk``: the proxy asked for usage, so the client must not see it."""
        self._exchange = exchange
        self._answer = exchange.answer
        self._strip_usage_chunk = strip_usage_chunk
        self._responses = exchange.route is Route.RESPONSES
        # The first chunk names the model; after it only marked events are decoded. Responses
        # API streams carry everything we record in their final event.
        self._looked_once = self._responses
        #: A Messages API answer (``/v1/messages``): read by its own rules.
        self._messages = (
            MessagesRead(exchange, self._answer) if exchange.route is Route.MESSAGES else None
        )
        #: The provider sent an error event inside the stream.
        self.error_event = False
        #: The answer says it failed in other ways (an error member in a JSON body, a failed
        #: Responses object): a shadow counts it as failed, the primary relays it.
        self.failed = False
        #: Events or bodies that could not be understood.
        self.garbage = 0

    # -- input ----------------------------------------------------------------------------

    def accept(self, raw: bytes) -> bool:
        """Read one raw SSE event exactly as relayed (``b'data: {...}\\n\\n'``); False when
        the client must not get it (the usage chunk the proxy asked for)."""
        if self._messages is not None:
            self._messages_event(raw)
            return True
        answer = self._answer
        if answer is None or answer.full:
            if self._looked_once and not needs_look(raw, after_cap=answer is not None):
                return True
        elif b"data:" not in raw:
            return True
        try:
            name: str | None = None
            data = raw[6:].rstrip(b"\r\n") if raw.startswith(b"data: ") else b""
            if not data or b"\n" in data or b"\r" in data:
                # Not the common one-line `data: {...}` event: take the full parser.
                event = parse_event(raw)
                name, data = event.event, event.data
            if not data or data == b"[DONE]":
                return True
            payload = _loads(data)
            if not isinstance(payload, dict):
                self.garbage += 1
                return True
            if self._responses:
                self._responses_event(name, payload)
                return True
            self._looked_once = True
            return self._chunk(payload)
        except Exception:  # the provider's bytes must never break the relay
            self.garbage += 1
            return True

    def body(self, body: bytes) -> None:
        """A whole non-stream JSON answer."""
        try:
            payload = _loads(body)
            if not isinstance(payload, dict):
                self.garbage += 1
                return
            if self._responses:
                self._response_object(payload, whole=True)
                return
            if self._messages is not None:
                self.failed = self._messages.message(payload)
                return
            if payload.get("error"):
                self.failed = True
            self._record(payload)
        except Exception:
            self.garbage += 1

    def decoded(self, payload: dict[str, Any], *, chunk: bool) -> None:
        """A chat completion (``chunk``: a chunk of one, or a stream's error object) the
        proxy built itself, from a translated answer: read as it is, never decoded."""
        if chunk:
            self._looked_once = True
            self._chunk(payload)
            return
        if payload.get("error"):
            self.failed = True
        self._record(payload)

    # -- the Messages API -----------------------------------------------------------------

    def _messages_event(self, raw: bytes) -> None:
        messages = self._messages
        assert messages is not None
        answer = self._answer
        if not messages_needs_look(raw, answer):
            return
        try:
            event = parse_event(raw)
            if not event.data:
                return
            payload = _loads(event.data)
            if not isinstance(payload, dict):
                self.garbage += 1
                return
            kind = payload.get("type")
            if messages.event(kind if isinstance(kind, str) else event.event, payload):
                self.error_event = True
        except Exception:  # the provider's bytes must never break the relay
            self.garbage += 1

    # -- chat completions and completions -------------------------------------------------

    def _chunk(self, payload: dict[str, Any]) -> bool:
        if payload.get("error"):
            self.error_event = True
            return True
        choices = self._record(payload)
        # The chunk the proxy asked for: no choices, only usage.
        return not (
            self._strip_usage_chunk and choices == [] and isinstance(payload.get("usage"), dict)
        )

    def _record(self, payload: dict[str, Any]) -> Any:
        """Model, usage and finish reason of a chunk or body (and the first choice's content
        into the answer); returns its ``choices``."""
        exchange = self._exchange
        model = payload.get("model")
        if isinstance(model, str):
            exchange.model_answered = model
        self._usage(payload.get("usage"))
        choices = payload.get("choices")
        if isinstance(choices, list):
            answer = self._answer
            for choice in choices:
                if isinstance(choice, dict):
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str):
                        exchange.finish_reason = reason
                    # `n > 1` answers: the pair compares the first choice only.
                    if answer is not None and choice.get("index", 0) == 0:
                        answer.choice(choice)
        return choices

    def usage(self, usage: Any) -> None:
        """A usage object known apart from any chunk (a translated stream's totals)."""
        self._usage(usage)

    def _usage(self, usage: Any) -> None:
        inp, out = usage_tokens(usage)
        if inp is not None:
            self._exchange.input_tokens = inp
        if out is not None:
            self._exchange.output_tokens = out

    # -- Responses API --------------------------------------------------------------------

    def _responses_event(self, name: str | None, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = name or ""
        if kind in _RESPONSES_FINAL:
            self._response_object(payload.get("response"), whole=False)
        elif kind == "response.created":
            response = payload.get("response")
            if isinstance(response, dict) and isinstance(response.get("model"), str):
                self._exchange.model_answered = response["model"]
        elif kind == "error" or name == "error":
            self.error_event = True
        elif self._answer is not None:
            self._answer.responses_event(kind, payload)

    def _response_object(self, response: Any, *, whole: bool) -> None:
        """A Responses API ``response`` object: a non-stream body or a stream's last event.

        A stream's deltas already gave text and calls; its final object only fills them
        in when the provider sent no deltas.
        """
        if not isinstance(response, dict):
            return
        exchange = self._exchange
        status = response.get("status")
        if response.get("error") and status in (None, "failed"):
            self.failed = True
        model = response.get("model")
        if isinstance(model, str):
            exchange.model_answered = model
        self._usage(response.get("usage"))
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            exchange.finish_reason = details["reason"]
        elif isinstance(status, str):
            exchange.finish_reason = status
            if status == "failed":
                self.failed = True
        answer = self._answer
        if answer is not None and (whole or not answer.has_content):
            answer.output_items(response.get("output"))
