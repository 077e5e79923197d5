"""Reliability row C3: an admin ramp of a canary from 10 % to 0 % under load reaches every
replica within the promised time (2 s by notification, 5 s with the pub/sub connections
killed by ``CLIENT KILL TYPE pubsub``, either once just before the ramp or over and over from
then on, so that only the refresher's polling can see the change), and from then on no caller
gets a canary answer.

Three replicas share one real redis-server; traffic runs on every replica throughout, each
request with a fresh sticky key so about 10 % land on the canary before the ramp. A replica
has applied the ramp when a probe key that sits in the canary's 10 % gets the stable answer
there (the arm is a pure function of the snapshot, so that is the snapshot changing).

The 2 s / 5 s bounds are the product's promises (docs/rollouts.md, reliability guide A6), so
they are deadlines here. Each run prints one ``FIGURES {json}`` line with the measured times;
``python -m loadtest.fault_rows`` repeats the runs and collects them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio

from proxy.pipeline.choose import bucket
from proxy.prompt_key import PromptKey
from tests.processes import STICKY_HEADER, ProxyProc, admin, arm_of
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

WORKERS_PER_REPLICA = 2
# Seconds, by how pub/sub is killed: not at all, once just before the ramp, or every 50 ms
# from just before the ramp until every replica applied it.
PROMISE = {"never": 2.0, "once": 5.0, "throughout": 5.0}
AFTER_APPLY = 100  # requests each replica answers after it applied the ramp, at least


@dataclass
class Answer:
    replica: int
    started: float  # monotonic
    arm: str


@dataclass
class Load:
    """Continuous traffic on every replica, each request with a new sticky key."""

    replicas: list[ProxyProc]
    slug: str
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(i))
            for i in range(len(self.replicas))
            for _ in range(WORKERS_PER_REPLICA)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _worker(self, index: int) -> None:
        replica = self.replicas[index]
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                arm = await arm_of(session, replica, self.slug, uuid.uuid4().hex)
                self.answers.append(Answer(index, started, arm))


async def until_all(replicas: list[ProxyProc], slug: str, key: str, arm: str) -> None:
    """Setup only: wait (bounded) until every replica serves ``key`` on ``arm``."""
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while [await arm_of(session, r, slug, key) for r in replicas] != [arm] * len(replicas):
            assert time.monotonic() < deadline, f"setup: not every replica serves {arm}"
            await asyncio.sleep(0.02)


async def applied_times(
    replicas: list[ProxyProc], slug: str, probe: str, since: float, limit: float
) -> list[float]:
    """Seconds from ``since`` until each replica answers the canary ``probe`` key from
    stable, polled per replica until ``limit`` seconds after ``since``."""
    applied: dict[int, float] = {}
    async with aiohttp.ClientSession() as session:
        while len(applied) < len(replicas):
            for i, replica in enumerate(replicas):
                if i not in applied and await arm_of(session, replica, slug, probe) == "stable:1":
                    applied[i] = time.monotonic() - since
            missing = sorted(set(range(len(replicas))) - set(applied))
            assert time.monotonic() - since < limit or not missing, (
                f"replicas {missing} still serve the canary {limit}s after the ramp"
            )
            await asyncio.sleep(0.005)
    return [applied[i] for i in range(len(replicas))]


async def keep_killing_pubsub(client: redis.asyncio.Redis, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await client.client_kill_filter(_type="pubsub")
        await asyncio.sleep(0.05)


async def until_answered_after(load: Load, ramped_at: float, applied: list[float]) -> None:
    """Keep the load up until every replica answered AFTER_APPLY requests sent after it
    applied the ramp (counted, not timed, so a slow machine only takes longer)."""
    deadline = time.monotonic() + 30
    while True:
        counts = [0] * len(applied)
        for a in list(load.answers):
            if a.started >= ramped_at + applied[a.replica]:
                counts[a.replica] += 1
        if min(counts) >= AFTER_APPLY:
            return
        assert time.monotonic() < deadline, f"setup: too little traffic after the ramp: {counts}"
        await asyncio.sleep(0.05)


def canary_key(slug: str, rollout_id: str, basis_points: int) -> str:
    return next(
        key
        for key in (f"probe-{n}" for n in itertools.count())
        if bucket(PromptKey(slug), rollout_id, key) < basis_points
    )


async def ramp_to_zero_under_load(
    replicas: list[ProxyProc], redis_url: str, slug: str, *, kill_pubsub: str, flaps: int = 0
) -> dict[str, Any]:
    """The C3 scenario. ``flaps`` > 0 first moves the rollout 10 -> 0 -> 10 ... that many
    times, alternating the replica the change goes through, right before the final 0 %:
    every replica must end on the last write, not on one it read on the way."""
    for text in ("stable prompt", "candidate prompt"):
        path = f"/prompts/{slug}/versions"
        status, _ = await admin(replicas[0], "POST", path, {"template": text})
        assert status == 201
    status, _ = await admin(replicas[0], "POST", f"/prompts/{slug}/promote", {"version": 1})
    assert status == 200
    body = {"candidate": 2, "mode": "canary", "percent": 10, "sticky": f"header:{STICKY_HEADER}"}
    status, rollout = await admin(replicas[0], "PUT", f"/prompts/{slug}/rollout", body)
    assert status == 201, rollout
    probe = canary_key(slug, rollout["id"], 1000)
    await until_all(replicas, slug, probe, "canary:2")

    load = Load(replicas, slug)
    load.start()
    client = redis.asyncio.Redis.from_url(redis_url)
    cutting = asyncio.Event()
    cutter: asyncio.Task[None] | None = None
    try:
        # Enough traffic that the canary is seen on every replica before the ramp: the
        # "no canary afterwards" check below could not fail otherwise.
        deadline = time.monotonic() + 15
        while {a.replica for a in load.answers if a.arm == "canary:2"} != {0, 1, 2}:
            assert time.monotonic() < deadline, "setup: the 10 % canary never answered"
            await asyncio.sleep(0.05)
        killed = 0
        if kill_pubsub != "never":
            killed = int(await client.client_kill_filter(_type="pubsub"))
        if kill_pubsub == "throughout":
            cutter = asyncio.create_task(keep_killing_pubsub(client, cutting))
        for flap in range(flaps):
            body["percent"] = 0 if flap % 2 == 0 else 10
            status, _ = await admin(replicas[flap % 3], "PUT", f"/prompts/{slug}/rollout", body)
            assert status == 200
        body["percent"] = 0
        ramped_at = time.monotonic()
        status, ramped = await admin(replicas[1], "PUT", f"/prompts/{slug}/rollout", body)
        committed = time.monotonic() - ramped_at
        assert (status, ramped["id"], ramped["percent"]) == (200, rollout["id"], 0), ramped
        applied = await applied_times(replicas, slug, probe, ramped_at, PROMISE[kill_pubsub])
        cutting.set()
        await until_answered_after(load, ramped_at, applied)
    finally:
        cutting.set()
        if cutter is not None:
            await cutter
        await load.stop()
        await client.aclose()

    before = [a for a in load.answers if a.started < ramped_at]
    after = [a for a in load.answers if a.started >= ramped_at + applied[a.replica]]
    assert {a.arm for a in load.answers} <= {"canary:2", "stable:1"}, "a request failed"
    late_canary = [a for a in after if a.arm == "canary:2"]
    assert not late_canary, f"{len(late_canary)} canary answers after the replica applied 0 %"
    figures = {
        "row": "C3",
        "pubsub_killed": kill_pubsub,
        "pubsub_connections_killed": killed,
        "flaps": flaps,
        "admin_put_s": round(committed, 4),
        "applied_s": [round(t, 4) for t in applied],
        "requests_before": len(before),
        "canary_share_before": round(
            sum(a.arm == "canary:2" for a in before) / max(1, len(before)), 4
        ),
        "requests_after_apply": len(after),
        "canary_after_apply": len(late_canary),
    }
    print("\nFIGURES " + orjson.dumps(figures).decode())
    return figures


async def test_ramp_to_zero_reaches_every_replica_by_notification(
    replicas: list[ProxyProc], redis_server: RedisServer
) -> None:
    figures = await ramp_to_zero_under_load(
        replicas, redis_server.url, "ramp-notified", kill_pubsub="never"
    )
    assert max(figures["applied_s"]) <= PROMISE["never"]


@pytest.mark.parametrize("kill_pubsub", ["once", "throughout"])
async def test_ramp_to_zero_reaches_every_replica_with_pubsub_killed(
    replicas: list[ProxyProc], redis_server: RedisServer, kill_pubsub: str
) -> None:
    figures = await ramp_to_zero_under_load(
        replicas, redis_server.url, f"ramp-pubsub-{kill_pubsub}", kill_pubsub=kill_pubsub
    )
    # Each replica holds one change subscription; all of them were cut before the ramp.
    assert figures["pubsub_connections_killed"] >= len(replicas)
    assert max(figures["applied_s"]) <= PROMISE[kill_pubsub]


@pytest.mark.parametrize("kill_pubsub", ["never", "throughout"])
async def test_the_last_of_rapid_ramps_wins_on_every_replica(
    replicas: list[ProxyProc], redis_server: RedisServer, kill_pubsub: str
) -> None:
    figures = await ramp_to_zero_under_load(
        replicas, redis_server.url, f"ramp-flaps-{kill_pubsub}", kill_pubsub=kill_pubsub, flaps=9
    )
    assert max(figures["applied_s"]) <= PROMISE[kill_pubsub]
