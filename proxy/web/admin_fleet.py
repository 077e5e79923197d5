"""Admin API for the fleet.

GET /admin/v1/fleet   every replica on the board: the registry it serves (generation,
                      revision, state), how far behind the store and how stale it is, and
                      whether it is live
"""

from __future__ import annotations

from aiohttp import web

from proxy.web.admin_api import PREFIX, actor_of, json_response, services_of


async def list_fleet(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    status = await services_of(request).registry.fleet_status()
    return json_response(status.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/fleet", list_fleet)
