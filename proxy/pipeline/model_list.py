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

import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import ProxyError, UpstreamUnavailable
from proxy.exchange.upstream import UpstreamClient
from proxy.providers import Provider, Providers

#: A listing is a quick question: a provider that takes longer is left out.
LIST_TIMEOUT_SECONDS = 10.0
_GLOB = re.compile(r"[*?\[]")


def model_in_path(tail: str) -> str | None:
    """The model ``/v1/models/{model}`` names (routed like a body's model), or None."""
    head, _, rest = tail.partition("/")
    return rest if head == "models" and rest else None


def lists_models(providers: Providers, method: str, tail: str) -> bool:
    """Whether this request is the listing that is answered here."""
    return len(providers.all) > 1 and method == "GET" and tail.rstrip("/") == "models"


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
            if name not in seen and providers.route(name) is provider:
                seen.add(name)
                data.append({**model, "owned_by": model.get("owned_by") or provider.name})
        for name in provider.models:
            if not _GLOB.search(name) and name not in seen and providers.route(name) is provider:
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
                body = orjson.loads(await response.read())
    except (ProxyError, TimeoutError, orjson.JSONDecodeError, OSError):
        return None
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
