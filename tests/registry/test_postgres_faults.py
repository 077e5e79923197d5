"""PostgresStore under failure, each test with its own PostgreSQL (stopped, wiped, paused,
its connections killed): the twin of test_redis_faults.py.

A replica must learn fast that the server is gone (``StoreUnavailable``, never a hang), keep
serving its last good snapshot, recover by itself when the server is back, tell a server
back empty from the registry it served, and keep noticing changes when its LISTEN
connection is killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from proxy.pg.connect import new_pool
from proxy.prompt_key import PromptKey
from proxy.registry import postgres_notify
from proxy.registry.fleet import FleetError, ReplicaBeat
from proxy.registry.fleet_postgres import PostgresBoard
from proxy.registry.models import RolloutMode, Status, StickyKey, VersionDraft
from proxy.registry.postgres_store import PostgresStore
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.store import StoreReplaced, StoreUnavailable
from tests.postgres_server import PostgresServer
from tests.registry.pg_stores import open_store

GREET = PromptKey("greet")

SCHEMA = "faults"
#: Short, so the tests are: every bound below is this plus the unwinding of a cut call.
OP_TIMEOUT = 1.0
BOUND = OP_TIMEOUT + 1.5


@pytest.fixture
async def server(fresh_postgres_server: PostgresServer) -> PostgresServer:
    return fresh_postgres_server


@pytest.fixture
async def stores() -> AsyncIterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


async def _open(
    stores: list[PostgresStore], server: PostgresServer, **options: float
) -> PostgresStore:
    # The maintenance database: it is there again after ``wipe``.
    store = await open_store(server.url, SCHEMA, op_timeout=OP_TIMEOUT, **options)
    stores.append(store)
    return store


def draft(template: str) -> VersionDraft:
    return VersionDraft(key=GREET, template=template)


async def time_failure(operation: Callable[[], Awaitable[Any]]) -> float:
    """Seconds until ``operation`` raises StoreUnavailable (it must not succeed or hang)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="PostgreSQL"):
        async with asyncio.timeout(10):
            await operation()
    return time.monotonic() - started


async def time_failures(ops: dict[str, Callable[[], Awaitable[Any]]]) -> dict[str, float]:
    """Run every operation at once (as a busy replica would), each timed on its own."""
    times = await asyncio.gather(*(time_failure(op) for op in ops.values()))
    return dict(zip(ops, times, strict=True))


def operations(store: PostgresStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "revision": store.revision,
        "get_version": lambda: store.get_version(GREET, 1),
        "snapshot": store.snapshot,
        "audit": store.audit,
        "create_version": lambda: store.create_version(draft("new"), "alice", time.time()),
        "promote": lambda: store.promote(GREET, 1, "alice", "", time.time()),
        "rollback": lambda: store.rollback(GREET, "alice", "", time.time()),
        "set_status": lambda: store.set_status(
            GREET, 1, Status.CANDIDATE, "alice", "", time.time()
        ),
        "wait_for_change": lambda: store.wait_for_change(-1, 5.0),
        "get_rollout": lambda: store.get_rollout(GREET),
        "start_rollout": lambda: store.start_rollout(
            GREET,
            "r-1",
            1,
            RolloutMode.CANARY,
            100,
            StickyKey.parse("none"),
            "a",
            "",
            1.0,
        ),
        "update_rollout": lambda: store.update_rollout(GREET, "r-1", 200, "a", "", 1.0),
        "abort_rollout": lambda: store.abort_rollout(GREET, "a", "", 1.0),
        "promote_rollout": lambda: store.promote_rollout(GREET, "a", "", 1.0),
    }


async def _until(what: Callable[[], Awaitable[bool]], never: str, limit: float = 20.0) -> float:
    """Seconds until ``what`` is true (polled), or fail with ``never``."""
    started = time.monotonic()
    while not await what():
        assert time.monotonic() - started < limit, never
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _answers(store: PostgresStore) -> bool:
    try:
        await store.revision()
    except StoreUnavailable:
        return False
    return True


async def test_a_stopped_server_fails_fast_and_the_same_store_recovers(
    server: PostgresServer, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, server)
    await store.create_version(draft("a"), "alice", time.time())
    await store.snapshot()

    server.stop()
    times = await time_failures(operations(store))
    print(
        "stopped server, seconds to StoreUnavailable:", {k: round(v, 2) for k, v in times.items()}
    )
    assert max(times.values()) < BOUND, times

    server.start()  # same data
    # No new store, no reconnect call: the pool makes new connections.
    recovered = await _until(lambda: _answers(store), "the store never came back")
    print(f"stopped server: the same store answered again {recovered:.2f}s after the start")
    version, created = await store.create_version(draft("b"), "alice", time.time())
    assert (version.version, created) == (2, True)


async def test_the_refresher_keeps_the_last_good_snapshot_while_the_server_is_down(
    server: PostgresServer, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, server)
    writer = await _open(stores, server)
    await store.create_version(draft("a"), "alice", time.time())
    await store.promote(GREET, 1, "alice", "", time.time())
    holder = SnapshotHolder()
    refresher = asyncio.create_task(SnapshotRefresher(store, holder).run())
    durations: list[float] = []
    failures = 0

    async def load() -> None:
        """A replica's admin traffic: pushes, each timed, failed or not."""
        nonlocal failures
        for i in range(10_000):
            started = time.monotonic()
            try:
                await writer.create_version(draft(f"load {i}"), "load", time.time())
            except StoreUnavailable:
                failures += 1
            durations.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    loader = asyncio.create_task(load())
    try:

        async def loaded() -> bool:
            return holder.loaded and holder.current.revision >= 4

        await _until(loaded, "the refresher never loaded the pushes")
        server.stop()  # mid-load

        async def noticed() -> bool:
            return holder.last_error is not None and failures > 0

        await _until(noticed, "nobody noticed the server was gone")
        # Taken once the refresher failed, not when the server stopped: a read already in
        # flight then could still land (revision 5 over 4), which is no outage behaviour.
        served = holder.current
        await asyncio.sleep(2 * OP_TIMEOUT)  # a few more refresh rounds against nothing
        assert holder.current is served  # still serving every prompt it had
        assert holder.current.prod == {GREET: 1}
        assert holder.replaced is None  # unreachable is not "lost"
        assert not holder.healthy
        assert "PostgreSQL" in (holder.last_error or "")
        assert max(durations) < BOUND, max(durations)

        server.start()
        pushed = len(durations) - failures

        async def caught_up() -> bool:
            revision = await writer.revision() if await _answers(writer) else -1
            return holder.healthy and holder.current.revision == revision > served.revision

        await _until(caught_up, "the refresher never caught up after the restart")

        async def load_went_on() -> bool:
            # By itself, but not necessarily before the refresher: a push may still be
            # waiting out its pool's reconnect when the snapshot catches up.
            return len(durations) - failures > pushed

        await _until(load_went_on, "the load never pushed again after the restart")
    finally:
        loader.cancel()
        refresher.cancel()
        await asyncio.gather(loader, refresher, return_exceptions=True)


async def test_a_server_back_empty_is_a_lost_registry_not_an_empty_one(
    server: PostgresServer, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, server)
    await store.create_version(draft("a"), "alice", time.time())
    await store.promote(GREET, 1, "alice", "", time.time())
    holder = SnapshotHolder()
    refresher = SnapshotRefresher(store, holder)
    assert await refresher.load_once()
    served = holder.current

    server.wipe()  # killed, then an empty cluster on the same port

    await _until(lambda: _answers(store), "the store never reached the new server")
    # Its tables are made again, empty: the identity check tells that from the registry
    # it served, like a Redis FLUSHALL.
    assert await store.revision() == 0
    assert await store.generation() is None
    with pytest.raises(StoreReplaced, match="emptied or replaced"):
        await store.snapshot()
    with pytest.raises(StoreReplaced):
        await store.create_version(draft("b"), "alice", time.time())
    assert await store.list_keys() == []  # nothing written, no new registry started
    assert not await refresher.load_once()
    assert holder.replaced is not None
    assert holder.current is served

    fresh = await _open(stores, server)  # a process that never saw the registry
    version, created = await fresh.create_version(draft("b"), "bob", time.time())
    assert (version.version, created) == (1, True)


def _subscribed(store: PostgresStore, more_than: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return store.listener.connected and store.listener.subscriptions > more_than

    return check


async def test_killed_connections_the_listener_comes_back_and_wakes_waiters(
    server: PostgresServer, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, server)
    writer = await _open(stores, server)
    await writer.create_version(draft("a"), "bob", time.time())
    for round_, wait_for_resubscribe in enumerate((True, False)):
        known = await store.revision()
        waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
        subscriptions = store.listener.subscriptions
        await _until(_subscribed(store, subscriptions - 1), "the listener never listened")
        assert server.terminate_backends() >= 2  # the listener's and the pools'
        if wait_for_resubscribe:
            await _until(_subscribed(store, subscriptions), "the listener never resubscribed")
        started = time.monotonic()
        await writer.create_version(draft(f"v{round_}"), "bob", time.time())
        revision = await asyncio.wait_for(waiter, timeout=5.0)
        elapsed = time.monotonic() - started
        print(
            f"round {round_} ({'after' if wait_for_resubscribe else 'before'} the listener "
            f"resubscribed): change noticed {elapsed * 1000:.0f} ms after the write began"
        )
        assert revision == known + 1
        assert elapsed < 1.0


async def test_a_change_made_while_the_listener_was_down_is_seen_when_it_is_back(
    server: PostgresServer, stores: list[PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its NOTIFY went to nobody: the listener's (re)subscription makes waiters re-read."""
    store = await _open(stores, server, poll_interval=60.0)  # polling alone would be late
    writer = await _open(stores, server)
    blocked = asyncio.Event()
    connect = postgres_notify.open_connection

    async def refused_while_blocked(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        if blocked.is_set():
            raise psycopg.OperationalError("refused by the test")
        return await connect(*args, **kwargs)

    reads = 0
    revision = store.revision

    async def counted_revision() -> int:
        nonlocal reads
        found = await revision()
        reads += 1
        return found

    monkeypatch.setattr(postgres_notify, "open_connection", refused_while_blocked)
    monkeypatch.setattr(store, "revision", counted_revision)
    known = await writer.revision()
    waiter = asyncio.create_task(store.wait_for_change(known, max_wait=30.0))
    await _until(_subscribed(store, 0), "the listener never listened")
    blocked.set()
    read_before = reads
    server.terminate_backends()

    async def down_and_reread() -> bool:
        # Losing the listener wakes waiters once, to re-read and then poll.
        return not store.listener.connected and reads > read_before

    await _until(down_and_reread, "the listener never noticed its connection was killed")
    await writer.create_version(draft("while down"), "bob", time.time())
    await asyncio.sleep(0.3)
    assert not waiter.done()  # its NOTIFY reached nobody, and the next poll is a minute away
    blocked.clear()
    started = time.monotonic()
    assert await asyncio.wait_for(waiter, timeout=10.0) == known + 1
    print(f"listener back: the missed change seen {time.monotonic() - started:.2f}s later")


async def test_with_no_notifications_at_all_polling_catches_changes(
    registry_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that refuses the LISTEN connection (a pooler in transaction mode, a
    connection limit): waiters poll the revision every ``poll_interval``."""

    async def refused(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        raise psycopg.OperationalError("no LISTEN for you")

    monkeypatch.setattr(postgres_notify, "open_connection", refused)
    schema = f"polled_{time.monotonic_ns()}"
    store = await open_store(registry_postgres_url, schema, poll_interval=0.2)
    writer = await open_store(registry_postgres_url, schema)
    try:
        known = await store.revision()
        waiter = asyncio.create_task(store.wait_for_change(known, max_wait=10.0))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await writer.create_version(draft("a"), "bob", time.time())
        assert await asyncio.wait_for(waiter, timeout=5.0) == known + 1
        elapsed = time.monotonic() - started
        assert not store.listener.connected
        assert elapsed < 1.0, f"noticed after {elapsed:.2f}s"
    finally:
        await store.close()
        await writer.close()


async def test_a_paused_server_fails_fast_instead_of_hanging(
    server: PostgresServer, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, server)
    await store.create_version(draft("a"), "alice", time.time())
    try:
        server.pause()
        times = await time_failures(operations(store))
        print(
            "paused server, seconds to StoreUnavailable:",
            {k: round(v, 2) for k, v in times.items()},
        )
        assert max(times.values()) < BOUND, times
    finally:
        server.resume()

    await _until(lambda: _answers(store), "the store never came back after the pause")
    assert (await store.get_version(GREET, 1)).template == "a"


async def test_a_cold_start_with_the_server_down_waits_for_it(server: PostgresServer) -> None:
    """Opening does not fail while the server is down (the process starts and reports the
    store unavailable); the tables are made by the first call that reaches it."""
    server.stop()
    pool = new_pool(server.url, schema=SCHEMA, max_size=4)
    await pool.open(wait=False)
    try:
        started = time.monotonic()
        store = await PostgresStore.open(pool, url=server.url, schema=SCHEMA, op_timeout=1.0)
        board = await PostgresBoard.open(pool, schema=SCHEMA, forget_seconds=60.0, op_timeout=1.0)
        assert time.monotonic() - started < 2 * BOUND
        with pytest.raises(StoreUnavailable):
            await store.revision()
        with pytest.raises(FleetError):
            await board.read()

        server.start()
        await _until(lambda: _answers(store), "the store never reached the server")
        version, created = await store.create_version(draft("a"), "alice", time.time())
        assert (version.version, created) == (1, True)
        await board.publish(ReplicaBeat("a", "host", 1, "0.1.0", 1, 1.0, 0.1, True))
        assert [b.replica for b, _ in (await board.read()).entries] == ["a"]
        await store.close()
    finally:
        await pool.close()
