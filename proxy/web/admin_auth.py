"""Admin API authentication: bearer tokens with a role, compared in constant time.

Each route declares its ``Access`` in the route table (``admin_routes``); the one wrapper
every route goes through (``admin_endpoint.bind``) calls ``authorize`` with it. No handler
authorizes by itself.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from aiohttp import web

from proxy.config import TokenGrant
from proxy.errors import Forbidden, Unauthorized


class Access(StrEnum):
    """Who may call a route."""

    #: Anyone: probes, metrics, the OpenAPI document.
    PUBLIC = "public"
    #: A read or an admin token; anyone while no token is configured.
    READ = "read"
    #: An admin token; nobody while no token is configured (401 saying how to set one).
    WRITE = "write"


HOW_TO_SET = (
    "Set PROMPTPROXY_ADMIN_TOKEN (or admin.tokens in the config) on the proxy and send it as "
    "`Authorization: Bearer <token>` (the CLI reads --token or PROMPTPROXY_ADMIN_TOKEN)."
)


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _match(grants: tuple[TokenGrant, ...], presented: str) -> TokenGrant | None:
    # Compare against every token so timing does not reveal which one (or whether any) matched.
    found: TokenGrant | None = None
    for grant in grants:
        if hmac.compare_digest(grant.token.encode(), presented.encode()):
            found = grant
    return found


def authorize(request: web.Request, grants: tuple[TokenGrant, ...], access: Access) -> str:
    """Return the actor name for the audit log, or raise 401/403."""
    if access is Access.PUBLIC:
        return "anonymous"
    write = access is Access.WRITE
    if not grants:
        if write:
            raise Unauthorized(
                "Admin writes are disabled: no admin token is configured. " + HOW_TO_SET
            )
        return "anonymous"
    presented = _presented(request)
    if presented is None:
        raise Unauthorized("Missing admin token. " + HOW_TO_SET)
    grant = _match(grants, presented)
    if grant is None:
        raise Unauthorized("Invalid admin token.")
    if write and grant.role != "admin":
        raise Forbidden(f"Token '{grant.name}' is read-only; this call changes the registry.")
    return grant.name
