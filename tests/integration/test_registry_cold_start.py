"""A replica (re)started while Redis is down: it must come up, answer liveness, stay
not-ready, and bootstrap its prompts and become ready once Redis is back, instead of
exiting (every replica restarted during a Redis blip would crash-loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import proxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_serve_with_bootstrap_dir_waits_for_redis_instead_of_exiting(
    procs_dir: Path, sim_url: str
) -> None:
    prompts = procs_dir / "cold-start-prompts"
    prompts.mkdir()
    (prompts / "greet.md").write_text("---\nauthor: test\n---\nSay hello.\n")
    workdir = procs_dir / "redis-cold-start"
    workdir.mkdir()
    server = RedisServer(workdir)  # a free port, nothing listening on it yet
    config = f"registry:\n  bootstrap_dir: {prompts}\n"
    try:
        with proxy(procs_dir, sim_url, config, store=server.url, ready=False) as replica:
            assert (await _get(f"{replica.admin_url}/healthz"))[0] == 200
            status, body = await _get(f"{replica.admin_url}/readyz")
            assert (status, body["status"]) == (503, "starting")
            assert replica.popen.poll() is None

            server.start()
            deadline = time.monotonic() + 15
            while (await _get(f"{replica.admin_url}/readyz"))[0] != 200:
                assert time.monotonic() < deadline, "never became ready after Redis came back"
                assert replica.popen.poll() is None, "the proxy exited"
                await asyncio.sleep(0.05)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{replica.url.removesuffix('/v1')}/p/greet/v1/chat/completions", json=CHAT
                ) as resp,
            ):
                await resp.read()
                assert resp.status == 200
                assert resp.headers["x-prompt-version"] == "1"
    finally:
        server.kill()
