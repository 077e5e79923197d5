"""One shadow call: send the copy, read the answer as the primary does, capture it.

Always through the shadow's own ``UpstreamClient`` (``UpstreamLimits.shadow``), never the
primary's, so a slow candidate cannot take connections from user traffic (reliability
guide A1, rule 1). Never retries, never follows redirects, and never raises for anything
the provider or the network does: every failure becomes a finished ``Exchange`` with an
``error_class``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict

from proxy.config import ShadowConfig
from proxy.errors import ProxyError
from proxy.exchange.answer import Answer, AnswerReader
from proxy.exchange.messages_call import ChatStream, MessagesCall, chat_answer, drain
from proxy.exchange.outcome import Arm, Exchange, error_class_for_status
from proxy.exchange.upstream import UpstreamClient
from proxy.log import APP_LOGGER
from proxy.shadow.models import ShadowRequest
from proxy.sse import SSESplitter

_log = logging.getLogger(APP_LOGGER)

# Recomputed by aiohttp for this body, which differs from the primary's (another version).
_DROP_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
#: A non-stream answer larger than this is not kept (the text is capped far below anyway).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class _AnswerTooLarge(Exception):
    pass


def shadow_exchange(request: ShadowRequest, answer: Answer | None) -> Exchange:
    """The shadow call's exchange before it starts: what the copy is, and where its answer's
    text goes."""
    return Exchange(
        request_id=request.request_id,
        method=request.method,
        route=request.route,
        started=time.perf_counter(),
        key=request.key,
        version=str(request.shadow_version),
        arm=Arm.SHADOW.value,
        stream=request.stream,
        model_sent=request.model,
        rollout_id=request.rollout_id,
        answer=answer,
        pair_id=request.pair_id,
        shadow_kind=request.kind.value,
        layers=request.layers,
        tenant=request.tenant,
        tier=request.tier,
        provider=request.provider,
    )


def _headers(given: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in given.items() if k.lower() not in _DROP_HEADERS)


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    content_type = response.headers.get("Content-Type", "")
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


async def _read_capped(content: aiohttp.StreamReader) -> bytes:
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _AnswerTooLarge
    return bytes(body)


async def call_shadow(
    client: UpstreamClient, request: ShadowRequest, config: ShadowConfig
) -> Exchange:
    """Send ``request`` and read the answer. Raises only ``CancelledError``."""
    answer = Answer(config.sink.max_output_chars)
    exchange = shadow_exchange(request, answer)
    reader = AnswerReader(exchange)
    started = exchange.started
    ttft: float | None = None
    error_class: str | None = None
    try:
        async with asyncio.timeout(config.timeout_seconds):
            response = await client.open(
                request.method,
                request.raw_tail,
                _headers(request.headers),
                request.body,
                request.base_url,
            )
            async with response:
                exchange.status = response.status
                if request.messages is not None:
                    ttft = await _read_messages(response, request.messages, exchange, reader)
                elif _is_event_stream(response):
                    # Read as a stream, event by event, so the shadow's TTFT is real and
                    # comparable with the primary's.
                    splitter = SSESplitter()
                    async for chunk in response.content.iter_any():
                        for raw in splitter.feed(chunk):
                            reader.accept(raw)
                        if ttft is None and answer.has_content:
                            ttft = time.perf_counter() - started
                    tail = splitter.flush()
                    if tail:
                        reader.accept(tail)
                elif response.status < 300:
                    reader.body(await _read_capped(response.content))
    except ProxyError as exc:  # no answer at all: the client's own mapping
        error_class = exc.error_class
    except TimeoutError:
        error_class = "upstream_timeout"
    except aiohttp.ClientError:
        error_class = "stream_interrupted"
    except _AnswerTooLarge:
        error_class = "answer_too_large"
    except asyncio.CancelledError:
        raise
    except Exception:  # a shadow must never take the process down; it is only counted
        _log.exception("shadow call %s failed unexpectedly", request.pair_id)
        error_class = "internal"
    if exchange.duration is None:  # a stream's ends when its answer is whole
        exchange.duration = time.perf_counter() - started
    exchange.ttfb = ttft if request.stream else None
    exchange.error_class = error_class or _answer_error(exchange.status, reader, answer)
    return exchange


async def _read_messages(
    response: aiohttp.ClientResponse,
    call: MessagesCall,
    exchange: Exchange,
    reader: AnswerReader,
) -> float | None:
    """A Messages API answer read as the chat completion it translates to (as the primary
    relays it); returns the time to the first content of a stream."""
    answer = exchange.answer
    if response.status >= 300 or not _is_event_stream(response):
        translated = chat_answer(
            response.status, await _read_capped(response.content), response.headers, call.model
        )
        exchange.status = translated.status
        if translated.status < 300:
            reader.decoded(translated.payload, chunk=False)
        return None
    stream = ChatStream(call.model, include_usage=False)
    ttft: float | None = None
    async for data in response.content.iter_any():
        for chunk in stream.feed(data):
            reader.decoded(chunk, chunk=True)
        if ttft is None and answer is not None and answer.has_content:
            ttft = time.perf_counter() - exchange.started
        if stream.finished:
            exchange.duration = time.perf_counter() - exchange.started
            await drain(response)
            break
    else:
        for chunk in stream.flush():
            reader.decoded(chunk, chunk=True)
        if not stream.finished:
            raise aiohttp.ClientPayloadError("the stream ended before message_stop")
    reader.usage(stream.usage())
    return ttft


def _answer_error(status: int, reader: AnswerReader, answer: Answer) -> str | None:
    """Why an answer that arrived whole still does not count as a completed shadow."""
    by_status = error_class_for_status(status)
    if by_status is not None:
        return by_status
    if 300 <= status < 400:  # never followed: the shadow got no answer
        return "upstream_redirect"
    if reader.error_event or reader.failed:
        return "upstream_stream_error"
    if reader.garbage and not answer.has_content:
        return "invalid_answer"
    return None
