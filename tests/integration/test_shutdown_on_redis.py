"""A proxy process on Redis exits on SIGTERM within its shutdown grace, every time.

A rolling update sends SIGTERM and waits out the grace: a replica that hangs while closing
its Redis parts (a refresher or a heartbeat whose cancel redis-py swallowed) is killed at the
end of it, and the update stalls that long per replica. Several processes, each stopped right
after it served a request or took an admin write, land the SIGTERM at different points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.processes import ProxyProc, proxy
from tests.redis_server import RedisServer, running_redis

TOKEN = "admin-secret"
GRACE = 5.0
CONFIG = f"server:\n  shutdown_grace_seconds: {GRACE}\n"
ROUNDS = 3


@pytest.fixture(scope="module")
def redis_server(procs_dir: Path) -> Iterator[RedisServer]:
    workdir = procs_dir / "redis"
    workdir.mkdir(exist_ok=True)
    with running_redis(workdir) as server:
        yield server


def _post(url: str, body: object, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status), orjson.loads(resp.read())


def _request(proc: ProxyProc, n: int) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {n}"}]}
    assert _post(f"{proc.url}/chat/completions", body, {})[0] == 200


def _admin_write(proc: ProxyProc, n: int) -> None:
    admin = f"{proc.admin_url}/admin/v1/prompts/shutdown"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, pushed = _post(f"{admin}/versions", {"template": f"Answer briefly ({n})."}, auth)
    assert status in (200, 201)
    promote = {"version": pushed["version"]["version"], "reason": "shutdown test"}
    assert _post(f"{admin}/promote", promote, auth)[0] == 200


def _nothing(proc: ProxyProc, n: int) -> None:
    pass


@pytest.mark.parametrize("work", [_nothing, _request, _admin_write], ids=lambda f: f.__name__)
def test_sigterm_exits_within_the_grace(
    procs_dir: Path, sim_url: str, redis_server: RedisServer, work: object
) -> None:
    assert callable(work)
    for n in range(ROUNDS):
        with proxy(
            procs_dir,
            sim_url,
            CONFIG,
            store=redis_server.url,
            env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN},
        ) as proc:
            work(proc, n)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.popen.wait(GRACE)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"round {n}: still running {GRACE}s after SIGTERM (log: {proc.log_path})"
                )
            assert code == 0, f"round {n}: exit code {code} (log: {proc.log_path})"
