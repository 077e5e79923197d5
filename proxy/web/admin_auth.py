"""Admin API authentication: bearer tokens with a role, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from proxy.config import TokenGrant
from proxy.errors import Forbidden, Unauthorized

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


def authorize(request: web.Request, grants: tuple[TokenGrant, ...], *, write: bool) -> str:
    """Return the actor name for the audit log, or raise 401/403."""
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
