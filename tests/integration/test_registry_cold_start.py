"""A replica (re)started while its shared store (Redis, PostgreSQL) is down: it must come up
at once, answer liveness, stay not-ready, and bootstrap its prompts and become ready once the
store is back, instead of exiting (every replica restarted during a store blip would
crash-loop)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from tests.integration.test_replicas_on_redis import served_version
from tests.postgres_server import PostgresServer
from tests.processes import proxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


class Server(Protocol):
    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def kill(self) -> None: ...


@pytest.fixture(params=["redis", "postgresql"])
def down_server(request: pytest.FixtureRequest, procs_dir: Path) -> Iterator[Server]:
    """A store server on a free port, not started: nothing listens there yet."""
    with contextlib.ExitStack() as stack:
        server: Server
        if request.param == "redis":
            workdir = procs_dir / "redis-cold-start"
            workdir.mkdir()
            server = RedisServer(workdir)
        else:
            # Under root the server runs as `postgres`, which cannot enter pytest's folders.
            workdir = Path(tempfile.mkdtemp(prefix="pg-cold-start-", dir="/tmp"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            server = PostgresServer(workdir)
        stack.callback(server.kill)
        yield server


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_serve_with_bootstrap_dir_waits_for_the_store_instead_of_exiting(
    procs_dir: Path, sim_url: str, down_server: Server
) -> None:
    prompts = procs_dir / "cold-start-prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "greet.md").write_text("---\nauthor: test\n---\nSay hello.\n")
    config = f"registry:\n  bootstrap_dir: {prompts}\n"
    spawned = time.monotonic()
    with proxy(procs_dir, sim_url, config, store=down_server.url, ready=False) as replica:
        live = time.monotonic() - spawned
        print(f"\ncold start with the store down: /healthz answered {live:.2f} s after spawn")
        assert (await _get(f"{replica.admin_url}/healthz"))[0] == 200
        status, body = await _get(f"{replica.admin_url}/readyz")
        assert (status, body["status"]) == (503, "starting")
        assert replica.popen.poll() is None

        down_server.start()
        started = time.monotonic()
        deadline = started + 15
        while (await _get(f"{replica.admin_url}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, "never became ready after the store came back"
            assert replica.popen.poll() is None, "the proxy exited"
            await asyncio.sleep(0.05)
        print(f"ready {time.monotonic() - started:.2f} s after the store answered")
        async with aiohttp.ClientSession() as session:
            assert await served_version(session, replica, "greet") == "1"
    # The wait was logged as a wait, never as a crash.
    assert "Traceback" not in replica.log_path.read_text()
