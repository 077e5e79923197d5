"""Read model, usage and finish reason from what the provider answered. Pure.

Works on a copy: non-stream bodies are parsed after they were received; stream events are
looked at one by one while their bytes are relayed unchanged. Parsing JSON for every
stream chunk would cost more than the relay itself, so only events that can carry
something we record are decoded (cheap byte checks first).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.models import Exchange, Route
from proxy.sse import SSEEvent, parse_event

# An event needs decoding only if it can carry something we record or must act on. One
# regex pass over the raw bytes is far cheaper than parsing every chunk's JSON.
_NEEDS_LOOK = re.compile(
    rb'"usage":\s*\{|"finish_reason":\s*"|"error"|event:\s*error'
    rb"|response\.(?:completed|incomplete|failed)"
)
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_FINAL_TYPES = tuple((n, b'"type":"' + n.encode() + b'"') for n in _RESPONSES_FINAL)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(input, output) tokens of a provider's `usage` object; None where it says nothing."""
    if not isinstance(usage, dict):
        return None, None
    # Chat/completions/embeddings say prompt/completion; the Responses API says input/output.
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (inp if isinstance(inp, int) else None), (out if isinstance(out, int) else None)


def _record_usage(exchange: Exchange, usage: Any) -> None:
    inp, out = usage_tokens(usage)
    if inp is not None:
        exchange.input_tokens = inp
    if out is not None:
        exchange.output_tokens = out


def _record_choices(exchange: Exchange, choices: Any) -> None:
    if not isinstance(choices, list):
        return
    for choice in choices:
        if isinstance(choice, dict):
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                exchange.finish_reason = reason


def _record_response_object(exchange: Exchange, response: Any) -> None:
    """A Responses API `response` object (non-stream body or final stream event)."""
    if not isinstance(response, dict):
        return
    model = response.get("model")
    if isinstance(model, str):
        exchange.model_answered = model
    _record_usage(exchange, response.get("usage"))
    status = response.get("status")
    details = response.get("incomplete_details")
    if isinstance(details, dict) and isinstance(details.get("reason"), str):
        exchange.finish_reason = details["reason"]
    elif isinstance(status, str):
        exchange.finish_reason = status


def observe_body(exchange: Exchange, body: bytes) -> None:
    """Record what a complete (non-stream) JSON answer says."""
    payload = _loads(body)
    if not isinstance(payload, dict):
        return
    if exchange.route is Route.RESPONSES:
        _record_response_object(exchange, payload)
        return
    model = payload.get("model")
    if isinstance(model, str):
        exchange.model_answered = model
    _record_usage(exchange, payload.get("usage"))
    _record_choices(exchange, payload.get("choices"))


class StreamObserver:
    """Looks at each relayed raw event; says whether the client should get it."""

    __slots__ = ("_exchange", "_looked_once", "_strip_usage_chunk", "upstream_error")

    def __init__(self, exchange: Exchange, *, strip_usage_chunk: bool) -> None:
        self._exchange = exchange
        self._strip_usage_chunk = strip_usage_chunk
        # The first chunk names the model; after it only marked events are decoded. Responses
        # API streams carry everything we record in their final event.
        self._looked_once = exchange.route is Route.RESPONSES
        #: The provider sent an error event inside the stream.
        self.upstream_error = False

    def accept(self, raw: bytes) -> bool:
        if self._looked_once and _NEEDS_LOOK.search(raw) is None:
            return True
        event = parse_event(raw)
        if not event.data or event.is_done:
            return True
        if self._exchange.route is Route.RESPONSES:
            return self._accept_responses_event(event)
        self._looked_once = True
        return self._accept_chunk(event.data)

    def _accept_chunk(self, data: bytes) -> bool:
        payload = _loads(data)
        if not isinstance(payload, dict):
            return True
        exchange = self._exchange
        if payload.get("error"):
            self.upstream_error = True
            return True
        model = payload.get("model")
        if isinstance(model, str):
            exchange.model_answered = model
        choices = payload.get("choices")
        _record_choices(exchange, choices)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            _record_usage(exchange, usage)
            # The chunk the proxy asked for: no choices, only usage.
            if self._strip_usage_chunk and choices == []:
                return False
        return True

    def _accept_responses_event(self, event: SSEEvent) -> bool:
        name = event.event
        if name is None:  # some providers put the name only in the data's `type`
            name = next((n for n, m in _RESPONSES_FINAL_TYPES if m in event.data), None)
        if name in _RESPONSES_FINAL:
            payload = _loads(event.data)
            if isinstance(payload, dict):
                _record_response_object(self._exchange, payload.get("response"))
        elif name == "error":
            self.upstream_error = True
        return True
