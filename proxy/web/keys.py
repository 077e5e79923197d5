from __future__ import annotations

from aiohttp import web

from proxy.services import Services

SERVICES = web.AppKey("services", Services)
#: The proxy's own id for each request, set by the error middleware.
REQUEST_ID = web.RequestKey("request_id", str)
