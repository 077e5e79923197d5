"""Admin API for shadow pairs: read them back, or follow them live, as JSON lines; which
rollout ``latest`` means; and the report of a rollout's pairs.

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

``GET /admin/v1/prompts/{slug}/shadow/report?since=1h&rollout=ID&alpha=&margin=&min_pairs=``:
does the candidate of one rollout (``latest`` by default) diverge from stable more than
stable from itself (``proxy.shadow.report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import NotFound, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.prompt_key import PromptKey
from proxy.services import Services
from proxy.shadow.pairs import SinkUnavailable
from proxy.shadow.report import MeasureRow, ShadowReport, make_report
from proxy.web import admin_models as api
from proxy.web.admin_endpoint import Call, NoBody
from proxy.web.admin_params import (
    LATEST,
    NoParams,
    PairsQuery,
    ReportQuery,
    ShadowPath,
    parse_since,
)

_log = logging.getLogger(APP_LOGGER)

NDJSON = "application/x-ndjson"
HEARTBEAT_SECONDS = 15.0
#: How often a quiet follow checks for a gone client or a draining process.
_TICK = 1.0
_FOLLOW_BUFFER = 1000
_WRITE_BATCH = 64
ROLLOUT_HEADER = "X-Promptproxy-Rollout"


async def _latest(services: Services, key: PromptKey) -> tuple[str, bool]:
    found = await services.registry.latest_rollout(key)
    if found is None:
        raise NotFound(
            f"{key} has had no rollout, so it has no shadow pairs to choose from.",
            param="rollout",
            code="rollout_not_found",
        )
    return found


async def _rollout_id(services: Services, key: PromptKey, value: str | None) -> str | None:
    """The rollout id whose pairs to keep: None for all, ``latest`` resolved now."""
    if value == LATEST:
        rollout_id, _ = await _latest(services, key)
        return rollout_id
    return value


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(api.wire(api.ShadowPair.model_validate(record))) + b"\n"


def _start() -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = NDJSON
    # Keep proxies in front of the admin port from buffering a live tail.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _unavailable(exc: SinkUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(f"The shadow pair store is unavailable: {exc}")


async def shadow_pairs(call: Call[ShadowPath, PairsQuery, NoBody]) -> web.StreamResponse:
    request, services, key, query = call.request, call.services, call.path.key, call.query
    rollout_id = await _rollout_id(services, key, query.rollout)
    if query.follow:
        return await _follow(request, services, key, query.since, rollout_id)
    try:
        records = await services.shadow.sink.read(key, query.since, query.limit, rollout_id)
    except SinkUnavailable as exc:
        raise _unavailable(exc) from None
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
    key: PromptKey,
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
            async for record in services.shadow.sink.follow(key, since):
                if rollout_id is None or record.get("rollout_id") == rollout_id:
                    await buffer.put(record)
        except Exception:  # headers are out: end the stream rather than the request task
            _log.exception("following shadow pairs of %s failed", key)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                buffer.put_nowait(None)  # the sink closed: end the response

    # Held here and cancelled in `finally`: it never outlives the request.
    reader = asyncio.get_running_loop().create_task(pump(), name=f"shadow-follow-{key}")
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


async def shadow_rollout(call: Call[ShadowPath, NoParams, NoBody]) -> api.ShadowRollout:
    """Which rollout ``rollout=latest`` selects now: the running one, else the last."""
    key = call.path.key
    rollout_id, running = await _latest(call.services, key)
    return api.ShadowRollout(slug=key.text, rollout_id=rollout_id, running=running)


def _measure(row: MeasureRow) -> api.MeasureReport:
    m = row.verdict
    return api.MeasureReport(
        measure=m.measure,
        result=m.result,
        noise_mean=m.noise_mean,
        candidate_mean=m.candidate_mean,
        noise_n=m.noise_n,
        candidate_n=m.candidate_n,
        p_value=m.p_value,
        effect=m.effect,
        noise_p50=row.noise_p50,
        noise_p95=row.noise_p95,
        candidate_p50=row.candidate_p50,
        candidate_p95=row.candidate_p95,
        noise_bins=row.noise_bins,
        candidate_bins=row.candidate_bins,
    )


def report_model(report: ShadowReport) -> api.ShadowReport:
    return api.ShadowReport(
        slug=report.key.text,
        rollout_id=report.rollout_id,
        rollout_running=report.rollout_running,
        since=report.since,
        pairs=api.PairCounts(
            stable=report.noise.pairs, candidate=report.candidate.pairs, skipped=report.skipped
        ),
        alpha=report.alpha,
        margin=report.margin,
        min_pairs=report.min_pairs,
        result=report.verdict.result,
        measures=[_measure(row) for row in report.rows()],
    )


async def shadow_report(call: Call[ShadowPath, ReportQuery, NoBody]) -> api.ShadowReport:
    """The report of one rollout's pairs since ``since``: the one named, else the running
    one, else the last (``rollout_running`` says which; null when named)."""
    services, key, query = call.services, call.path.key, call.query
    since = parse_since(query.since, time.time())
    running: bool | None = None
    if query.rollout is None or query.rollout == LATEST:
        rollout_id, running = await _latest(services, key)
    else:
        rollout_id = query.rollout
    try:
        report = await make_report(
            services.shadow.sink,
            key,
            rollout_id,
            running,
            query.since,
            since,
            query.limit,
            alpha=query.alpha,
            margin=query.margin,
            min_pairs=query.min_pairs,
        )
    except SinkUnavailable as exc:
        raise _unavailable(exc) from None
    return report_model(report)
