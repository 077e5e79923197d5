"""The admin port of ``serve --workers N``, served by the supervisor.

- ``/healthz``: the supervisor is alive (it restarts its workers itself).
- ``/readyz``: 200 when every worker answers its own ``/readyz`` with 200; else 503
  naming the ones that do not. Asked of the workers at each call.
- ``/metrics``: every worker's ``/metrics`` merged (``proxy.workers.merge``), with the
  supervisor's own families.
- anything else (the admin API, the OpenAPI document): forwarded as it is to one worker,
  the first ready one; method, path, query, headers, body and the answer, streamed both
  ways (NDJSON watches included), pass unchanged. Each worker is a replica: an admin write
  answers once the worker that took it serves it, and the others follow as replicas do.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from proxy.errors import ServiceUnavailable
from proxy.web.middlewares import error_middleware
from proxy.workers.merge import merge, parse, render
from proxy.workers.supervisor import READY, Slot, Supervisor, SupervisorMetrics

#: Headers about one hop's connection (RFC 9110 7.6.1), never passed on. Content-Length
#: passes: a body is forwarded byte for byte, so its length holds.
_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK: Final = 64 * 1024
#: No total deadline on a forwarded call: a watch (`rollout status --watch`) streams for
#: as long as the caller reads. The worker's own deadlines apply.
_FORWARD_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=5.0)


#: How long an admin call waits for a worker the supervisor has not seen ready yet. Its
#: poll runs every 0.1 s (later on a busy machine), while /readyz asks the workers
#: themselves: a caller told "ready" must not get "no worker is ready" on its next call.
_READY_WAIT_SECONDS: Final = 2.0
_READY_POLL_SECONDS: Final = 0.05


def build_front_app(supervisor: Supervisor, metrics: SupervisorMetrics) -> web.Application:
    app = web.Application(middlewares=[error_middleware()])
    front = _Front(supervisor, metrics)
    app.router.add_get("/healthz", front.healthz)
    app.router.add_get("/readyz", front.readyz)
    app.router.add_get("/metrics", front.metrics)
    app.router.add_route("*", "/{tail:.*}", front.forward)
    return app


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _passing(headers: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP)


class _Front:
    def __init__(self, supervisor: Supervisor, metrics: SupervisorMetrics) -> None:
        self._supervisor = supervisor
        self._metrics = metrics

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        supervisor = self._supervisor
        answers = await asyncio.gather(*(_readiness(slot) for slot in supervisor.slots))
        not_ready = [a["index"] for a in answers if a["status_code"] != 200]
        if supervisor.stopping:
            status = "draining"
        elif not_ready:
            status = "not_ready"
        elif any(a["status"] == "degraded" for a in answers):
            status = "degraded"
        else:
            status = "ready"
        body = {"status": status, "not_ready": not_ready, "workers": answers}
        return _json(body, 200 if status in ("ready", "degraded") else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        workers = await self._supervisor.scrape()
        own = parse(generate_latest(self._metrics.registry).decode())
        return web.Response(
            body=render(merge([workers, own])), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _answering(self) -> Slot | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_WAIT_SECONDS
        slot = self._supervisor.answering()
        while slot is None and loop.time() < deadline:
            await asyncio.sleep(_READY_POLL_SECONDS)
            slot = self._supervisor.answering()
        return slot

    async def forward(self, request: web.Request) -> web.StreamResponse:
        slot = await self._answering()
        if slot is None:
            raise ServiceUnavailable("No worker is ready to answer admin calls yet; retry.")
        url = URL("http://worker" + request.raw_path, encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with slot.session.request(
                request.method,
                url,
                headers=_passing(request.headers),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                timeout=_FORWARD_TIMEOUT,
            ) as answer:
                response = web.StreamResponse(
                    status=answer.status, reason=answer.reason, headers=_passing(answer.headers)
                )
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (OSError, aiohttp.ClientError) as exc:
            if response is not None and response.prepared:
                # The head went out: a worker failing mid-answer (or a caller gone) can
                # only cut the connection, as the worker itself would have; without the
                # last chunk, the caller sees an incomplete answer, never a short one.
                if request.transport is not None:
                    request.transport.close()
                return response
            raise ServiceUnavailable(
                f"The worker answering admin calls failed ({type(exc).__name__}); retry."
            ) from None


async def _readiness(slot: Slot) -> dict[str, Any]:
    found: dict[str, Any] = {
        "index": slot.index,
        "pid": slot.pid,
        "admin": str(slot.admin_path),
        "state": slot.state,
        "status_code": 503,
        "status": "down" if slot.pid is None else "unreachable",
    }
    if slot.pid is None:
        return found
    with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError, ValueError):
        status, body = await slot.call("/readyz")
        ready = orjson.loads(body)
        found.update(status_code=status, status=ready.get("status"), ready=ready)
        if status == 200 and slot.state != READY:
            # A worker can be ready before the supervisor's poll sees it.
            found["state"] = READY
    return found
