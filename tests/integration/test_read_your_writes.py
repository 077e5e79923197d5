"""Read your own writes: once an admin write answers, the process that answered serves it.

An operator who rolls back through a replica and checks `x-prompt-version` on that same
replica right away must see the rolled-back version, on either store: the write loads the
new snapshot before it answers instead of leaving it to the refresher (which polls the
embedded file every 200 ms, and hears Redis notifications a few ms later).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import ADMIN_HEADERS, CHAT, ProxyProc, proxy_with_token
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

ROUNDS = 40


@pytest.fixture(scope="module", params=["embedded", "redis"])
def replica(
    request: pytest.FixtureRequest, procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> Iterator[ProxyProc]:
    store = redis_server.url if request.param == "redis" else None
    with proxy_with_token(procs_dir, sim_url, store=store) as proc:
        yield proc


class Operator:
    def __init__(self, session: aiohttp.ClientSession, replica: ProxyProc) -> None:
        self.session = session
        self.replica = replica

    async def write(self, method: str, path: str, body: dict[str, Any]) -> Any:
        url = f"{self.replica.admin_url}/admin/v1{path}"
        async with self.session.request(method, url, json=body, headers=ADMIN_HEADERS) as resp:
            assert resp.status in (200, 201), await resp.text()
            answer = await resp.json()
        assert answer["served"]["here"] is True, answer
        return answer

    async def served_version(self, slug: str) -> str | None:
        base = self.replica.url.removesuffix("/v1")
        async with self.session.post(f"{base}/p/{slug}/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            assert resp.status == 200
            return resp.headers.get("x-prompt-version")


async def test_every_write_is_served_by_the_next_request(replica: ProxyProc) -> None:
    slug = "ryw"
    stale: list[tuple[str, str | None, str]] = []
    async with aiohttp.ClientSession() as session:
        op = Operator(session, replica)
        await op.write("POST", f"/prompts/{slug}/versions", {"template": "first"})
        await op.write("POST", f"/prompts/{slug}/promote", {"version": 1})

        async def check(what: str, expected: int) -> None:
            got = await op.served_version(slug)
            if got != str(expected):
                stale.append((what, got, str(expected)))

        prod = 1
        for i in range(ROUNDS):
            pushed = await op.write("POST", f"/prompts/{slug}/versions", {"template": f"v{i}"})
            new = pushed["version"]["version"]
            canary = {"candidate": new, "mode": "canary", "percent": 100}
            await op.write("PUT", f"/prompts/{slug}/rollout", canary)
            await check(f"canary of v{new} at 100%", new)
            await op.write("DELETE", f"/prompts/{slug}/rollout", {})
            await check("abort", prod)
            await op.write("POST", f"/prompts/{slug}/promote", {"version": new})
            await check(f"promote v{new}", new)
            prod = (await op.write("POST", f"/prompts/{slug}/rollback", {}))["version"]
            await check("rollback", prod)
    print(f"\nread-your-writes: {len(stale)} stale answers out of {ROUNDS * 4}")
    assert stale == []
