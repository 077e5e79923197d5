"""Three proxy replicas on one PostgreSQL registry, no Redis: a change through any replica is
served by all within a second, concurrent pushes number without gaps, and a PostgreSQL that
stops, comes back empty or drops every connection fails no request."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_replicas_on_redis import (
    seed,
    served_version,
    until_all_serve,
    until_registry_state,
)
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.processes import ProxyProc, admin, proxy_with_token

pytestmark = pytest.mark.integration

#: How long PostgreSQL stays down under load. Short in the suite; `loadtest.postgres_rows`
#: runs this module with 30 s for the figure in docs.
OUTAGE_SECONDS = float(os.environ.get("PROMPTPROXY_TEST_PG_OUTAGE_SECONDS", "2"))


def figures(**values: object) -> None:
    """One ``FIGURES {json}`` line, collected by ``python -m loadtest.postgres_rows``."""
    print("\nFIGURES " + json.dumps({"row": "postgres", **values}))


postgres_server = postgres_server_fixture("module")


@pytest.fixture(scope="module")
def pg_store(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture(scope="module")
def pg_replicas(procs_dir: Path, sim_url: str, pg_store: str) -> Iterator[list[ProxyProc]]:
    store = pg_store
    with ExitStack() as stack:
        yield [
            stack.enter_context(proxy_with_token(procs_dir, sim_url, store=store)) for _ in range(3)
        ]


async def test_promote_and_rollback_through_one_replica_reach_all_three(
    pg_replicas: list[ProxyProc],
) -> None:
    await seed(pg_replicas[0], "checkout")
    await until_all_serve(pg_replicas, "checkout", "2", limit=5)
    status, entry = await admin(
        pg_replicas[1], "POST", "/prompts/checkout/rollback", {"reason": "regression"}
    )
    assert (status, entry["version"]) == (200, 1)
    rollback = await until_all_serve(pg_replicas, "checkout", "1", limit=5)
    status, _ = await admin(pg_replicas[2], "POST", "/prompts/checkout/promote", {"version": 2})
    assert status == 200
    promote = await until_all_serve(pg_replicas, "checkout", "2", limit=5)
    figures(case="propagation", rollback_s=rollback, promote_s=promote)
    assert max(rollback) < 1.0
    assert max(promote) < 1.0


async def test_concurrent_pushes_through_three_replicas_number_one_to_24(
    pg_replicas: list[ProxyProc],
) -> None:
    pushes = [
        admin(pg_replicas[i % 3], "POST", "/prompts/race/versions", {"template": f"variant {i}"})
        for i in range(24)
    ]
    answers = await asyncio.gather(*pushes)
    assert [status for status, _ in answers] == [201] * 24, answers
    numbers = sorted(body["version"]["version"] for _, body in answers)
    assert numbers == list(range(1, 25))


async def test_rollback_reaches_all_replicas_while_connections_are_killed(
    pg_replicas: list[ProxyProc], postgres_server: PostgresServer
) -> None:
    await seed(pg_replicas[0], "billing")
    await until_all_serve(pg_replicas, "billing", "2", limit=5)
    stop = asyncio.Event()

    async def keep_killing_connections() -> None:
        while not stop.is_set():
            await asyncio.to_thread(postgres_server.terminate_backends)
            await asyncio.sleep(0.2)

    killer = asyncio.create_task(keep_killing_connections())
    try:
        await asyncio.sleep(0.3)
        status, _ = await admin(pg_replicas[2], "POST", "/prompts/billing/rollback", {})
        times = await until_all_serve(pg_replicas, "billing", "1", limit=8)
    finally:
        stop.set()
        await killer
    # The write itself may meet a killed connection; what it must not do is half-apply.
    assert status == 200
    figures(case="connections_killed", rollback_s=times)
    assert max(times) < 5.0
    # Once the killing stops, notification is back: the next change is fast again.
    await asyncio.sleep(1.0)
    status, _ = await admin(pg_replicas[0], "POST", "/prompts/billing/promote", {"version": 2})
    assert status == 200
    times = await until_all_serve(pg_replicas, "billing", "2", limit=5)
    assert max(times) < 1.0


async def test_postgres_stopped_under_load_fails_no_request(
    pg_replicas: list[ProxyProc], postgres_server: PostgresServer
) -> None:
    await seed(pg_replicas[0], "outage")
    await until_all_serve(pg_replicas, "outage", "2", limit=5)
    results: list[str | None] = []
    stop = asyncio.Event()

    async def traffic(replica: ProxyProc) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                results.append(await served_version(session, replica, "outage"))

    workers = [asyncio.create_task(traffic(r)) for r in pg_replicas for _ in range(3)]
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(postgres_server.stop)
        stopped = time.monotonic()
        detail = await until_registry_state(pg_replicas[0], "unavailable", limit=15)
        reported = time.monotonic() - stopped
        assert detail["status"] == "degraded"
        status, body = await admin(pg_replicas[0], "POST", "/prompts/outage/rollback", {})
        assert status == 503, body
        assert "unavailable" in body["error"]["message"]
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        down = time.monotonic() - stopped
    finally:
        await asyncio.to_thread(postgres_server.start)
        stop.set()
        await asyncio.gather(*workers)
    failed = len([r for r in results if r != "2"])
    figures(case="outage", down_s=down, reported_s=reported, requests=len(results), failed=failed)
    assert len(results) > 100
    assert failed == 0
    # The data survived the stop: the same registry comes back, and changes flow again.
    for replica in pg_replicas:
        await until_registry_state(replica, "ok", limit=15)
    status, _ = await admin(pg_replicas[1], "POST", "/prompts/outage/rollback", {})
    assert status == 200
    await until_all_serve(pg_replicas, "outage", "1", limit=5)


async def test_postgres_back_empty_keeps_the_last_good_snapshot(
    pg_replicas: list[ProxyProc], postgres_server: PostgresServer, pg_store: str
) -> None:
    """Last in the module: the cluster is wiped (every database gone) and restored."""
    await seed(pg_replicas[0], "wiped")
    await until_all_serve(pg_replicas, "wiped", "2", limit=5)
    await asyncio.to_thread(postgres_server.wipe)
    # The replicas' database no longer exists; an operator recreates it empty.
    database = pg_store.rpartition("/")[2]
    await asyncio.to_thread(postgres_server.create_database, database)
    for replica in pg_replicas:
        detail = await until_registry_state(replica, "replaced", limit=15)
        assert detail["status"] == "degraded"
    async with aiohttp.ClientSession() as session:
        assert [await served_version(session, r, "wiped") for r in pg_replicas] == ["2"] * 3
    status, body = await admin(pg_replicas[1], "POST", "/prompts/wiped/versions", {"template": "x"})
    assert (status, body["error"]["code"]) == (409, "registry_store_replaced"), body
    status, body = await admin(
        pg_replicas[2], "POST", "/registry/restore", {"source": "snapshot", "reason": "wiped"}
    )
    assert status == 200, body
    for replica in pg_replicas:
        await until_registry_state(replica, "ok", limit=10)
    status, body = await admin(pg_replicas[0], "POST", "/prompts/wiped/versions", {"template": "y"})
    assert (status, body["version"]["version"]) == (201, 3), body
