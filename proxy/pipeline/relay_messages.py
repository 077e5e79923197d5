"""Stage 5b for a provider of kind ``anthropic``: its Messages answer, relayed to the client
as the chat completion it asked for (``proxy/exchange/messages_call.py`` translates).

A whole answer is read, translated and sent; an error keeps the status the openai SDK
needs to raise the same class and retry the same way (529 becomes 503), with the
provider's retry headers. A stream is translated event by event as it arrives and ends
with ``data: [DONE]`` only when the provider ended it properly: cut short or broken, it
ends with one OpenAI-style error event instead, as a relayed stream does.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import UpstreamUnavailable
from proxy.exchange.answer import AnswerReader
from proxy.exchange.messages_call import (
    DONE_EVENT,
    ChatStream,
    MessagesCall,
    chat_answer,
    chunk_event,
    drain,
)
from proxy.exchange.outcome import Exchange
from proxy.exchange.upstream import answer_read_errors
from proxy.pipeline.relay import SSE_HEADERS, content_type_of, start_stream, stream_error_event

#: A whole Messages answer is held to be translated; past this it is refused, not held.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: The provider's headers that describe its own body, which the client does not get.
_BODY_HEADERS = ("Content-Type", "Content-Encoding", "Content-Length")


async def relay_messages(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    headers: CIMultiDict[str],
    call: MessagesCall,
) -> web.StreamResponse:
    """``headers``: the client's response headers so far (the provider's, the proxy's)."""
    if upstream.status < 300 and content_type_of(upstream) == "text/event-stream":
        return await _relay_stream(request, upstream, exchange, headers, call)
    raw = await _read_whole(upstream)
    answer = chat_answer(upstream.status, raw, upstream.headers, call.model)
    exchange.status = answer.status
    AnswerReader(exchange).decoded(answer.payload, chunk=False)
    for name in _BODY_HEADERS:
        headers.popall(name, None)
    headers.update(answer.headers)
    return web.Response(
        status=answer.status, body=answer.body, headers=headers, content_type="application/json"
    )


def _marked(chunk: dict[str, Any]) -> bool:
    """A chunk with a finish reason, usage or an error: what the record needs."""
    if "error" in chunk or chunk.get("usage"):
        return True
    choices = chunk.get("choices")
    return not choices or any(c.get("finish_reason") for c in choices)


async def _read_whole(upstream: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    with answer_read_errors():
        async for chunk in upstream.content.iter_any():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise UpstreamUnavailable(
                    f"The provider's answer is larger than {MAX_ANSWER_BYTES} bytes."
                )
    return bytes(body)


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    headers: CIMultiDict[str],
    call: MessagesCall,
) -> web.StreamResponse:
    for name, value in SSE_HEADERS:
        headers.setdefault(name, value)
    response = await start_stream(request, upstream, headers)
    stream = ChatStream(call.model, include_usage=call.include_usage)
    reader = AnswerReader(exchange)

    capturing = exchange.answer is not None

    async def send(chunks: list[dict[str, Any]]) -> None:
        if not chunks:
            return
        for chunk in chunks:
            # Without a pair to capture, a plain content chunk holds nothing recorded: the
            # first names the model, the last the finish reason, errors count.
            if capturing or exchange.model_answered is None or _marked(chunk):
                reader.decoded(chunk, chunk=True)
        if exchange.ttfb is None:
            exchange.ttfb = time.perf_counter() - exchange.started
        await response.write(b"".join(chunk_event(chunk) for chunk in chunks))

    try:
        try:
            async for data in upstream.content.iter_any():
                await send(stream.feed(data))
                if stream.finished:
                    break
            else:
                await send(stream.flush())
        except (aiohttp.ClientError, TimeoutError) as exc:
            exchange.error_class = (
                "upstream_timeout" if isinstance(exc, TimeoutError) else "stream_interrupted"
            )
            message = (
                "The upstream provider stopped sending (read timeout)."
                if isinstance(exc, TimeoutError)
                else "The upstream provider broke off the stream."
            )
            await response.write(stream_error_event(exchange.route, message, exchange.error_class))
            return response
        if reader.error_event:
            exchange.error_class = "upstream_stream_error"
        elif not stream.finished:
            exchange.error_class = "stream_interrupted"
            await response.write(
                stream_error_event(
                    exchange.route,
                    "The upstream provider ended the stream before the answer was complete.",
                    exchange.error_class,
                )
            )
        else:
            await response.write(DONE_EVENT)
        await response.write_eof()
        if stream.finished:
            # The client has its whole answer: the wait for the provider's last bytes is
            # not the request's duration.
            exchange.duration = time.perf_counter() - exchange.started
            await drain(upstream)
    except ConnectionResetError:
        exchange.error_class = "client_disconnected"
    finally:
        # Counted however the stream ended: a cut one still had its input read and billed.
        reader.usage(stream.usage())
    return response
