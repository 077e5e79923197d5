"""Every admin route is reached only through its declared access, and says so.

The route table (``proxy.web.admin_routes.ROUTES``) declares each route's access; these
tests walk every route of it against the real admin app: without a token, with a wrong
one, with a read-only one, and with no token configured at all. The OpenAPI document must
state the same access, and the app must serve no route the table does not list.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from proxy.web.admin_auth import Access
from proxy.web.admin_endpoint import Endpoint
from proxy.web.admin_routes import ROUTES
from proxy.web.console_routes import ROUTES as CONSOLE_ROUTES
from proxy.web.openapi import document
from tests.support import READER, admin_settings, make_settings, proxy_clients

PROXY = Path(__file__).resolve().parents[2] / "proxy"
#: Values of the path parameters and of the required query parameters.
VALUES = {
    "slug": "support",
    "version": "1",
    "from": "1",
    "to": "2",
    "tenant_id": "acme",
    "run_id": "1765000000000-0a1b2c3d",
}
WRONG = {"Authorization": "Bearer not-a-token"}


def _url(route: Endpoint[Any, Any, Any, Any]) -> str:
    path = re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], route.path)
    required = [
        info.alias or name for name, info in route.query.model_fields.items() if info.is_required()
    ]
    return path + ("?" + urlencode({name: VALUES[name] for name in required}) if required else "")


def _label(route: Endpoint[Any, Any, Any, Any]) -> str:
    return f"{route.method} {route.path}"


GUARDED = [r for r in ROUTES if r.access is not Access.PUBLIC]
#: Statuses that show a call reached its handler: an answer, or the handler's own 404 (no
#: such prompt yet), or for a probe its 503 (not ready: not a refusal).
_REACHED = {Access.READ: (200, 404), Access.PUBLIC: (200, 503)}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with proxy_clients(admin_settings(tmp_path)) as (_, admin_client, _):
        yield admin_client


@pytest.fixture
async def open_admin(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """No admin token configured."""
    settings = make_settings(**{"registry.store": f"embedded:{tmp_path / 'registry.db'}"})
    async with proxy_clients(settings) as (_, admin_client, _):
        yield admin_client


async def _error(resp: Any) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["error"]["type"], body["error"]["message"]


@pytest.mark.parametrize("route", GUARDED, ids=_label)
async def test_without_a_token_every_guarded_route_is_a_401(
    admin: TestClient[Any, Any], route: Endpoint[Any, Any, Any, Any]
) -> None:
    status, kind, message = await _error(await admin.request(route.method, _url(route)))
    assert (status, kind) == (401, "authentication_error")
    assert message.startswith("Missing admin token.")

    status, kind, message = await _error(
        await admin.request(route.method, _url(route), headers=WRONG)
    )
    assert (status, kind, message) == (401, "authentication_error", "Invalid admin token.")


@pytest.mark.parametrize("route", ROUTES, ids=_label)
async def test_a_read_token_reads_and_is_refused_every_write(
    admin: TestClient[Any, Any], route: Endpoint[Any, Any, Any, Any]
) -> None:
    resp = await admin.request(route.method, _url(route), headers=READER)
    if route.access is Access.WRITE:
        status, kind, message = await _error(resp)
        assert (status, kind) == (403, "permission_error")
        assert message == "Token 'dashboards' is read-only; this call changes the registry."
    else:
        assert resp.status in _REACHED[route.access], await resp.text()


@pytest.mark.parametrize("route", ROUTES, ids=_label)
async def test_with_no_token_configured_reads_are_open_and_writes_refused(
    open_admin: TestClient[Any, Any], route: Endpoint[Any, Any, Any, Any]
) -> None:
    resp = await open_admin.request(route.method, _url(route))
    if route.access is Access.WRITE:
        status, kind, message = await _error(resp)
        assert (status, kind) == (401, "authentication_error")
        assert message.startswith("Admin writes are disabled: no admin token is configured.")
    else:
        assert resp.status in _REACHED[route.access], await resp.text()


@pytest.mark.parametrize("route", [r for r in ROUTES if r.access is Access.PUBLIC], ids=_label)
async def test_public_routes_answer_anyone(
    admin: TestClient[Any, Any], route: Endpoint[Any, Any, Any, Any]
) -> None:
    resp = await admin.request(route.method, _url(route), headers=WRONG)
    assert resp.status in _REACHED[Access.PUBLIC], await resp.text()


def test_the_openapi_document_states_each_routes_access() -> None:
    paths = document(ROUTES)["paths"]
    roles = {
        Access.PUBLIC: [],
        Access.READ: [{"bearer": ["read"]}],
        Access.WRITE: [{"bearer": ["admin"]}],
    }
    for route in ROUTES:
        operation = paths[route.path][route.method.lower()]
        assert operation["security"] == roles[route.access], _label(route)
        responses = operation["responses"]
        assert ("401" in responses) is (route.access is not Access.PUBLIC), _label(route)
        assert ("403" in responses) is (route.access is Access.WRITE), _label(route)
    assert sum(len(methods) for methods in paths.values()) == len(ROUTES)


async def test_the_admin_app_serves_only_the_routes_of_the_table(
    admin: TestClient[Any, Any],
) -> None:
    served = {
        (route.method, route.resource.canonical)
        for route in admin.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == {(r.method, r.path) for r in ROUTES} | set(CONSOLE_ROUTES)


def test_no_handler_authorizes_by_itself() -> None:
    """Authorization is the route table's and the wrapper's: a handler calling it would be
    a route whose access the table does not say."""
    callers = sorted(
        str(path.relative_to(PROXY))
        for path in PROXY.rglob("*.py")
        if "authorize(" in path.read_text(encoding="utf-8")
    )
    assert callers == ["web/admin_auth.py", "web/admin_endpoint.py"]
