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
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import ProxyError, UpstreamUnavailable
from proxy.exchange.upstream import UpstreamClient
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
    try:
        async with asyncio.timeout(LIST_TIMEOUT_SECONDS):
            response = await upstream.open("GET", "models", headers, b"", provider.base_url)
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
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
