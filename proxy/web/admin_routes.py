"""Operator endpoints on the admin port: health, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.web.keys import SERVICES


async def healthz(request: web.Request) -> web.Response:
    # Liveness never touches Redis or the provider: a busy dependency must not get us killed.
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once a registry snapshot is loaded (and a bootstrap deferred by a cold start
    is done), until draining. A store outage after that
    does not make us unready: the last good snapshot keeps serving (reported in `registry`).
    Nor does a lost store (``state: replaced``): every replica would turn unready at once and
    nothing would serve; the replica serves its snapshot, answers degraded, and says why."""
    services = request.app[SERVICES]
    holder = services.snapshot
    state = "ok" if holder.healthy else "unavailable"
    if holder.replaced is not None:
        state = "replaced"
    registry = {
        "store": services.store_name,
        "state": state,
        "error": holder.replaced or holder.last_error,
        "generation": holder.current.generation,
        "revision": holder.current.revision,
        "prompts": len(holder.current.versions),
        "staleness_seconds": round(holder.staleness, 3),
        "snapshot_loaded": holder.loaded,
        "bootstrap_pending": holder.bootstrap_pending,
    }
    if services.lifecycle.draining:
        return web.json_response({"status": "draining", "registry": registry}, status=503)
    if not holder.ready:
        return web.json_response({"status": "starting", "registry": registry}, status=503)
    status = "ready" if state == "ok" else "degraded"
    return web.json_response({"status": status, "registry": registry})


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICES].metrics.registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/healthz", healthz)
    router.add_get("/livez", healthz)
    router.add_get("/health/liveliness", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/health/readiness", readyz)
    router.add_get("/metrics", metrics)
