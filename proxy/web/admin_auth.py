"""Admin API authentication: bearer tokens with a role, compared in constant time, or the
operator console's session cookie standing for one of them.

Each route declares its ``Access`` in the route table (``admin_routes``); the one wrapper
every route goes through (``admin_endpoint.bind``) calls ``authorize`` with it. No handler
authorizes by itself.

A cookie is taken only when no ``Authorization`` header is sent. Unlike a header, a browser
attaches a cookie by itself, so a write it authorizes must also prove it comes from the
console's own page: the session's CSRF value in ``X-CSRF-Token`` (which only a same-origin
page can read) and, when the browser says where the request comes from (``Origin``,
``Sec-Fetch-Site``), this origin.
"""

from __future__ import annotations

import hmac
import time
from enum import StrEnum

from aiohttp import web
from yarl import URL

from proxy.config import TokenGrant
from proxy.errors import Forbidden, Unauthorized
from proxy.web.console_session import COOKIE_NAME, Refusal, Session, csrf_matches, verify


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


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def match_token(grants: tuple[TokenGrant, ...], presented: str) -> TokenGrant | None:
    """The grant whose token is ``presented``, or None."""
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
    if "Authorization" not in request.headers and COOKIE_NAME in request.cookies:
        session = console_session(request, grants)
        if write:
            check_console_write(request, session)
        grant = session.grant
    else:
        presented = bearer_token(request)
        if presented is None:
            raise Unauthorized("Missing admin token. " + HOW_TO_SET)
        found = match_token(grants, presented)
        if found is None:
            raise Unauthorized("Invalid admin token.")
        grant = found
    if write and grant.role != "admin":
        raise Forbidden(f"Token '{grant.name}' is read-only; this call changes the registry.")
    return grant.name


def console_session(request: web.Request, grants: tuple[TokenGrant, ...]) -> Session:
    """The console session of the request's cookie, or a 401 saying why there is none."""
    value = request.cookies.get(COOKIE_NAME)
    if value is None:
        raise Unauthorized("Not logged in to the console. " + HOW_TO_SET)
    found = verify(value, grants, time.time())
    if isinstance(found, Refusal):
        raise Unauthorized(found.value)
    return found


def check_console_write(request: web.Request, session: Session) -> None:
    """A 403 unless a write authorized by the console's cookie comes from the console's
    own page: the session's CSRF value in ``X-CSRF-Token``, and neither ``Origin`` nor
    ``Sec-Fetch-Site`` (when the browser sends them) naming another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() in ("cross-site", "same-site"):
        raise Forbidden(
            f"CSRF check failed: the browser says this request comes from another site "
            f"(Sec-Fetch-Site: {site.strip().lower()}); console writes come from its own page."
        )
    origin = request.headers.get("Origin")
    if origin is not None and _origin(origin) not in own_origins(request):
        raise Forbidden(
            "CSRF check failed: the request's Origin is not this proxy's; console writes "
            "come from its own page."
        )
    presented = request.headers.get("X-CSRF-Token")
    if presented is None:
        raise Forbidden(
            "CSRF check failed: a write authorized by the console's session cookie must "
            "send X-CSRF-Token (the console page does; a script should send "
            "`Authorization: Bearer <token>` instead)."
        )
    if not csrf_matches(session, presented.strip()):
        raise Forbidden("CSRF check failed: X-CSRF-Token does not match the console session.")


def _first(value: str | None) -> str | None:
    """The first value of a comma-separated header a chain of proxies appends to."""
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


def is_https(request: web.Request) -> bool:
    """The browser reached us over HTTPS: directly, or through a TLS-terminating proxy that
    says so in ``X-Forwarded-Proto``."""
    forwarded = _first(request.headers.get("X-Forwarded-Proto"))
    return request.secure or (forwarded is not None and forwarded.lower() == "https")


_Origin = tuple[str, str, int | None]


def _origin(text: str) -> _Origin | None:
    """``scheme://host[:port]`` as (scheme, host, port with the default filled in), or None
    for anything else (``null``, a path, user info)."""
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host or url.user or url.password:
        return None
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        return None
    return url.scheme, url.host.lower(), url.port


def own_origins(request: web.Request) -> set[_Origin]:
    """The origins a page of ours may have: the request's scheme or the one a TLS-terminating
    proxy names in ``X-Forwarded-Proto``, with the ``Host`` it was sent to or the one such a
    proxy names in ``X-Forwarded-Host``. Taking the forwarded headers costs nothing here:
    a page on another site cannot set them (nor any header but a few) on a request that
    carries our cookie, and ``X-CSRF-Token`` is checked anyway."""
    schemes = {request.scheme}
    proto = _first(request.headers.get("X-Forwarded-Proto"))
    if proto is not None:
        schemes.add(proto.lower())
    hosts = {request.host}
    forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
    if forwarded_host is not None:
        hosts.add(forwarded_host)
    found: set[_Origin] = set()
    for scheme in schemes:
        for host in hosts:
            parsed = _origin(f"{scheme}://{host}")
            if parsed is not None:
                found.add(parsed)
    return found
