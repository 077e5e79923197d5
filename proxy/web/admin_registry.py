"""Admin API for the registry store itself: its identity, restore, export and import.
Parse, call ``RegistryRecovery``, serialize."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web

from proxy.errors import InvalidRequest, PayloadTooLarge
from proxy.registry.backup import ImageError, RegistryImage
from proxy.web.admin_api import PREFIX, Body, actor_of, json_response, parse_body, services_of

#: An import body can hold every version ever pushed; the admin app's default limit is 1 MiB.
MAX_IMPORT_BYTES = 256 * 1024 * 1024


class RestoreIn(Body):
    source: Literal["snapshot"]
    reason: str = ""
    #: Replace prompts the store holds that are not an older copy of this registry.
    overwrite: bool = False


async def registry_status(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    return json_response(services_of(request).recovery.status())


async def restore(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    body = await parse_body(request, RestoreIn)
    result = await services_of(request).recovery.restore_from_snapshot(
        actor, body.reason, overwrite=body.overwrite
    )
    return json_response(result.to_dict())


async def export(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    image = await services_of(request).recovery.export()
    return web.Response(body=image.to_json(), content_type="application/json")


async def import_(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    overwrite = _flag(request.query.get("overwrite", "false"), "overwrite")
    raw = await _read_import(request)
    try:
        # Off the event loop: checking every template of a large export takes seconds
        # (about 1 ms per distinct template), and this loop serves traffic meanwhile.
        image = await asyncio.to_thread(RegistryImage.from_json, raw)
    except ImageError as exc:
        raise InvalidRequest(
            f"Invalid registry export: {exc}", param=exc.param, code="invalid_export"
        ) from None
    reason = request.query.get("reason", "")
    result = await services_of(request).recovery.import_image(
        image, actor, reason, overwrite=overwrite
    )
    return json_response(result.to_dict())


def _flag(value: str, name: str) -> bool:
    if value not in ("true", "false"):
        raise InvalidRequest(f"`{name}` must be true or false, not {value[:40]!r}.", param=name)
    return value == "true"


async def _read_import(request: web.Request) -> bytes:
    """The whole body, up to the cap. ``StreamReader.read(n)`` returns what has arrived so
    far, so a chunked upload is read piece by piece until its end."""
    too_large = PayloadTooLarge(f"An import body is limited to {MAX_IMPORT_BYTES} bytes.")
    if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
        raise too_large
    pieces: list[bytes] = []
    size = 0
    while piece := await request.content.read(MAX_IMPORT_BYTES + 1 - size):
        pieces.append(piece)
        size += len(piece)
        if size > MAX_IMPORT_BYTES:
            raise too_large
    return b"".join(pieces)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/registry", registry_status)
    r.add_post(f"{PREFIX}/registry/restore", restore)
    r.add_get(f"{PREFIX}/registry/export", export)
    r.add_post(f"{PREFIX}/registry/import", import_)
