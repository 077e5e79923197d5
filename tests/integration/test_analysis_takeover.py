"""Two proxy replicas on one shared store (Redis, PostgreSQL) analyse a canary rollout:
exactly one holds the slug's analysis lease; when it is SIGKILLed the other takes over within
the lease length, and the verdicts carry on in the same list (the state lives in the store,
not in the dead process); a SIGTERMed holder hands the lease over at once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.processes import ADMIN_HEADERS, CHAT, ProxyProc, proxy_with_token
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

SLUG = "takeover"
LEASE_SECONDS = 3.0
CONFIG = f"analysis:\n  lease_seconds: {LEASE_SECONDS}\n  flush_seconds: 0.5\n"
#: A healthy candidate passes: one interval-second window per verdict, a few samples, limits
#: no healthy arm comes near, and failures tolerated anyway (an abort would end the test).
POLICY: dict[str, Any] = {
    "interval": 1,
    "min_samples": 3,
    "failure_limit": 1000,
    "steps": [],
    "thresholds": {
        "error_rate_increase": 0.5,
        "p95_latency_ratio": 100,
        "p95_ttft_ratio": None,
        "length_finish_increase": None,
        "answer_length_drift": None,
    },
}
LEADER = re.compile(r'^promptproxy_analysis_leader\{slug="takeover"\} (\S+)$', re.MULTILINE)


postgres_server = postgres_server_fixture("module")


@pytest.fixture(params=["redis", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    """The shared store's URL: the module's Redis, or a new database on its PostgreSQL."""
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        return redis.url
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres.new_database()


@pytest.fixture
def start_replica(procs_dir: Path, sim_url: str, store: str) -> Iterator[Callable[[], ProxyProc]]:
    """Starts a replica on the shared store (blocking until it is ready); all are killed at
    the end."""
    with ExitStack() as stack:

        def start() -> ProxyProc:
            return stack.enter_context(proxy_with_token(procs_dir, sim_url, CONFIG, store=store))

        yield start


async def admin(
    session: aiohttp.ClientSession, replica: ProxyProc, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method, f"{replica.admin_url}/admin/v1{path}", json=body, headers=ADMIN_HEADERS
    ) as resp:
        return resp.status, await resp.json()


async def leader_gauge(session: aiohttp.ClientSession, replica: ProxyProc) -> float | None:
    """The replica's leader gauge for the slug; None when it no longer answers (stopping)."""
    try:
        async with session.get(f"{replica.admin_url}/metrics") as resp:
            assert resp.status == 200
            match = LEADER.search(await resp.text())
    except aiohttp.ClientError:
        return None
    return float(match.group(1)) if match else 0.0


async def analysis_state(session: aiohttp.ClientSession, replica: ProxyProc) -> dict[str, Any]:
    status, view = await admin(session, replica, "GET", f"/prompts/{SLUG}/rollout")
    assert status == 200, view
    state: dict[str, Any] = view["analysis_state"]
    return state


def pid_of(holder: str | None) -> int | None:
    """Replica ids are ``host:pid:suffix``."""
    return None if holder is None else int(holder.split(":")[-2])


def actor_pid(verdict: dict[str, Any]) -> int | None:
    """The pid of the replica that recorded a verdict (actor ``analyser:<replica id>``)."""
    actor: str = verdict["actor"]
    assert actor.startswith("analyser:")
    return pid_of(actor.removeprefix("analyser:"))


async def drive_traffic(replicas: list[ProxyProc], stop: asyncio.Event) -> int:
    """Light traffic through every live replica until ``stop``; returns requests answered."""
    answered = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            for replica in replicas:
                if replica.popen.poll() is not None:
                    continue
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.post(
                        f"{replica.url.removesuffix('/v1')}/p/{SLUG}/v1/chat/completions",
                        json=CHAT,
                    ) as resp:
                        await resp.read()
                        answered += resp.status == 200
            await asyncio.sleep(0.02)
    return answered


class Sampler:
    """Samples who leads on every live replica, and keeps what it saw."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[ProxyProc]) -> None:
        self.session = session
        self.replicas = replicas
        self.samples: list[tuple[float, list[int]]] = []

    async def leaders(self) -> list[int]:
        """Pids of the live replicas whose gauge says they lead; never more than one."""
        live = [r for r in self.replicas if r.popen.poll() is None]
        gauges = await asyncio.gather(*(leader_gauge(self.session, r) for r in live))
        leading = [r.pid for r, g in zip(live, gauges, strict=True) if g == 1.0]
        self.samples.append((time.monotonic(), leading))
        assert len(leading) <= 1, f"two leaders at once: {leading}"
        return leading


async def until(check: Any, limit: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, f"{what}: not within {limit} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_the_other_replica_takes_over_the_analysis_of_a_killed_holder(
    start_replica: Callable[[], ProxyProc],
) -> None:
    replicas = [start_replica(), start_replica()]
    live = list(replicas)  # grows with a newcomer later; traffic and sampling follow it
    stop = asyncio.Event()
    traffic = asyncio.create_task(drive_traffic(live, stop))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        first = replicas[0]
        for text in ("stable prompt", "candidate prompt"):
            status, _ = await admin(
                session, first, "POST", f"/prompts/{SLUG}/versions", {"template": text}
            )
            assert status == 201
        status, _ = await admin(session, first, "POST", f"/prompts/{SLUG}/promote", {"version": 1})
        assert status == 200
        body = {"candidate": 2, "mode": "canary", "percent": 50, "analysis": POLICY}
        status, rollout = await admin(session, first, "PUT", f"/prompts/{SLUG}/rollout", body)
        assert status == 201, rollout
        sampler = Sampler(session, live)

        # One replica takes the lease, and both tell the same holder.
        async def one_leader() -> bool:
            return len(await sampler.leaders()) == 1

        await until(one_leader, 5, "a leader")
        led = time.monotonic()
        [holder_pid] = await sampler.leaders()
        holder = next(r for r in replicas if r.pid == holder_pid)
        survivor = next(r for r in replicas if r is not holder)
        for replica in replicas:
            assert pid_of((await analysis_state(session, replica))["holder"]) == holder_pid

        # Verdicts come, decided by the holder.
        async def two_verdicts() -> bool:
            assert len(await sampler.leaders()) == 1
            return len((await analysis_state(session, survivor))["verdicts"]) >= 2

        await until(two_verdicts, 8, "two verdicts before the kill")
        before = (await analysis_state(session, survivor))["verdicts"]
        assert {v["rollout_id"] for v in before} == {rollout["id"]}
        assert {actor_pid(v) for v in before} == {holder_pid}
        assert {v["verdict"] for v in before} <= {"pass", "inconclusive"}
        assert any(v["samples"]["canary"] > 0 for v in before), before

        holder.stop(signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()

        async def survivor_leads() -> bool:
            if await sampler.leaders() != [survivor.pid]:
                return False
            state = await analysis_state(session, survivor)
            return pid_of(state["holder"]) == survivor.pid

        takeover = await until(survivor_leads, LEASE_SECONDS + 3, "takeover")
        print(f"\nanalysis takeover after SIGKILL of the holder: {takeover:.2f} s")
        # The lease outlives its holder's last renewal (at most one 0.5 s tick before the
        # kill) by lease_seconds; the survivor notices at its next tick.
        assert LEASE_SECONDS - 0.6 < takeover < LEASE_SECONDS + 2

        # The survivor carries on the same verdict list, the dead holder's verdicts kept.
        async def two_more() -> bool:
            assert await sampler.leaders() == [survivor.pid]
            verdicts: list[dict[str, Any]] = (await analysis_state(session, survivor))["verdicts"]
            return len([v for v in verdicts if v["at"] > before[0]["at"]]) >= 2

        await until(two_more, 6, "two more verdicts after the takeover")
        state = await analysis_state(session, survivor)
        after = state["verdicts"]
        assert after[len(after) - len(before) :] == before
        new = after[: len(after) - len(before)]
        assert {v["rollout_id"] for v in new} == {rollout["id"]}
        assert {actor_pid(v) for v in new} == {survivor.pid}
        assert all(v["at"] > killed_at for v in new)
        assert state["failures"] == 0
        # The survivor judges the pooled counts: a healthy candidate passes.
        assert any(v["verdict"] == "pass" and v["samples"]["canary"] >= 3 for v in new), new
        took_over = time.monotonic()

        # A graceful stop hands the lease over at once: a new replica joins, the survivor
        # gets SIGTERM and gives the lease up on its way out.
        newcomer = await asyncio.to_thread(start_replica)
        live.append(newcomer)
        await asyncio.sleep(1.0)  # the newcomer ticks and finds the lease taken
        assert await sampler.leaders() == [survivor.pid]
        terminated = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(survivor.stop, signal.SIGTERM))

        async def newcomer_leads() -> bool:
            return await sampler.leaders() == [newcomer.pid]

        handover = await until(newcomer_leads, LEASE_SECONDS + 3, "handover")
        print(f"analysis handover after SIGTERM of the holder: {handover:.2f} s")
        assert await stopping == 0
        # Well before the lease could have expired: it was released, not abandoned.
        assert handover < LEASE_SECONDS - 1

        async def newcomer_verdict() -> bool:
            verdicts = (await analysis_state(session, newcomer))["verdicts"]
            return bool(verdicts) and actor_pid(verdicts[0]) == newcomer.pid

        await until(newcomer_verdict, 4, "a verdict by the newcomer")
        last = await analysis_state(session, newcomer)
    stop.set()
    answered = await asyncio.wait_for(traffic, 5)

    assert last["verdicts"][-len(after) :] == after
    assert last["failures"] == 0
    assert answered > 20
    # Every sample from the first lease on saw exactly one leader, but in the gaps after the
    # kill and the stop (and none ever saw two: ``Sampler.leaders`` asserts that).
    gaps = [(killed, killed + takeover), (terminated, terminated + handover)]
    outside_gap = [
        leading
        for at, leading in sampler.samples
        if at >= led and not any(start <= at < end for start, end in gaps)
    ]
    assert len(outside_gap) > 10
    assert all(len(leading) == 1 for leading in outside_gap), sampler.samples
    assert took_over < terminated
