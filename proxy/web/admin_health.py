"""Operator endpoints on the admin port: health, readiness, metrics. Public (see the
route table): orchestrators and Prometheus call them without a token."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.web import admin_models as api
from proxy.web.admin_endpoint import Call, NoBody, Reply
from proxy.web.admin_params import NoParams


async def healthz(call: Call[NoParams, NoParams, NoBody]) -> api.Health:
    # Liveness never touches Redis or the provider: a busy dependency must not get us killed.
    return api.Health(status="ok")


async def readyz(call: Call[NoParams, NoParams, NoBody]) -> Reply[api.Ready]:
    """Ready once a registry snapshot is loaded (and a bootstrap deferred by a cold start
    is done), until draining. A store outage after that
    does not make us unready: the last good snapshot keeps serving (reported in `registry`).
    Nor does a lost store (``state: replaced``): every replica would turn unready at once and
    nothing would serve; the replica serves its snapshot, answers degraded, and says why."""
    services = call.services
    holder = services.snapshot
    state = "ok" if holder.healthy else "unavailable"
    if holder.replaced is not None:
        state = "replaced"
    registry = api.ReadyRegistry.model_validate(
        {
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
    )
    if services.lifecycle.draining:
        return Reply(api.Ready(status="draining", registry=registry), 503)
    if not holder.ready:
        return Reply(api.Ready(status="starting", registry=registry), 503)
    return Reply(api.Ready(status="ready" if state == "ok" else "degraded", registry=registry))


async def metrics(call: Call[NoParams, NoParams, NoBody]) -> web.Response:
    registry = call.services.metrics.registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
