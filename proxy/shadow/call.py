"""One shadow call: send the copy, read the answer as the primary would, capture it.

Always on the shadow's own ``ClientSession`` (``make_shadow_session``), never the primary's,
so a slow candidate cannot take connections from user traffic (reliability guide A1, rule 1).
Never retries, never follows redirects, and never raises for anything the provider or the
network does: every failure becomes a failed ``ArmResult`` with an ``error_class``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import ShadowConfig
from proxy.log import APP_LOGGER
from proxy.pipeline.record import error_class_for_status
from proxy.shadow.capture import OutputCapture
from proxy.shadow.models import ArmResult, ShadowRequest
from proxy.sse import SSESplitter

_log = logging.getLogger(APP_LOGGER)

# Same reasons as the primary's forward stage: a proxy must not invent these.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Content-Type"})
# Recomputed by aiohttp for this body, which differs from the primary's (another version).
_DROP_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
#: A non-stream answer larger than this is not kept (the text is capped far below anyway).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class _AnswerTooLarge(Exception):
    pass


def make_shadow_session(config: ShadowConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=config.max_connections, limit_per_host=0, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        # A shared jar would hand one client's provider cookies to every other client.
        cookie_jar=aiohttp.DummyCookieJar(),
        # The whole call runs under `timeout_seconds` (see `call_shadow`); only the
        # connect gets its own, shorter limit.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_seconds),
        trust_env=False,
    )


def shadow_url(base_url: str, raw_tail: str) -> URL:
    """The base URL from config plus the path; nothing from the request picks the host."""
    tail = raw_tail if raw_tail.startswith("/") else "/" + raw_tail
    return URL(base_url.rstrip("/") + tail, encoded=True)


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
    session: aiohttp.ClientSession, base_url: str, request: ShadowRequest, config: ShadowConfig
) -> ArmResult:
    """Send ``request`` and capture the answer. Raises only ``CancelledError``."""
    capture = OutputCapture(request.route, config.sink.max_output_chars)
    started = time.perf_counter()
    status = 0
    ttft: float | None = None
    error_class: str | None = None
    try:
        async with (
            asyncio.timeout(config.timeout_seconds),
            session.request(
                request.method,
                shadow_url(base_url, request.raw_tail),
                headers=_headers(request.headers),
                data=request.body or None,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            ) as response,
        ):
            status = response.status
            if _is_event_stream(response):
                # Read as a stream, event by event, so the shadow's TTFT is real and
                # comparable with the primary's.
                splitter = SSESplitter()
                async for chunk in response.content.iter_any():
                    for raw in splitter.feed(chunk):
                        capture.event(raw)
                    if ttft is None and capture.has_content:
                        ttft = time.perf_counter() - started
                tail = splitter.flush()
                if tail:
                    capture.event(tail)
            elif status < 300:
                capture.body(await _read_capped(response.content))
    except TimeoutError:
        error_class = "upstream_timeout"
    except aiohttp.ClientError:
        error_class = "stream_interrupted" if status else "upstream_unavailable"
    except _AnswerTooLarge:
        error_class = "answer_too_large"
    except asyncio.CancelledError:
        raise
    except Exception:  # a shadow must never take the process down; it is only counted
        _log.exception("shadow call %s failed unexpectedly", request.pair_id)
        error_class = "internal"
    arm = capture.result(request.shadow_version)
    arm.status = status
    arm.latency = time.perf_counter() - started
    arm.ttft = ttft if request.stream else None
    arm.error_class = error_class or _answer_error(status, capture)
    return arm


def _answer_error(status: int, capture: OutputCapture) -> str | None:
    """Why an answer that arrived whole still does not count as a completed shadow."""
    by_status = error_class_for_status(status)
    if by_status is not None:
        return by_status
    if 300 <= status < 400:  # never followed: the shadow got no answer
        return "upstream_redirect"
    if capture.upstream_error:
        return "upstream_stream_error"
    if capture.garbage and not capture.has_content:
        return "invalid_answer"
    return None
