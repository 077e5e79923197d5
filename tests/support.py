"""Shared factories for the tests (import from `tests.support`)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aioresponses import aioresponses

from proxy.config import Settings, load_config
from proxy.services import Services, open_services
from proxy.web.app import build_admin_app, build_data_app

FAKE_UPSTREAM = "http://upstream.test/v1"


def make_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults plus dotted overrides: make_settings(**{"server.port": 1})."""
    store = f"embedded:{tempfile.mkdtemp(prefix='promptproxy-test-')}/registry.db"
    merged: dict[str, Any] = {"upstream.base_url": FAKE_UPSTREAM, "registry.store": store}
    merged.update(overrides)
    return load_config(None, environ=environ or {}, overrides=merged)


@asynccontextmanager
async def proxy_clients(
    settings: Settings | None = None,
) -> AsyncIterator[tuple[TestClient[Any, Any], TestClient[Any, Any], Services]]:
    """The data app and the admin app in-process, sharing one set of services."""
    async with open_services(settings or make_settings()) as services:
        data = TestClient(TestServer(build_data_app(services), handler_cancellation=True))
        admin = TestClient(TestServer(build_admin_app(services)))
        async with data, admin:
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
