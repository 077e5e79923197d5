"""The operator console on the real admin app: its login and session cookie, the cookie
standing for a token on the admin API (with CSRF and origin checks on writes), and its
files with their security headers. The console's files are the test's own, in a tmp dir.

Cookies are sent by hand (the client keeps none), so each test says exactly what the
browser would send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.config import Settings, TokenGrant
from proxy.services import open_services
from proxy.web.app import build_admin_app
from proxy.web.console_routes import CSP
from proxy.web.console_session import COOKIE_NAME, LIFETIME_SECONDS, mint
from tests.support import ADMIN_TOKEN, READ_TOKEN, admin_settings, make_settings

ALICE_TOKEN = "alice-0d9f8e7c6b5a4"
SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
INDEX = '<!doctype html><title>console</title><script type="module" src="main.js"></script>'
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VERSION = {"template": "Hello {{ name }}", "variables": [{"name": "name"}]}

Admin = TestClient[Any, Any]
Open = Callable[[Settings], AbstractAsyncContextManager[Admin]]


def _settings(tmp_path: Path, **environ: str) -> Settings:
    """``admin_settings`` plus a second admin token named ``alice``."""
    env = {"PROMPTPROXY_ADMIN_TOKEN": ADMIN_TOKEN, "READ_TOKEN": READ_TOKEN}
    env["ALICE_TOKEN"] = ALICE_TOKEN
    env.update(environ)
    return make_settings(
        environ=env,
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "admin.tokens": [
                {"name": "dashboards", "env": "READ_TOKEN", "role": "read"},
                {"name": "alice", "env": "ALICE_TOKEN", "role": "admin"},
            ],
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
        },
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A console directory, and beside it a file that must never be served."""
    folder = tmp_path / "console"
    folder.mkdir()
    (folder / "index.html").write_text(INDEX)
    (folder / "main.js").write_text("export const ready = true;\n")
    (folder / "app.css").write_text("body { margin: 0; }\n")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / ".hidden.js").write_text("hidden")
    (folder / "notes.txt").write_text("notes")
    (folder / "app.py").write_text("print('source')")
    (tmp_path / "secret.js").write_text("SECRET-OUTSIDE")
    return folder


@pytest.fixture
def open_admin(files: Path) -> Open:
    @asynccontextmanager
    async def opened(settings: Settings) -> AsyncIterator[Admin]:
        async with open_services(settings) as services:
            server = TestServer(build_admin_app(services, console_files=files))
            async with TestClient(server, cookie_jar=DummyCookieJar()) as client:
                yield client

    return opened


@pytest.fixture
async def admin(tmp_path: Path, open_admin: Open) -> AsyncIterator[Admin]:
    async with open_admin(_settings(tmp_path)) as client:
        yield client


def _set_cookie(resp: Any) -> Any:
    """The console cookie the answer sets (its morsel: value and attributes)."""
    found = [h for h in resp.headers.getall("Set-Cookie", []) if h.startswith(COOKIE_NAME + "=")]
    assert len(found) == 1, resp.headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(found[0])
    return jar[COOKIE_NAME], found[0]


async def _log_in(admin: Admin, token: str = ALICE_TOKEN) -> tuple[str, str]:
    """Log in as a browser would: the cookie value and the CSRF value."""
    resp = await admin.post("/console/session", json={"token": token})
    assert resp.status == 200, await resp.text()
    morsel, _ = _set_cookie(resp)
    return morsel.value, (await resp.json())["csrf"]


def _browser(cookie: str, csrf: str | None = None, **extra: str) -> dict[str, str]:
    """What the console's page sends: the cookie, same-origin marks, the CSRF header."""
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}", "Sec-Fetch-Site": "same-origin"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    headers.update(extra)
    return headers


async def _error(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return resp.status, body["error"]["message"]


async def _versions(admin: Admin, slug: str = "greet") -> int:
    resp = await admin.get(f"/admin/v1/prompts/{slug}", headers=BEARER)
    if resp.status == 404:
        return 0
    return len((await resp.json())["data"])


# -- logging in ---------------------------------------------------------------------------


async def test_a_login_answers_who_and_sets_a_strict_http_only_cookie(admin: Admin) -> None:
    before = time.time()
    resp = await admin.post("/console/session", json={"token": ALICE_TOKEN})
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "alice"
    assert body["role"] == "admin"
    assert isinstance(body["csrf"], str)
    assert len(body["csrf"]) >= 32
    assert before + LIFETIME_SECONDS - 1 <= body["expires_at"] <= time.time() + LIFETIME_SECONDS
    morsel, raw = _set_cookie(resp)
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(LIFETIME_SECONDS)
    assert "secure" not in raw.lower()  # plain HTTP: a Secure cookie would never come back
    assert ALICE_TOKEN not in raw
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("how", ["forwarded", "direct-header-case"])
async def test_behind_tls_the_cookie_is_secure(admin: Admin, how: str) -> None:
    proto = "https" if how == "forwarded" else "HTTPS, http"
    resp = await admin.post(
        "/console/session", json={"token": ALICE_TOKEN}, headers={"X-Forwarded-Proto": proto}
    )
    assert resp.status == 200
    morsel, _ = _set_cookie(resp)
    assert morsel["secure"] is True


async def test_a_wrong_token_is_a_401_and_sets_no_cookie(admin: Admin) -> None:
    resp = await admin.post("/console/session", json={"token": "not-" + ALICE_TOKEN})
    assert await _error(resp) == (401, "Invalid admin token.")
    assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"token": 12}', b'{"token": "  "}', b'{"tok": "x"}']
)
async def test_a_bad_login_body_is_a_400_saying_what_to_send(admin: Admin, body: bytes) -> None:
    resp = await admin.post(
        "/console/session", data=body, headers={"Content-Type": "application/json"}
    )
    status, message = await _error(resp)
    assert status == 400
    assert '{"token": "<admin token>"}' in message


async def test_with_no_token_configured_the_console_is_read_only_without_login(
    tmp_path: Path, open_admin: Open
) -> None:
    settings = make_settings(**{"registry.store": f"embedded:{tmp_path / 'open.db'}"})
    async with open_admin(settings) as admin:
        status, message = await _error(
            await admin.post("/console/session", json={"token": "anything"})
        )
        assert status == 400
        assert "console is read-only" in message
        resp = await admin.get("/console/session")
        assert resp.status == 200
        assert await resp.json() == {
            "name": "anonymous",
            "role": "read",
            "csrf": None,
            "expires_at": None,
        }
        assert (await admin.get("/admin/v1/prompts")).status == 200


# -- the session --------------------------------------------------------------------------


async def test_the_session_answers_the_cookies_holder_the_same_as_the_login(
    admin: Admin,
) -> None:
    resp = await admin.post("/console/session", json={"token": READ_TOKEN})
    login = await resp.json()
    cookie = _set_cookie(resp)[0].value
    again = await admin.get("/console/session", headers=_browser(cookie))
    assert again.status == 200
    assert await again.json() == login
    assert login["name"] == "dashboards"
    assert login["role"] == "read"


async def test_the_session_without_a_cookie_is_a_401(admin: Admin) -> None:
    status, message = await _error(await admin.get("/console/session"))
    assert status == 401
    assert message.startswith("Not logged in to the console.")


async def test_the_session_of_a_bearer_token_names_it_without_a_csrf_value(
    admin: Admin,
) -> None:
    resp = await admin.get("/console/session", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert await resp.json() == {"name": "alice", "role": "admin", "csrf": None, "expires_at": None}
    resp = await admin.get("/console/session", headers={"Authorization": "Bearer nope"})
    assert await _error(resp) == (401, "Invalid admin token.")


async def test_an_expired_cookie_is_a_401_on_the_console_and_the_api(admin: Admin) -> None:
    """Minted with a clock 12 h and a second in the past."""
    grant = TokenGrant("alice", ALICE_TOKEN, "admin")
    cookie, _ = mint(grant, time.time() - LIFETIME_SECONDS - 1)
    fresh, _ = mint(grant, time.time() - LIFETIME_SECONDS + 60)
    assert (await admin.get("/console/session", headers=_browser(fresh))).status == 200
    for path in ("/console/session", "/admin/v1/prompts"):
        resp = await admin.get(path, headers=_browser(cookie))
        assert await _error(resp) == (401, "Console session expired; log in again.")


async def test_a_forged_or_altered_cookie_is_a_401_and_writes_nothing(admin: Admin) -> None:
    read_cookie, read_csrf = await _log_in(admin, READ_TOKEN)
    payload, mac = read_cookie.split(".")
    # The read-only session's payload under the admin's name; a MAC made with a guessed
    # secret; one character of the MAC changed; not a cookie at all.
    renamed, _ = mint(TokenGrant("alice", "guessed", "admin"), time.time())
    flipped = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    for forged in (renamed.split(".")[0] + "." + mac, renamed, flipped, "garbage"):
        resp = await admin.post(
            "/admin/v1/prompts/greet/versions", json=VERSION, headers=_browser(forged, read_csrf)
        )
        status, message = await _error(resp)
        assert status == 401, forged
        assert "log in again" in message
    assert await _versions(admin) == 0


async def test_a_cookie_outlives_nothing_in_the_config(tmp_path: Path, open_admin: Open) -> None:
    """Stateless: another process with the same tokens takes the cookie; one where the
    token was changed or removed says the session ended."""
    async with open_admin(_settings(tmp_path)) as first:
        cookie, _ = await _log_in(first)
    async with open_admin(_settings(tmp_path / "same")) as same:
        assert (await same.get("/console/session", headers=_browser(cookie))).status == 200
    async with open_admin(_settings(tmp_path / "rotated", ALICE_TOKEN="alice-rotated")) as rotated:
        for path in ("/console/session", "/admin/v1/prompts"):
            status, message = await _error(await rotated.get(path, headers=_browser(cookie)))
            assert status == 401
            assert message.startswith("Console session ended")
    removed_settings = admin_settings(tmp_path / "removed")
    async with open_admin(removed_settings) as removed:
        status, message = await _error(
            await removed.get("/admin/v1/prompts", headers=_browser(cookie))
        )
        assert (status, message.startswith("Console session ended")) == (401, True)


# -- writes with the cookie ---------------------------------------------------------------


async def test_a_cookie_write_with_its_csrf_value_goes_through(admin: Admin) -> None:
    cookie, csrf = await _log_in(admin)
    origin = str(admin.make_url("")).rstrip("/")
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions",
        json=VERSION,
        headers=_browser(cookie, csrf, Origin=origin),
    )
    assert resp.status == 201, await resp.text()
    assert await _versions(admin) == 1


@pytest.mark.parametrize(
    ("csrf", "extra", "says"),
    [
        (None, {}, "must send X-CSRF-Token"),
        ("wrong", {}, "X-CSRF-Token does not match"),
        ("right", {"Origin": "https://evil.example"}, "Origin is not this proxy's"),
        ("right", {"Origin": "null"}, "Origin is not this proxy's"),
        ("right", {"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
        ("right", {"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
    ],
    ids=["no-csrf", "wrong-csrf", "foreign-origin", "null-origin", "cross-site", "same-site"],
)
async def test_a_cookie_write_not_from_the_console_is_a_403_and_writes_nothing(
    admin: Admin, csrf: str | None, extra: dict[str, str], says: str
) -> None:
    cookie, right = await _log_in(admin)
    headers = _browser(cookie, right if csrf == "right" else csrf, **extra)
    resp = await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    status, message = await _error(resp)
    assert status == 403
    assert message.startswith("CSRF check failed")
    assert says in message
    assert await _versions(admin) == 0


@pytest.mark.parametrize(
    ("origin", "forwarded", "status"),
    [
        ("https://console.example", {"X-Forwarded-Proto": "https"}, 403),
        (
            "https://console.example",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "console.example"},
            201,
        ),
        (
            "https://console.example:443",
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "Console.Example"},
            201,
        ),
        ("https://console.example", {"X-Forwarded-Host": "console.example"}, 403),
        ("http://console.example.evil", {"X-Forwarded-Host": "console.example"}, 403),
    ],
    ids=["proto-only", "proto-and-host", "default-port-and-case", "host-only", "lookalike"],
)
async def test_behind_a_tls_proxy_the_origin_is_the_forwarded_one(
    admin: Admin, origin: str, forwarded: dict[str, str], status: int
) -> None:
    """A TLS-terminating proxy that says so: the page's origin is https on the host it
    names; the scheme and the host must both match."""
    cookie, csrf = await _log_in(admin)
    headers = _browser(cookie, csrf, Origin=origin, **forwarded)
    resp = await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    assert resp.status == status, await resp.text()


async def test_another_sessions_csrf_value_does_not_pass(admin: Admin) -> None:
    cookie, _ = await _log_in(admin)
    _, other_csrf = await _log_in(admin)
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions", json=VERSION, headers=_browser(cookie, other_csrf)
    )
    assert (await _error(resp))[0] == 403
    assert await _versions(admin) == 0


async def test_a_read_only_tokens_cookie_reads_and_is_refused_writes(admin: Admin) -> None:
    cookie, csrf = await _log_in(admin, READ_TOKEN)
    assert (await admin.get("/admin/v1/prompts", headers=_browser(cookie))).status == 200
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions", json=VERSION, headers=_browser(cookie, csrf)
    )
    assert await _error(resp) == (
        403,
        "Token 'dashboards' is read-only; this call changes the registry.",
    )
    assert await _versions(admin) == 0


async def test_a_bearer_header_wins_over_the_cookie(admin: Admin) -> None:
    """A script's header decides, whatever cookie its client also holds."""
    cookie, _ = await _log_in(admin)
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}", "Authorization": "Bearer nope"}
    resp = await admin.get("/admin/v1/prompts", headers=headers)
    assert await _error(resp) == (401, "Invalid admin token.")
    headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    resp = await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    assert resp.status == 201  # no CSRF asked of a header's write


async def test_a_console_write_is_audited_under_the_tokens_name_with_its_reason(
    admin: Admin,
) -> None:
    cookie, csrf = await _log_in(admin)
    headers = _browser(cookie, csrf)
    resp = await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    assert resp.status == 201
    resp = await admin.post(
        "/admin/v1/prompts/greet/promote", json={"version": 1, "reason": "CR-7"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    audit = await (await admin.get("/admin/v1/audit", headers=_browser(cookie))).json()
    promote = next(e for e in audit["data"] if e["action"] == "promote")
    assert (promote["actor"], promote["reason"]) == ("alice", "CR-7")
    assert {e["actor"] for e in audit["data"]} == {"alice"}


async def test_the_token_and_cookie_appear_in_no_log_line(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await admin.post("/console/session", json={"token": "not-" + ALICE_TOKEN})
    await admin.post("/console/session", data=b'{"token": ' + ALICE_TOKEN.encode())
    cookie, csrf = await _log_in(admin)
    headers = _browser(cookie, csrf)
    await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=_browser(cookie))
    lines = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    # The test server's access log wrote the calls' lines: the check reads real lines.
    assert any("/console/session" in line for line in lines)
    for secret in (ALICE_TOKEN, cookie, cookie.split(".")[1], csrf):
        assert not [line for line in lines if secret in line]


async def test_logging_out_needs_the_csrf_value_and_clears_the_cookie(admin: Admin) -> None:
    cookie, csrf = await _log_in(admin)
    resp = await admin.delete("/console/session", headers=_browser(cookie))
    assert (await _error(resp))[0] == 403
    resp = await admin.delete("/console/session", headers=_browser(cookie, csrf))
    assert resp.status == 204
    morsel, _ = _set_cookie(resp)
    assert (morsel.value, morsel["max-age"], morsel["path"]) == ("", "0", "/")
    # No session (or a dead one): nothing to protect, the cookie is cleared all the same.
    assert (await admin.delete("/console/session")).status == 204


# -- files and headers ---------------------------------------------------------------------


async def test_the_console_redirects_to_its_slash(admin: Admin) -> None:
    resp = await admin.get("/console", allow_redirects=False)
    assert resp.status in (301, 302, 307, 308)
    assert resp.headers["Location"] == "/console/"
    assert {k: resp.headers.get(k) for k in SECURITY} == SECURITY


async def test_the_index_is_served_never_stored_with_the_policy(admin: Admin) -> None:
    resp = await admin.get("/console/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.text() == INDEX
    assert {k: resp.headers.get(k) for k in SECURITY} == SECURITY
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("main.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
    ],
)
async def test_an_asset_is_served_with_its_type_revalidated_by_etag(
    admin: Admin, files: Path, name: str, kind: str
) -> None:
    resp = await admin.get(f"/console/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == kind
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.read() == (files / name).read_bytes()
    assert {k: resp.headers.get(k) for k in SECURITY} == SECURITY
    etag = resp.headers["ETag"]
    again = await admin.get(f"/console/{name}", headers={"If-None-Match": etag})
    assert again.status == 304
    (files / name).write_text((files / name).read_text() + "\n/* changed */")
    changed = await admin.get(f"/console/{name}", headers={"If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag


async def test_the_session_answers_carry_the_policy(admin: Admin) -> None:
    for resp in (
        await admin.get("/console/session"),
        await admin.post("/console/session", json={"token": ALICE_TOKEN}),
    ):
        assert {k: resp.headers.get(k) for k in SECURITY} == SECURITY


async def test_admin_api_answers_are_not_given_the_consoles_headers(admin: Admin) -> None:
    resp = await admin.get("/admin/v1/prompts", headers=BEARER)
    assert "Content-Security-Policy" not in resp.headers


@pytest.mark.parametrize(
    "raw_path",
    [
        "/console/..%2fsecret.js",
        "/console/..%2F..%2Fsecret.js",
        "/console/%2e%2e%2fsecret.js",
        "/console/../secret.js",
        "/console/app.py",
        "/console/.hidden.js",
        "/console/notes.txt",
        "/console/index.html",
        "/console/MAIN.JS",
        "/console/main.js%00.png",
        "/console/missing.js",
        "/console/a/main.js",
        "/console/console/main.js",
    ],
)
async def test_anything_but_a_flat_console_file_is_a_404_with_the_policy(
    admin: Admin, raw_path: str
) -> None:
    url = URL(str(admin.make_url("")).rstrip("/") + raw_path, encoded=True)
    resp = await admin.session.get(url, allow_redirects=False)
    text = await resp.text()
    assert resp.status == 404, (raw_path, text)
    assert "SECRET-OUTSIDE" not in text
    assert "source" not in text
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert {k: resp.headers.get(k) for k in SECURITY} == SECURITY


async def test_without_its_files_the_console_says_they_are_missing(
    tmp_path: Path,
) -> None:
    async with open_services(_settings(tmp_path)) as services:
        app = build_admin_app(services, console_files=tmp_path / "nowhere")
        async with TestClient(TestServer(app)) as client:
            status, message = await _error(await client.get("/console/"))
    assert status == 404
    assert "console's files are not installed" in message


# -- attacks (review-security) ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["cross-site-form", "foreign-origin", "null-origin", "sibling-site"],
)
async def test_a_login_from_another_site_is_refused_and_sets_no_cookie(
    admin: Admin, extra: dict[str, str]
) -> None:
    """Login CSRF: a form on another site posts a text/plain body that spells JSON with a
    token of the attacker's choosing; the operator's browser would be logged in as it, and
    what they then do is written under the attacker's token."""
    body = '{"token": "' + ALICE_TOKEN + '", "x": "="}'
    headers = {"Content-Type": "text/plain", **extra}
    resp = await admin.post("/console/session", data=body, headers=headers)
    status, message = await _error(resp)
    assert status == 403
    assert message.startswith("CSRF check failed")
    assert "Set-Cookie" not in resp.headers
    # The console's own page still logs in (same origin, or a client sending neither).
    own = {"Origin": str(admin.make_url("")).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert (await admin.post("/console/session", json={"token": ALICE_TOKEN}, headers=own)).ok


async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(admin: Admin) -> None:
    """Header bytes that are not UTF-8 reach the handler as lone surrogates."""
    reader, writer = await asyncio.open_connection(admin.host, admin.port)
    for path in (b"/admin/v1/prompts", b"/console/session"):
        writer.write(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe-token\r\n\r\n"
        )
    await writer.drain()
    heads = []
    for _ in range(2):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        heads.append(head.split(b"\r\n", 1)[0])
    writer.close()
    assert heads == [b"HTTP/1.1 401 Unauthorized"] * 2


async def test_admin_answers_read_with_the_cookie_are_never_stored(admin: Admin) -> None:
    """A browser may keep an answer on disk unless told not to: after logging out, the
    registry it read would still be there for the next person at the machine."""
    cookie, _ = await _log_in(admin)
    for path in ("/admin/v1/prompts", "/admin/v1/audit", "/admin/v1/missing-route"):
        resp = await admin.get(path, headers=_browser(cookie))
        assert resp.headers.get("Cache-Control") == "no-store", (path, resp.status)


async def test_a_refused_login_is_logged_with_where_from_and_never_the_token(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """The admin port keeps no access log in production (``access_log=None``): a guesser
    at the login must still show in the proxy's own log."""
    caplog.set_level(logging.INFO, logger="promptproxy")
    guess = "guess-" + ALICE_TOKEN[::-1]
    resp = await admin.post("/console/session", json={"token": guess})
    assert resp.status == 401
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "promptproxy" and r.levelno == logging.WARNING
    ]
    assert refused == ["console login refused: no admin token matches (from 127.0.0.1)"]
    assert not [r for r in caplog.records if guess in f"{r.getMessage()} {r.__dict__}"]


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda host, port: f"http://{host}:{port}", 201),
        (lambda host, port: f"HTTP://{host.upper()}:{port}", 201),
        (lambda host, port: f"http://{host}:{port + 1}", 403),  # the data port, say
        (lambda host, port: f"http://{host}", 403),
        (lambda host, port: f"https://{host}:{port}", 403),
        (lambda host, port: f"http://{host}:{port}.evil.example", 403),
        (lambda host, port: f"http://user@{host}:{port}", 403),
        (lambda host, port: f"http://{host}:{port}/console/", 403),
        (lambda host, port: f"http://{host}:{port}, https://evil.example", 403),
    ],
    ids=[
        "same",
        "case",
        "other-port",
        "no-port",
        "other-scheme",
        "suffix",
        "userinfo",
        "with-path",
        "two-origins",
    ],
)
async def test_an_origin_is_ours_only_with_our_scheme_host_and_port(
    admin: Admin, make: Callable[[str, int], str], status: int
) -> None:
    """Another port of the same host is another origin (but the same site, and browsers
    send it our cookie): a page there must not write."""
    cookie, csrf = await _log_in(admin)
    origin = make(str(admin.host), int(admin.port))
    headers = _browser(cookie, csrf, Origin=origin)
    resp = await admin.post("/admin/v1/prompts/greet/versions", json=VERSION, headers=headers)
    assert resp.status == status, (origin, await resp.text())


FOREIGN = b"Origin: https://evil.example"


@pytest.mark.parametrize(
    ("odd", "status"),
    [
        ([b"Origin: http://\xff\xfe"], b"403 Forbidden"),
        ([b"Origin: http://[::1"], b"403 Forbidden"),
        ([b"Origin: " + b"a" * 4000], b"403 Forbidden"),
        ([b"X-Forwarded-Host: \xff[", FOREIGN], b"403 Forbidden"),
        ([b"X-Forwarded-Proto: \xff\xfe", FOREIGN], b"403 Forbidden"),
        ([b"X-CSRF-Token: \xff\xfe"], b"403 Forbidden"),
        ([b"X-CSRF-Token: " + b"A" * 4000], b"403 Forbidden"),
        # Not a value that names another site, and the rest is right: the write is
        # checked and reaches the body's validation ({} has no template).
        ([b"Sec-Fetch-Site: \xff"], b"400 Bad Request"),
    ],
    ids=[
        "origin-bytes",
        "origin-bracket",
        "origin-long",
        "forwarded-host-bytes",
        "forwarded-proto-bytes",
        "csrf-bytes",
        "csrf-long",
        "fetch-site-bytes",
    ],
)
async def test_odd_headers_on_a_cookie_write_are_answered_never_a_500(
    admin: Admin, odd: list[bytes], status: bytes
) -> None:
    cookie, csrf = await _log_in(admin)
    names = {line.split(b":", 1)[0] for line in odd}
    lines = [
        b"POST /admin/v1/prompts/greet/versions HTTP/1.1",
        f"Host: {admin.host}:{admin.port}".encode(),
        f"Cookie: {COOKIE_NAME}={cookie}".encode(),
        b"Content-Type: application/json",
        b"Content-Length: 2",
        b"Connection: close",
        *odd,
    ]
    if b"Origin" not in names:
        lines.append(f"Origin: http://{admin.host}:{admin.port}".encode())
    if b"X-CSRF-Token" not in names:
        lines.append(f"X-CSRF-Token: {csrf}".encode())
    reader, writer = await asyncio.open_connection(admin.host, admin.port)
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n{}")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 " + status, answer
    assert await _versions(admin) == 0
