"""The operator console through `serve --workers 2` on Redis: the supervisor's admin port
forwards the console's login, its session and a write authorized by its cookie to a worker
with the headers the checks read (Cookie, Origin, Host, X-CSRF-Token) and the answers'
headers (Set-Cookie, the content security policy) back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.web.console_routes import CSP
from proxy.web.console_session import COOKIE_NAME
from tests.processes import ADMIN_ENV, ADMIN_HEADERS, ADMIN_TOKEN, ProxyProc, proxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workers(procs_dir: Path, sim_url: str, redis_server: RedisServer) -> Iterator[ProxyProc]:
    config = "server:\n  workers: 2\n"
    with proxy(procs_dir, sim_url, config, store=redis_server.url, env=ADMIN_ENV) as proc:
        yield proc


async def test_a_console_login_and_cookie_write_pass_the_supervisor(workers: ProxyProc) -> None:
    base = workers.admin_url
    # The client keeps no cookie: each call sends what a browser would, by hand.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.post(f"{base}/console/session", json={"token": ADMIN_TOKEN}) as resp:
            assert resp.status == 200, await resp.text()
            login = await resp.json()
            assert resp.headers["Content-Security-Policy"] == CSP
            (set_cookie,) = resp.headers.getall("Set-Cookie")
        assert set_cookie.startswith(f"{COOKIE_NAME}=")
        assert "HttpOnly" in set_cookie
        cookie = set_cookie.split(";", 1)[0]
        browser = {"Cookie": cookie, "Origin": base, "Sec-Fetch-Site": "same-origin"}

        async with session.get(f"{base}/console/session", headers=browser) as resp:
            assert resp.status == 200
            assert await resp.json() == login

        url = f"{base}/admin/v1/prompts/console-workers/versions"
        version = {"template": "Hello from the console"}
        async with session.post(url, json=version, headers=browser) as resp:
            assert resp.status == 403  # no X-CSRF-Token
        async with session.post(
            url, json=version, headers={**browser, "X-CSRF-Token": login["csrf"]}
        ) as resp:
            assert resp.status == 201, await resp.text()

        audit_url = f"{base}/admin/v1/audit?slug=console-workers"
        async with session.get(audit_url, headers=ADMIN_HEADERS) as resp:
            entries = (await resp.json())["data"]
        assert [(e["action"], e["actor"]) for e in entries] == [("create", login["name"])]
