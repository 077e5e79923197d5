"""Shared factories for the tests (import from `tests.support`)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aioresponses import aioresponses
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.config import Settings, load_config
from proxy.services import Services, open_services
from proxy.web.app import build_admin_app, build_data_app

FAKE_UPSTREAM = "http://upstream.test/v1"
#: The two admin tokens of ``admin_settings``: full access, and read-only ("dashboards").
ADMIN_TOKEN = "admin-secret"
READ_TOKEN = "read-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


def make_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults plus dotted overrides: make_settings(**{"server.port": 1})."""
    store = f"embedded:{tempfile.mkdtemp(prefix='promptproxy-test-')}/registry.db"
    merged: dict[str, Any] = {"upstream.base_url": FAKE_UPSTREAM, "registry.store": store}
    merged.update(overrides)
    return load_config(None, environ=environ or {}, overrides=merged)


def admin_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """``make_settings`` with both admin tokens, the embedded store and the shadow sink
    under ``tmp_path``."""
    return make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": ADMIN_TOKEN, "READ_TOKEN": READ_TOKEN},
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "admin.tokens": [{"name": "dashboards", "env": "READ_TOKEN", "role": "read"}],
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
            **overrides,
        },
    )


async def run_cli(
    admin: TestClient[Any, Any], *args: str, token: str | None = READ_TOKEN
) -> Result:
    """``promptproxy ARGS`` against the in-process admin app, with ``token`` (none: no
    token at all). The CLI is synchronous (urllib), so it runs in a worker thread while
    the test's event loop serves the admin API."""
    env = {"PROMPTPROXY_ADMIN_URL": str(admin.make_url("")).rstrip("/")}
    if token is not None:
        env["PROMPTPROXY_ADMIN_TOKEN"] = token
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


@asynccontextmanager
async def proxy_clients(
    settings: Settings | None = None,
) -> AsyncIterator[tuple[TestClient[Any, Any], TestClient[Any, Any], Services]]:
    """The data app and the admin app in-process, sharing one set of services."""
    async with open_services(settings or make_settings()) as services:
        data = TestClient(TestServer(build_data_app(services), handler_cancellation=True))
        admin = TestClient(TestServer(build_admin_app(services)))
        async with data, admin:
            services.evals.listening(
                str(data.make_url("")), services.pipeline.eval_key, services.settings.eval_api_key
            )
            yield data, admin, services


class _CompatClientResponse(ClientResponse):
    """aiohttp 3.14 made `stream_writer` a required argument that aioresponses 0.7.9 does not
    pass (pnuckowski/aioresponses#289; fix proposed in #288). aiohttp only reads its
    `output_size`. Remove once aioresponses releases the fix."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class upstream_mock(aioresponses):
    """aioresponses that lets calls to the in-process test servers through."""

    def __init__(self) -> None:
        super().__init__(passthrough=["http://127.0.0.1"])

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatClientResponse)
        super().add(url, method, *args, **kwargs)
