"""Builds the two applications: the data plane and the operator (admin) plane. Wiring only."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from proxy.services import Services
from proxy.web import admin_routes, console_routes, feedback_routes, proxy_routes
from proxy.web.keys import SERVICES
from proxy.web.middlewares import error_middleware


def build_data_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware()],
        client_max_size=services.settings.config.server.max_body_bytes,
    )
    app[SERVICES] = services
    feedback_routes.add_routes(app)
    proxy_routes.add_routes(app, services.pipeline)
    return app


def build_admin_app(
    services: Services, console_files: Path = console_routes.FILES
) -> web.Application:
    """``console_files``: where the console's files are (tests serve their own)."""
    app = web.Application(middlewares=[error_middleware()])
    app[SERVICES] = services
    admin_routes.add_routes(app)
    console_routes.add_routes(app, console_files)
    return app
