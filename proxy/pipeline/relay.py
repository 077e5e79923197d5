"""Stage 5b, relay: hand the provider's answer to the client.

Three shapes: a JSON body (read whole, read for the record, sent), an SSE stream (relayed
event by event as it arrives, each event read once on the side by ``AnswerReader``),
anything else (raw chunks, not read). Once
stream headers are out, failures can no longer change the status: the stream ends with one
OpenAI-style error event and no ``[DONE]``.
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.exchange.answer import AnswerReader
from proxy.exchange.outcome import Exchange
from proxy.exchange.upstream import answer_read_errors
from proxy.models import Route
from proxy.sse import SSESplitter

SSE_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
# Larger answers of other kinds (file downloads, audio) are streamed, never held whole.
_BUFFER_LIMIT = 1024 * 1024
_OBSERVED_ROUTES = frozenset(
    {Route.CHAT, Route.COMPLETIONS, Route.EMBEDDINGS, Route.RESPONSES, Route.MODELS, Route.MESSAGES}
)


def content_type_of(upstream: aiohttp.ClientResponse) -> str:
    return upstream.headers.get("Content-Type", "").partition(";")[0].strip().lower()


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    strip_usage_chunk: bool,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    """``strip_usage_chunk``: the proxy asked for usage, so the client must not see it.
    With ``exchange.answer`` set (shadowed requests only: it costs a JSON decode per
    event), the answer's text is captured by the same read."""
    content_type = content_type_of(upstream)
    if content_type == "text/event-stream":
        return await _relay_events(request, upstream, exchange, strip_usage_chunk, headers)
    length = upstream.content_length
    if (content_type == "application/json" and exchange.route in _OBSERVED_ROUTES) or (
        length is not None and length <= _BUFFER_LIMIT
    ):
        return await _relay_body(upstream, exchange, headers)
    return await _relay_raw(request, upstream, exchange, headers)


async def _relay_body(
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    headers: CIMultiDict[str],
) -> web.Response:
    with answer_read_errors():
        body = await upstream.read()
    if exchange.route in _OBSERVED_ROUTES and upstream.status < 300:
        AnswerReader(exchange).body(body)
    return web.Response(status=upstream.status, body=body, headers=headers)


def stream_error_event(route: Route, message: str, code: str) -> bytes:
    """The one event that ends a stream the provider broke off, in the stream's own shape
    (the Messages API's ``error`` event for its clients, OpenAI's for the others)."""
    if route is Route.MESSAGES:
        # Anthropic's SDKs read the type, and their message says what happened.
        error = {"type": "error", "error": {"type": "api_error", "message": f"{message} ({code})"}}
        return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    body = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    prefix = b"event: error\n" if route is Route.RESPONSES else b""
    return prefix + b"data: " + orjson.dumps(body) + b"\n\n"


async def start_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    length: int | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if length is not None:
        # Keep the provider's length (download progress) instead of chunked encoding.
        response.content_length = length
    await response.prepare(request)
    return response


async def _relay_events(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    strip_usage_chunk: bool,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    for name, value in SSE_HEADERS:  # keep proxies and caches in front of us from buffering
        headers.setdefault(name, value)
    response = await start_stream(request, upstream, headers)
    splitter = SSESplitter()
    reader = AnswerReader(exchange, strip_usage_chunk=strip_usage_chunk)
    try:
        try:
            async for chunk in upstream.content.iter_any():
                out = [raw for raw in splitter.feed(chunk) if reader.accept(raw)]
                if out:
                    if exchange.ttfb is None:
                        exchange.ttfb = time.perf_counter() - exchange.started
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            exchange.error_class = "upstream_timeout" if timed_out else "stream_interrupted"
            message = (
                "The upstream provider stopped sending (read timeout)."
                if timed_out
                else "The upstream provider broke off the stream."
            )
            await response.write(stream_error_event(exchange.route, message, exchange.error_class))
            return response
        tail = splitter.flush()
        if tail:
            # An unterminated last event is relayed as it came, whatever it says.
            reader.accept(tail)
            await response.write(tail)
        if reader.error_event:
            exchange.error_class = "upstream_stream_error"
        await response.write_eof()
    except ConnectionResetError:
        exchange.error_class = "client_disconnected"
    return response


async def _relay_raw(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    exchange: Exchange,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    """Bytes of unknown shape (file downloads, audio): stream them, never buffer whole."""
    response = await start_stream(request, upstream, headers, upstream.content_length)
    try:
        try:
            async for chunk in upstream.content.iter_any():
                if exchange.ttfb is None:
                    exchange.ttfb = time.perf_counter() - exchange.started
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError):
            exchange.error_class = "stream_interrupted"
            # The length is unknown to the client; cutting the connection is the only signal.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    except ConnectionResetError:
        exchange.error_class = "client_disconnected"
    return response
