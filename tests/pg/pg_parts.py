"""Pools for the tests of the PostgreSQL parts: one pool per simulated replica, each on the
same database and schema, opened and closed by the test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool

from proxy.pg.connect import new_pool
from tests.postgres_server import PostgresServer


def new_schema() -> str:
    """A fresh schema per test: parts must honour it (like the Redis key prefix)."""
    return f"t_{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def replica_pools(
    url: str, count: int = 2, *, schema: str, max_size: int = 4
) -> AsyncIterator[list[AsyncConnectionPool]]:
    pools = [new_pool(url, schema=schema, max_size=max_size) for _ in range(count)]
    try:
        for pool in pools:
            await pool.open(wait=True, timeout=10)
        yield pools
    finally:
        for pool in pools:
            await pool.close()


def _server_tree(server: PostgresServer) -> list[psutil.Process]:
    root = psutil.Process(server.pid)
    return [root, *root.children(recursive=True)]


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """Every process of the server SIGSTOPped: connections stay open, nothing answers.

    ``PostgresServer.pause`` signals the postmaster's process group only, and each backend
    runs in a session of its own, so open connections would go on answering."""
    processes = _server_tree(server)
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in reversed(processes):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


def crash(server: PostgresServer) -> None:
    """SIGKILL every process of the server at once, backends included: every connection
    drops as in a crash of the machine's database. (``PostgresServer.kill`` signals the
    postmaster's process group only; its backends notice its death a moment later, so a
    query sent right after it may still be answered.)

    What was committed survives, as on a server with ``synchronous_commit=on``: the test
    server runs with it off, which could lose the last commits (a table just migrated)."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    for process in _server_tree(server):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    server.kill()  # reaps, and removes what a killed postmaster leaves behind
