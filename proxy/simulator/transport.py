"""Putting bytes on the wire: delays, SSE event pacing and the connection-level faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Final

from aiohttp import web

from .faults import Fault, RequestControl

_CLIENT_POLL_S: Final = 0.05
"""How often a hung handler checks whether its client left (cheap; keeps shutdown quick)."""

_FLUSH_LIMIT_S: Final = 2.0


async def sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def wait_until_client_gone(request: web.BaseRequest) -> None:
    """Stall like a stuck provider, but stop once nobody is waiting for the answer.

    Polling instead of relying on handler cancellation keeps this correct under any
    server configuration (aiohttp does not cancel handlers on disconnect by default).
    """
    # No public "connection lost" event exists on an aiohttp request, hence the poll.
    while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_CLIENT_POLL_S)


async def abort_connection(request: web.BaseRequest) -> None:
    """Reset the TCP connection once what was already written has left the process.

    ``abort()`` discards buffered bytes, so without the flush wait a client could see
    the reset before the events that were meant to precede it.
    """
    transport = request.transport
    if transport is None:
        return
    deadline = time.monotonic() + _FLUSH_LIMIT_S
    # asyncio transports expose no "buffer drained" event below the high-water mark.
    while transport.get_write_buffer_size() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    transport.abort()


async def send_json(
    request: web.BaseRequest,
    body: bytes,
    control: RequestControl,
    headers: Mapping[str, str],
    status: int = 200,
) -> web.StreamResponse:
    await sleep_ms(control.first_byte_ms)
    if control.fault is Fault.DROP:
        await abort_connection(request)
        # aiohttp finds the transport closed when finishing this and sends nothing.
        return web.Response(status=status)
    if control.fault is Fault.HANG_MID_STREAM:
        # Headers and half the body, then silence: a read timeout in the middle of a body.
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await wait_until_client_gone(request)
        return resp
    return web.Response(status=status, body=body, headers=headers)


_MESSAGES_TRAILERS: Final = (
    b"event: content_block_stop",
    b"event: message_delta",
    b"event: message_stop",
    b"event: ping",
)


def _trailer(event: bytes) -> bool:
    """Events that follow the previous one at once rather than after a token's delay: the
    usage chunk and `[DONE]` (OpenAI), a block's stop, ping and the message's end (Anthropic)."""
    return (
        event.startswith(b"data: [DONE]")
        or event.startswith(_MESSAGES_TRAILERS)
        or b'"choices":[]' in event
    )


async def send_events(
    request: web.BaseRequest,
    events: Sequence[bytes],
    control: RequestControl,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """Write each SSE event with its own ``write`` so a proxy observes real chunk boundaries."""
    await sleep_ms(control.first_byte_ms)
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    faulty = control.fault in (Fault.DROP, Fault.HANG_MID_STREAM)
    stop = max(1, len(events) // 2) if faulty else len(events)
    delay = control.chunk_delay_ms / 1000
    try:
        for i in range(stop):
            if delay and i and not _trailer(events[i]):
                await asyncio.sleep(delay)
            await resp.write(events[i])
        if control.fault is Fault.DROP:
            await abort_connection(request)
        elif control.fault is Fault.HANG_MID_STREAM:
            await wait_until_client_gone(request)
        else:
            await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left mid-stream: normal for cancelled requests, nothing to report
    return resp
