"""Admin API for the registry store itself: its identity, restore, export and import.
Call ``RegistryRecovery``, build the answer's model."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest, PayloadTooLarge
from proxy.registry.backup import ImageError, RegistryImage
from proxy.web import admin_models as api
from proxy.web.admin_endpoint import Call, NoBody, Reply
from proxy.web.admin_params import ImportQuery, NoParams

#: An import body can hold every version ever pushed; the admin app's default limit is 1 MiB.
MAX_IMPORT_BYTES = 256 * 1024 * 1024


async def registry_status(call: Call[NoParams, NoParams, NoBody]) -> api.RegistryStatus:
    return api.RegistryStatus.model_validate(call.services.recovery.status())


async def restore(call: Call[NoParams, NoParams, api.RestoreIn]) -> api.RestoreResult:
    body = call.body
    result = await call.services.recovery.restore_from_snapshot(
        call.actor, body.reason, overwrite=body.overwrite
    )
    return api.RestoreResult.model_validate(result.to_dict())


def _export(image: RegistryImage) -> api.RegistryExport:
    return api.RegistryExport.model_validate(orjson.loads(image.to_json()))


async def export(call: Call[NoParams, NoParams, NoBody]) -> Reply[api.RegistryExport]:
    image = await call.services.recovery.export()
    # Off the event loop: a registry's whole history can hold many thousand versions.
    return Reply(await asyncio.to_thread(_export, image), indent=True)


async def import_(call: Call[NoParams, ImportQuery, NoBody]) -> api.RestoreResult:
    raw = await _read_import(call.request)
    try:
        # Off the event loop: checking every template of a large export takes seconds
        # (about 1 ms per distinct template), and this loop serves traffic meanwhile.
        image = await asyncio.to_thread(RegistryImage.from_json, raw)
    except ImageError as exc:
        raise InvalidRequest(
            f"Invalid registry export: {exc}", param=exc.param, code="invalid_export"
        ) from None
    result = await call.services.recovery.import_image(
        image, call.actor, call.query.reason, overwrite=call.query.overwrite == "true"
    )
    return api.RestoreResult.model_validate(result.to_dict())


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
