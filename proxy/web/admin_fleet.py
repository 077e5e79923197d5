"""Admin API for the fleet.

GET /admin/v1/fleet   every replica on the board: the registry it serves (generation,
                      revision, state), how far behind the store and how stale it is, and
                      whether it is live
"""

from __future__ import annotations

from proxy.web import admin_models as api
from proxy.web.admin_endpoint import Call, NoBody
from proxy.web.admin_params import NoParams


async def list_fleet(call: Call[NoParams, NoParams, NoBody]) -> api.FleetStatus:
    status = await call.services.registry.fleet_status()
    return api.FleetStatus.model_validate(status.to_dict())
