"""Admin API for eval runs: start one and follow it, read stored runs back.

``POST /admin/v1/prompts/{slug}/evals`` (``variant=`` for a variant's line): checks the
suite and the versions, starts the run and follows it as JSON lines: ``started`` (its id
and the number of calls), ``progress`` as samples finish, then ``finished`` with the whole
run (its summary and every sample) or ``failed`` with the reason. A client that goes away
stops following; the run goes on and is stored.

``GET /admin/v1/prompts/{slug}/evals?candidate=N&limit=50``: stored runs, newest first,
without their samples. ``GET /admin/v1/evals/{run_id}``: one run, whole.

``POST /admin/v1/prompts/{slug}/replays``: the captured calls of the baseline since ``since``
sent again to the candidate and to the baseline, followed as an eval run is, stored as a
run of kind ``replay``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.evals.report import Criteria
from proxy.evals.service import EvalRequest, Progress, ReplayRequest
from proxy.evals.suite import SuiteError, parse_suite
from proxy.web import admin_models as api
from proxy.web.admin_endpoint import Call, NoBody
from proxy.web.admin_params import EvalRunPath, EvalsQuery, NoParams, SlugPath, parse_since

NDJSON = "application/x-ndjson"
#: A quiet run still writes a line this often, so proxies in between keep the connection.
_HEARTBEAT = 15.0
_COALESCE = 0.05


def _line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"


async def start_eval(call: Call[SlugPath, NoParams, api.EvalIn]) -> web.StreamResponse:
    key, body = call.path.key, call.body
    if key.layer is not None:
        raise InvalidRequest(
            "An eval runs a base or a variant's version; to run it as a tenant's callers get "
            "it, give `tenant` in the body.",
            param="tenant",
            code="invalid_layer",
        )
    if body.suite_name is not None and not body.suite_name.isprintable():
        raise InvalidRequest("suite_name must be printable text.", param="suite_name")
    try:
        suite = parse_suite(body.suite, source=body.suite_name or f"suite of {key.slug}")
    except SuiteError as exc:
        raise InvalidRequest(str(exc), param="suite", code="invalid_suite") from None
    if suite.slug != key.slug:
        raise InvalidRequest(
            f"The suite is for '{suite.slug}', not '{key.slug}'.", param="suite.slug"
        )
    if suite.variant is not None and suite.variant != key.variant:
        raise InvalidRequest(
            f"The suite is variant {suite.variant}'s: run it with variant={suite.variant}.",
            param="variant",
        )
    if body.tenant is not None:
        suite = dataclasses.replace(suite, tenant=body.tenant)
    request = EvalRequest(
        key=key,
        suite=suite,
        candidate=body.candidate,
        baseline=body.baseline,
        criteria=Criteria(body.min_pass_rate, body.max_drop),
        concurrency=body.concurrency,
    )
    progress = await call.services.evals.start(request, call.actor)
    return await _stream(call, progress)


async def start_replay(call: Call[SlugPath, NoParams, api.ReplayIn]) -> web.StreamResponse:
    key, body = call.path.key, call.body
    if key.layer is not None:
        raise InvalidRequest(
            "A replay runs a base or a variant's captured calls.",
            param="tenant",
            code="invalid_layer",
        )
    since = parse_since(body.since, time.time())
    assert since is not None  # the field has a default
    request = ReplayRequest(
        key=key,
        candidate=body.candidate,
        baseline=body.baseline,
        since=since,
        limit=body.limit,
        concurrency=body.concurrency,
    )
    return await _stream(call, await call.services.evals.replay(request, call.actor))


async def _stream(call: Call[Any, Any, Any], progress: Progress) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(call.request)
    try:
        await response.write(_line({"event": "started", **progress.to_dict()}))
        await _follow(call, response, progress)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: the run goes on and is stored
    return response


async def _follow(call: Call[Any, Any, Any], response: web.StreamResponse, run: Progress) -> None:
    written = -1
    while run.state == "running" and not call.services.lifecycle.draining:
        changed = run.changed
        try:
            async with asyncio.timeout(_HEARTBEAT):
                await changed.wait()
        except TimeoutError:
            await response.write(b"\n")  # quiet: keep the connection
            continue
        await asyncio.sleep(_COALESCE)  # samples finishing together: one line, not one each
        if run.done != written:
            written = run.done
            await response.write(_line({"event": "progress", "done": run.done, "total": run.total}))
    if run.run is not None:
        finished: dict[str, Any] = {"event": "finished", "run": run.run.to_dict()}
        if run.error is not None:
            finished["warning"] = run.error
        await response.write(_line(finished))
    elif run.state == "failed":
        await response.write(_line({"event": "failed", "id": run.id, "error": run.error}))
    else:  # this process is draining: the run is cancelled with it
        await response.write(_line({"event": "failed", "id": run.id, "error": "draining"}))


async def list_evals(call: Call[SlugPath, EvalsQuery, NoBody]) -> api.EvalRunList:
    runs = await call.services.evals.history(call.path.key, call.query.candidate, call.query.limit)
    return api.EvalRunList.model_validate({"data": [{**r.to_dict(), "detail": {}} for r in runs]})


async def get_eval(call: Call[EvalRunPath, NoParams, NoBody]) -> api.EvalRunOut:
    run = await call.services.evals.get(call.path.run_id)
    return api.EvalRunOut.model_validate(run.to_dict())
