"""The request path, in order. This is the one place the stage order is written down.

1. parse    body bytes -> ParsedRequest (400 on malformed JSON); the prompt the request names
2. resolve  prompt slug (+ version pin) -> PromptVersion, from the in-process snapshot only
3. choose   sticky arm: stable / canary / shadow         (canary milestone; `stable` for now)
4. render   template + caller variables -> outbound body, encoded once
5. forward  one pooled ClientSession -> provider; relay the answer to the client
6. record   metrics + one JSON log line, in `finally`, so failures and disconnects count
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import PayloadTooLarge, ProxyError
from proxy.http_headers import REQUEST_ID_HEADER, client_response_headers, upstream_request_headers
from proxy.models import Exchange
from proxy.pipeline.parse import check_path, classify, encode_outbound, parse_request
from proxy.pipeline.relay import relay
from proxy.pipeline.render import render_into
from proxy.pipeline.resolve import CONTROL_HEADERS, SWAP_ROUTES, prompt_ref, resolve
from proxy.registry.models import PromptVersion
from proxy.services import Services

STABLE_ARM = "stable"

#: nginx's convention for "client closed the connection before the answer was complete".
CLIENT_CLOSED_STATUS = 499


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it passes ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the {limit}-byte limit.")
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.")
    return bytes(body)


async def handle(
    services: Services,
    request: web.Request,
    request_id: str,
    tail: str,
    raw_tail: str,
    slug: str | None,
) -> web.StreamResponse:
    """Proxy one ``/v1/{tail}`` request. ``raw_tail`` is the undecoded path and query."""
    exchange = Exchange(
        request_id=request_id,
        method=request.method,
        route=classify(tail),
        started=time.perf_counter(),
        slug=slug,
    )
    metrics = services.metrics
    metrics.in_flight.inc()
    try:
        check_path(tail)
        ref = prompt_ref(slug, request.headers)
        exchange.slug = ref.slug if ref is not None else None
        body = await read_body(request, services.settings.config.server.max_body_bytes)
        parsed = parse_request(exchange.route, request.method, tail, body)  # 1
        exchange.model_requested = parsed.model
        exchange.stream = parsed.stream

        version: PromptVersion | None = None
        if ref is not None and parsed.payload is not None and exchange.route in SWAP_ROUTES:
            version = resolve(services.snapshot.current, ref)  # 2
            exchange.version = str(version.version)
            exchange.arm = STABLE_ARM  # 3
            render_into(exchange.route, parsed.payload, version, services.renderer)  # 4
            exchange.model_sent = version.model
        outbound_body, usage_injected = encode_outbound(parsed, payload_changed=version is not None)

        outbound_headers = upstream_request_headers(
            request.headers, services.upstream_api_key, drop=CONTROL_HEADERS
        )
        upstream = await services.upstream.open(  # 5
            request.method, raw_tail, outbound_headers, outbound_body
        )
        async with upstream:
            exchange.status = upstream.status
            exchange.upstream_request_id = upstream.headers.get("x-request-id")
            headers = client_response_headers(upstream.headers)
            headers[REQUEST_ID_HEADER] = request_id
            if version is not None:
                _add_prompt_headers(headers, version, exchange)
            return await relay(request, upstream, exchange, usage_injected, headers)
    except ProxyError as exc:
        exchange.status = exc.status
        exchange.error_class = exc.error_class
        raise
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client goes away; leaving the `async with`
        # above has already closed the upstream connection.
        exchange.error_class = "client_disconnected"
        if not exchange.status:
            exchange.status = CLIENT_CLOSED_STATUS
        raise
    finally:
        metrics.in_flight.dec()
        services.recorder.observe(exchange)  # 6


def _add_prompt_headers(
    headers: CIMultiDict[str], version: PromptVersion, exchange: Exchange
) -> None:
    headers["x-prompt-slug"] = version.slug
    headers["x-prompt-version"] = str(version.version)
    headers["x-prompt-arm"] = exchange.arm or STABLE_ARM
