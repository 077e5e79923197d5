"""Admin API for shadow pairs: read them back, or follow them live, as JSON lines.

``GET /admin/v1/prompts/{slug}/shadow/pairs?since=10m&limit=100&follow=false&rollout=ID``

One pair per line (``application/x-ndjson``), oldest first. ``rollout`` keeps the pairs of
one rollout: its id, or ``latest`` for the running rollout, else the last one that ran (the
``X-Promptproxy-Rollout`` response header names it); without it, every rollout's pairs.
``since`` is seconds ago (``600``), a duration (``10m``, ``2h``, ``1d``), a unix timestamp or
an ISO-8601 time; without it, the last ``limit`` pairs. With ``follow=true`` the response
stays open and new pairs are written as they are recorded; an empty line every ~15 s keeps
idle connections (and the proxies in between) from timing out. A follow ends when the
client goes away or the process starts draining. Read role suffices.

``GET /admin/v1/prompts/{slug}/shadow/rollout``: which rollout ``latest`` means now, so a
client paging through pairs pins one id (a new rollout starting mid-export must not mix in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest, NotFound, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.models import SLUG_PATTERN
from proxy.services import Services
from proxy.shadow.pairs import SinkUnavailable
from proxy.web.admin_api import json_response
from proxy.web.admin_auth import authorize
from proxy.web.admin_formats import SINCE_NUMBER
from proxy.web.keys import SERVICES

_log = logging.getLogger(APP_LOGGER)

PREFIX = "/admin/v1"
NDJSON = "application/x-ndjson"
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
HEARTBEAT_SECONDS = 15.0
#: How often a quiet follow checks for a gone client or a draining process.
_TICK = 1.0
_FOLLOW_BUFFER = 1000
_WRITE_BATCH = 64
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SINCE = re.compile(SINCE_NUMBER)
# A bare number this large is a unix timestamp (2001-09-09 onwards), not seconds ago.
_EPOCH_FLOOR = 1e9
LATEST = "latest"
ROLLOUT_HEADER = "X-Promptproxy-Rollout"
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def parse_since(value: str | None, now: float) -> float | None:
    """``since`` as unix seconds; None when absent."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    match = _SINCE.fullmatch(text)
    if match is not None:
        number, unit = float(match.group(1)), match.group(2)
        if not unit and number >= _EPOCH_FLOOR:
            return number
        return now - number * _UNITS[unit]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(
            "`since` must be seconds ago (600), a duration (10m, 2h, 1d), a unix timestamp "
            "or an ISO-8601 time with a zone (2026-11-24T10:00:00Z).",
            param="since",
        )
    return moment.timestamp()


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    return int(value)


def parse_flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise InvalidRequest(f"`{name}` must be true or false.", param=name)


async def _latest(services: Services, slug: str) -> tuple[str, bool]:
    found = await services.registry.latest_rollout(slug)
    if found is None:
        raise NotFound(
            f"{slug} has had no rollout, so it has no shadow pairs to choose from.",
            param="rollout",
            code="rollout_not_found",
        )
    return found


async def parse_rollout(services: Services, slug: str, value: str | None) -> str | None:
    """The rollout id whose pairs to keep: None for all, ``latest`` resolved now."""
    if value is None:
        return None
    if value == LATEST:
        rollout_id, _ = await _latest(services, slug)
        return rollout_id
    if not _ROLLOUT_ID.fullmatch(value):
        raise InvalidRequest(
            "`rollout` must be a rollout id or `latest` (the running rollout, else the last).",
            param="rollout",
        )
    return value


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def _start() -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = NDJSON
    # Keep proxies in front of the admin port from buffering a live tail.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


async def shadow_pairs(request: web.Request) -> web.StreamResponse:
    services: Services = request.app[SERVICES]
    authorize(request, services.settings.admin_tokens, write=False)
    slug = request.match_info["slug"]
    if not SLUG_PATTERN.match(slug):
        raise InvalidRequest("The prompt slug must match [A-Za-z0-9._-]{1,64}.", param="slug")
    since = parse_since(request.query.get("since"), time.time())
    limit = parse_limit(request.query.get("limit"))
    follow = parse_flag(request.query.get("follow"), "follow")
    rollout_id = await parse_rollout(services, slug, request.query.get("rollout"))
    if follow:
        return await _follow(request, services, slug, since, rollout_id)
    try:
        records = await services.shadow.sink.read(slug, since, limit, rollout_id)
    except SinkUnavailable as exc:
        raise ServiceUnavailable(f"The shadow pair store is unavailable: {exc}") from None
    response = _start()
    if rollout_id is not None:
        response.headers[ROLLOUT_HEADER] = rollout_id
    await response.prepare(request)
    for start in range(0, len(records), _WRITE_BATCH):
        await response.write(b"".join(_line(r) for r in records[start : start + _WRITE_BATCH]))
    await response.write_eof()
    return response


async def _follow(
    request: web.Request,
    services: Services,
    slug: str,
    since: float | None,
    rollout_id: str | None,
) -> web.StreamResponse:
    response = _start()
    if rollout_id is not None:
        response.headers[ROLLOUT_HEADER] = rollout_id
    await response.prepare(request)
    buffer: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_FOLLOW_BUFFER)

    async def pump() -> None:
        try:
            async for record in services.shadow.sink.follow(slug, since):
                if rollout_id is None or record.get("rollout_id") == rollout_id:
                    await buffer.put(record)
        except Exception:  # headers are out: end the stream rather than the request task
            _log.exception("following shadow pairs of %s failed", slug)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                buffer.put_nowait(None)  # the sink closed: end the response

    # Held here and cancelled in `finally`: it never outlives the request.
    reader = asyncio.get_running_loop().create_task(pump(), name=f"shadow-follow-{slug}")
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    try:
        while not services.lifecycle.draining:
            try:
                async with asyncio.timeout(_TICK):
                    record = await buffer.get()
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                if loop.time() - last_write >= HEARTBEAT_SECONDS:
                    await response.write(b"\n")
                    last_write = loop.time()
                continue
            if record is None:
                break
            await response.write(_line(record))
            last_write = loop.time()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return response


async def shadow_rollout(request: web.Request) -> web.Response:
    """Which rollout ``rollout=latest`` selects now: the running one, else the last."""
    services: Services = request.app[SERVICES]
    authorize(request, services.settings.admin_tokens, write=False)
    slug = request.match_info["slug"]
    if not SLUG_PATTERN.match(slug):
        raise InvalidRequest("The prompt slug must match [A-Za-z0-9._-]{1,64}.", param="slug")
    rollout_id, running = await _latest(services, slug)
    return json_response({"slug": slug, "rollout_id": rollout_id, "running": running})


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/prompts/{{slug}}/shadow/pairs", shadow_pairs)
    app.router.add_get(f"{PREFIX}/prompts/{{slug}}/shadow/rollout", shadow_rollout)
