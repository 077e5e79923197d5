"""Fixtures of the integration suite: a private redis-server per module, and three proxy
replicas sharing it (each taking ``ADMIN_TOKEN``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.processes import ProxyProc, proxy_with_token
from tests.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture("module")


@pytest.fixture(scope="module")
def replicas(procs_dir: Path, sim_url: str, redis_server: RedisServer) -> Iterator[list[ProxyProc]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(proxy_with_token(procs_dir, sim_url, store=redis_server.url))
            for _ in range(3)
        ]
