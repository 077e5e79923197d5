"""``GET /v1/models`` with several providers: one list of what they serve.

Each provider is asked for its own list at once (with its key, or the client's), and keeps
the models it lists that route to it (the first provider whose patterns match a model
serves it, so a model two providers list appears once, under the one that serves it).
A model the config names literally (not a pattern) is listed even when its provider does
not list it, or cannot be asked. A provider that fails or is slow is left out, so one
provider down does not take the listing with it; all of them down is a 502. With one
provider the request is relayed as any other, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.anthropic.errors import to_openai_error
from proxy.errors import ProxyError, UpstreamError, UpstreamUnavailable
from proxy.exchange.upstream import UpstreamClient, answer_read_errors
from proxy.providers import Provider, Providers

#: A listing is a quick question: a provider that takes longer is left out.
LIST_TIMEOUT_SECONDS = 10.0
#: OpenAI's own list is ~10 KiB; a provider answering more than this is left out rather
#: than held in memory and decoded on the event loop.
LIST_MAX_BYTES = 4 * 1024 * 1024
_GLOB = re.compile(r"[*?\[]")


async def _capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, or None past ``limit`` bytes."""
    body = bytearray()
    while chunk := await content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def model_in_path(tail: str) -> str | None:
    """The model ``/v1/models/{model}`` names (routed like a body's model), or None."""
    head, _, rest = tail.partition("/")
    return rest if head == "models" and rest else None


def lists_models(listed: bool, method: str, tail: str) -> bool:
    """Whether this request is the listing that is answered here: with `providers` in the
    config (``listed``), even one, whose list is kept to the models it is named for."""
    return listed and method == "GET" and tail.rstrip("/") == "models"


async def model_list(
    upstream: UpstreamClient,
    providers: Providers,
    headers_for: Callable[[Provider], CIMultiDict[str]],
) -> tuple[int, bytes]:
    """The status and JSON body of the merged listing."""
    answers = await asyncio.gather(
        *(_listed(upstream, provider, headers_for(provider)) for provider in providers.all)
    )
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for provider, listed in zip(providers.all, answers, strict=True):
        for model in listed or ():
            name = model["id"]
            if name not in seen and providers.route(name, remember=False) is provider:
                seen.add(name)
                data.append({**model, "owned_by": model.get("owned_by") or provider.name})
        for name in provider.models:
            literal = not _GLOB.search(name) and name not in seen
            if literal and providers.route(name, remember=False) is provider:
                seen.add(name)
                data.append(
                    {"id": name, "object": "model", "created": 0, "owned_by": provider.name}
                )
    if all(listed is None for listed in answers) and not data:
        raise UpstreamUnavailable("No provider answered the model listing.")
    return web.HTTPOk.status_code, orjson.dumps({"object": "list", "data": data})


async def _listed(
    upstream: UpstreamClient, provider: Provider, headers: CIMultiDict[str]
) -> list[dict[str, Any]] | None:
    """The models ``provider`` lists (entries with a string ``id``), or None when it could
    not say."""
    # Anthropic pages its list (20 by default, 1000 at most); one page holds every model.
    path = "/v1/models?limit=1000" if provider.messages_api else "models"
    try:
        async with asyncio.timeout(LIST_TIMEOUT_SECONDS):
            response = await upstream.open("GET", path, headers, b"", provider.base_url)
            async with response:
                if response.status != web.HTTPOk.status_code:
                    return None
                raw = await _capped(response.content, LIST_MAX_BYTES)
        if raw is None:
            return None
        body = orjson.loads(raw)
    # A provider that breaks off, answers garbage or too much is one provider left out.
    except (ProxyError, TimeoutError, aiohttp.ClientError, ValueError, OSError):
        return None
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    listed = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    if provider.messages_api:
        return [openai_model(entry, provider.name) for entry in listed]
    return listed


def openai_model(entry: dict[str, Any], owner: str) -> dict[str, Any]:
    """An Anthropic model object (``id``, ``created_at`` as RFC 3339, ``display_name``) as
    OpenAI lists one (``created`` in Unix seconds; 0 when the date cannot be read)."""
    created = 0
    stamp = entry.get("created_at")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            created = int(datetime.fromisoformat(stamp).timestamp())
    return {"id": entry["id"], "object": "model", "created": created, "owned_by": owner}


async def messages_model(
    upstream: UpstreamClient, provider: Provider, headers: CIMultiDict[str], raw_tail: str
) -> tuple[int, bytes, dict[str, str]]:
    """``GET /v1/models/{id}`` of a model a Messages API provider serves: asked of it, and
    answered as OpenAI describes a model (its errors in the OpenAI shape)."""
    path = "/v1/" + raw_tail.partition("?")[0].lstrip("/")
    response = await upstream.open("GET", path, headers, b"", provider.base_url)
    async with response:
        status = response.status
        upstream_headers = dict(response.headers)
        with answer_read_errors():
            raw = await _capped(response.content, LIST_MAX_BYTES)
    try:
        body: Any = None if raw is None else orjson.loads(raw)
    except ValueError:
        body = None
    if status == web.HTTPOk.status_code:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise UpstreamError(
                "The provider answered a model description that cannot be read.",
                code="malformed_answer",
            )
        return status, orjson.dumps(openai_model(body, provider.name)), {}
    error = to_openai_error(status, body, upstream_headers)
    return error.status, orjson.dumps(error.body), error.headers
