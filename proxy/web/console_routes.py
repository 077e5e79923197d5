"""The operator console on the admin port: its static files and its login.

The console is a face on the admin API, not a part of it: these routes serve the page's
files (flat, from one directory, by a name pattern, never a path) and turn a token into a
session cookie (``console_session``). Everything the page shows or changes goes through
``/admin/v1/...``, which takes the cookie in place of a bearer token
(``admin_auth.authorize``). So these routes are not in the admin route table nor in its
OpenAPI document.

Every answer under ``/console`` carries the console's content security policy and the
headers that keep it from being framed, sniffed or named in a ``Referer`` (set on
``on_response_prepare``, so errors carry them too).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from proxy.config import TokenGrant
from proxy.errors import InvalidRequest, RouteNotFound, Unauthorized
from proxy.log import APP_LOGGER
from proxy.web.admin_auth import (
    HOW_TO_SET,
    bearer_token,
    check_console_origin,
    check_console_write,
    console_session,
    is_https,
    match_token,
)
from proxy.web.console_session import (
    COOKIE_NAME,
    LIFETIME_SECONDS,
    Session,
    csrf_value,
    mint,
    verify,
)
from proxy.web.keys import SERVICES

#: Where the console's files are: package data (pyproject's package-data ships them).
FILES: Final = Path(__file__).resolve().parent / "console"
#: The file names served: flat, lowercase, of the kinds the page is made of. Anything else,
#: and every path with a separator or a dot file, is a 404 before the disk is touched.
FILE_NAME: Final = re.compile(r"^[a-z0-9-]+\.(js|css|svg|png)$")
_TYPES: Final = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}
#: The policy of every console answer (docs/design-console.md): our own files only, no
#: inline script or style, no framing, nothing sent anywhere but here.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: The console's routes (method, path), for the test that the admin app serves nothing
#: else besides the admin route table.
ROUTES: Final = (
    ("GET", "/console"),
    ("GET", "/console/"),
    ("POST", "/console/session"),
    ("GET", "/console/session"),
    ("DELETE", "/console/session"),
    ("GET", "/console/{file}"),
)
_FILES_KEY: Final = web.AppKey("console_files", Path)
_log = logging.getLogger(APP_LOGGER)


def add_routes(app: web.Application, files: Path = FILES) -> None:
    """Serve the console from ``files`` (a flat directory holding ``index.html``)."""
    app[_FILES_KEY] = files
    app.router.add_get("/console", _to_slash)
    app.router.add_get("/console/", _index)
    # Before `{file}`: "session" is no file name, but its methods must not read as a 405.
    app.router.add_route("POST", "/console/session", _log_in)
    app.router.add_get("/console/session", _session)
    app.router.add_route("DELETE", "/console/session", _log_out)
    app.router.add_get("/console/{file}", _file)
    app.on_response_prepare.append(_secure)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/console" or request.path.startswith("/console/"):
        response.headers.update(SECURITY_HEADERS)
    elif COOKIE_NAME in request.cookies and "Authorization" not in request.headers:
        # An admin answer read with the console's cookie is the registry as an operator
        # sees it: a browser must not keep it on disk for whoever uses the machine next.
        response.headers["Cache-Control"] = "no-store"


async def _to_slash(request: web.Request) -> web.StreamResponse:
    # 308 keeps the method; relative, so it holds behind a proxy that rewrites the host.
    raise web.HTTPPermanentRedirect("/console/")


async def _index(request: web.Request) -> web.StreamResponse:
    # no-store: the page names its modules, so an old copy could load files of another
    # release; it is small and read once per visit.
    return await _serve(request, "index.html", "text/html; charset=utf-8", "no-store")


async def _file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    found = FILE_NAME.fullmatch(name)
    if found is None:
        raise RouteNotFound(f"No console file named {name!r}.")
    # no-cache: kept, but checked against the ETag each time, so a new release shows at once.
    return await _serve(request, name, _TYPES[found.group(1)], "no-cache")


async def _serve(
    request: web.Request, name: str, content_type: str, cache: str
) -> web.StreamResponse:
    path = request.app[_FILES_KEY] / name
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if name == "index.html":
            # The install path is not the caller's business: the operator's log of the
            # install (or `pip show -f promptproxy`) tells them.
            raise RouteNotFound(
                "The console's files are not installed with this proxy (its package has no "
                "proxy/web/console/index.html)."
            ) from None
        raise RouteNotFound(f"No console file named {name!r}.") from None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": cache, "ETag": etag}
    if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = content_type
    return web.Response(body=body, headers=headers)


def _grants(request: web.Request) -> tuple[TokenGrant, ...]:
    return request.app[SERVICES].settings.admin_tokens


def _answer(grant: TokenGrant, session: Session | None) -> dict[str, Any]:
    return {
        "name": grant.name,
        "role": grant.role,
        "csrf": csrf_value(session) if session is not None else None,
        "expires_at": session.expires_at if session is not None else None,
    }


#: What the page gets while no token is configured: it reads as anyone may, and shows
#: no write control (writes are refused without a token anyway).
_ANONYMOUS: Final = {"name": "anonymous", "role": "read", "csrf": None, "expires_at": None}


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _read_token(request: web.Request) -> str:
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest(
            'Invalid request body: send JSON {"token": "<admin token>"}.', param="token"
        )
    return token.strip()


async def _log_in(request: web.Request) -> web.StreamResponse:
    grants = _grants(request)
    if not grants:
        raise InvalidRequest(
            "No admin token is configured, so the console is read-only and needs no login; "
            "open /console/ to read. To change things from it: " + HOW_TO_SET
        )
    check_console_origin(request)
    token = await _read_token(request)
    grant = match_token(grants, token)
    if grant is None:
        # The admin port keeps no access log: without this line, someone guessing tokens
        # at the login leaves no trace. Where from, never what was tried.
        _log.warning("console login refused: no admin token matches (from %s)", request.remote)
        raise Unauthorized("Invalid admin token.")
    cookie, session = mint(grant, time.time())
    response = _json(_answer(grant, session))
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=LIFETIME_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )
    return response


async def _session(request: web.Request) -> web.StreamResponse:
    grants = _grants(request)
    if not grants:
        return _json(dict(_ANONYMOUS))
    if "Authorization" in request.headers:
        # A script (or a test) asking who its token is: no cookie, so no CSRF value.
        token = bearer_token(request)
        grant = match_token(grants, token) if token is not None else None
        if grant is None:
            raise Unauthorized("Invalid admin token.")
        return _json(_answer(grant, None))
    session = console_session(request, grants)
    return _json(_answer(session.grant, session))


async def _log_out(request: web.Request) -> web.StreamResponse:
    value = request.cookies.get(COOKIE_NAME)
    if value is not None:
        found = verify(value, _grants(request), time.time())
        # A live session is ended only by its own page; a dead cookie is just cleared.
        if isinstance(found, Session):
            check_console_write(request, found)
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(
        COOKIE_NAME, path="/", httponly=True, samesite="Strict", secure=is_https(request)
    )
    return response
