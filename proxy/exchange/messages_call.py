"""A chat completions call to a provider of kind ``anthropic``: sent over the Messages API
and read back as chat completions, for the primary and the shadow alike.

The translation itself is ``proxy.anthropic`` (pure functions of JSON). This module puts it
on the wire: the path (``/v1/messages`` below the provider's root), the headers (the
client's, as for any provider, but with the key as ``x-api-key`` and never the client's
``Authorization`` as it is, and the API version), the body,
and the answer, a JSON body or an SSE stream, turned into what an openai SDK reads. Each
Messages event is decoded once; the chunks it becomes are handed on as objects (to the
``AnswerReader`` of the exchange) and encoded once, for the client.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.anthropic.errors import to_openai_error
from proxy.anthropic.request import to_messages
from proxy.anthropic.response import malformed, to_chat_completion
from proxy.anthropic.stream import StreamTranslator
from proxy.errors import UpstreamError
from proxy.http_headers import CREDENTIAL_HEADERS, upstream_request_headers
from proxy.sse import SSESplitter, parse_event

JSON = dict[str, Any]

#: Below the provider's root URL, as the anthropic SDK sends it.
MESSAGES_TAIL = "/v1/messages"
#: The Messages API version this translation is written against (the only one there is).
ANTHROPIC_VERSION = "2023-06-01"
DONE_EVENT = b"data: [DONE]\n\n"
#: After ``message_stop``, how long and how much is read to free the connection for reuse.
_DRAIN_SECONDS = 1.0
_DRAIN_BYTES = 64 * 1024
#: Client headers never relayed to Anthropic: credentials (the key travels as ``x-api-key``,
#: set here), OpenAI's account headers, and what this module sets itself.
_NOT_RELAYED = frozenset(
    {
        *CREDENTIAL_HEADERS,
        "openai-organization",
        "openai-project",
        "openai-beta",
        "content-type",
        "accept",
        "anthropic-version",
    }
)
_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class MessagesCall:
    """One chat completions request, translated: what to send, and how to read the answer."""

    body: bytes
    #: The model sent (the chat completion answers with this name).
    model: str
    stream: bool
    #: The client asked for the usage chunk (``stream_options.include_usage``).
    include_usage: bool


def messages_call(payload: JSON, default_max_tokens: int) -> MessagesCall:
    """The Messages request for the chat completions ``payload`` (after the prompt was
    rendered into it), or ``InvalidRequest`` naming the field that cannot be translated."""
    request = to_messages(payload, default_max_tokens=default_max_tokens)
    options = payload.get("stream_options")
    return MessagesCall(
        body=orjson.dumps(request),
        model=request["model"],
        stream=request.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def client_key(client_headers: Mapping[str, str]) -> str | None:
    """The key a client sent: its bearer token (the openai SDKs), else its ``x-api-key``
    (the anthropic SDKs)."""
    authorization = client_headers.get("Authorization")
    if authorization is not None and authorization[:7].lower() == _BEARER:
        return authorization[7:].strip() or None
    return client_headers.get("x-api-key") or None


def messages_headers(
    client_headers: CIMultiDictProxy[str],
    api_key: str | None,
    *,
    stream: bool,
    drop: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """The client's headers as any relayed request's (``drop``: the proxy's own controls),
    less its credentials and OpenAI's account headers, with the key as ``x-api-key`` and
    the API version. ``api_key``: the provider's, from the config; None: the client's own
    is forwarded."""
    key = api_key if api_key is not None else client_key(client_headers)
    headers = upstream_request_headers(client_headers, None, drop=_dropped(drop))
    headers["Content-Type"] = "application/json"
    headers["Accept"] = "text/event-stream" if stream else "application/json"
    headers["anthropic-version"] = ANTHROPIC_VERSION
    if key is not None:
        headers["x-api-key"] = key
    return headers


@functools.lru_cache(maxsize=8)
def _dropped(drop: frozenset[str]) -> frozenset[str]:
    return drop | _NOT_RELAYED


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """What the client gets for a whole (non-stream) Messages answer."""

    status: int
    body: bytes
    #: The chat completion (a 2xx) or the OpenAI-shaped error, as an object.
    payload: JSON
    #: Headers that steer the openai SDK's retry (``retry-after``, ``x-should-retry``).
    headers: dict[str, str]


def chat_answer(
    status: int, raw: bytes, upstream_headers: Mapping[str, str], model: str
) -> ChatAnswer:
    """A 2xx Messages answer as a chat completion (``UpstreamError`` when it cannot be
    translated whole), or an error answer in the OpenAI shape with the status the openai
    SDK maps to the same class and retry."""
    if status < 300:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise malformed("the answer", raw[:40].decode("utf-8", "replace")) from None
        completion = to_chat_completion(message, model=model, created=int(time.time()))
        return ChatAnswer(status, orjson.dumps(completion), completion, {})
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None  # a 413 or a 502 from a load balancer in front of the API
    error = to_openai_error(status, body, upstream_headers)
    return ChatAnswer(error.status, orjson.dumps(error.body), error.body, error.headers)


def chunk_event(chunk: JSON) -> bytes:
    """One chat completion chunk (or error object) as the SSE event an openai SDK reads."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _data_of(raw: bytes) -> bytes | None:
    """The data of an event as Anthropic sends them all, ``event: NAME\\ndata: JSON\\n\\n``
    (its data names its type too, so the name is not read; a ``ping`` is skipped unread),
    with a few byte searches; None for any other shape, which ``parse_event`` reads. Every
    event of a translated stream is decoded: this is most of what reading one costs."""
    start = 0
    if raw.startswith(b"event: "):
        if raw.startswith(b"event: ping\n"):
            return b""
        start = raw.find(b"\n", 7) + 1
        if start == 0 or raw[start - 2] == 0x0D:  # no line end, or a CRLF one
            return None
    if not raw.startswith(b"data: ", start) or not raw.endswith(b"\n\n"):
        return None
    data = raw[start + 6 : -2]
    return None if b"\n" in data or b"\r" in data else data


class ChatStream:
    """A Messages SSE stream in, as bytes arrive; chat completion chunks out, in order.

    ``finished`` turns true once the stream ended as a stream should (``message_stop``) or
    with an error event; a stream that stops before is the caller's to report as cut.
    """

    __slots__ = ("_broken", "_splitter", "_translator")

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self._splitter = SSESplitter()
        self._translator = StreamTranslator(
            model=model, created=int(time.time()), include_usage=include_usage
        )
        self._broken = False

    @property
    def finished(self) -> bool:
        return self._broken or self._translator.finished

    def usage(self) -> JSON | None:
        """The answer's usage (OpenAI's shape), counted whether or not the client asked for
        the usage chunk; None before ``message_start`` said any."""
        return self._translator.usage() if self._translator.started else None

    def feed(self, data: bytes) -> list[JSON]:
        chunks: list[JSON] = []
        for raw in self._splitter.feed(data):
            chunks += self._event(raw)
        return chunks

    def flush(self) -> list[JSON]:
        """The chunks of an unterminated last event, at the end of the stream."""
        tail = self._splitter.flush()
        return self._event(tail) if tail.strip() else []

    def _event(self, raw: bytes) -> list[JSON]:
        if self.finished:
            return []
        name: str | None = None
        data = _data_of(raw)
        if data is None:
            event = parse_event(raw)
            name, data = event.event, event.data
        if not data:
            return []  # a comment, a keep-alive, a ping
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            # A delta we cannot read would leave a hole in the answer: end it, said so.
            self._broken = True
            shown = data[:40].decode("utf-8", "replace")
            error: UpstreamError = malformed("an event's data", shown)
            return [error.to_openai_body()]
        if name is None and isinstance(payload, dict) and "type" not in payload:
            name = parse_event(raw).event  # the event's name, where its data has no type
        return self._translator.feed(name, payload)


async def drain(upstream: aiohttp.ClientResponse) -> None:
    """Read what follows ``message_stop`` (the chunked terminator, often a moment later) so
    the connection goes back to the pool instead of being closed: against a TLS provider, a
    new connection per stream is a handshake per stream. Bounded in bytes and time."""
    read = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while read <= _DRAIN_BYTES and (chunk := await upstream.content.readany()):
                read += len(chunk)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the connection is closed instead: nothing lost but its reuse
