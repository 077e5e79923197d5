"""Rollout starts racing each other, in one process and across processes (both stores).

One rollout per slug holds only if the check and the write are one atomic step: two
replicas that both read "no rollout" and then both write would each believe they won.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, Status, StickyKey
from proxy.registry.store import InvalidTransition, PromptStore
from tests.registry.conftest import StoreFactory
from tests.registry.helpers import GREET, REPO, T0, push, statuses

SLUGS = [f"race{i}" for i in range(20)]
RACERS = ("p1", "p2", "p3")


async def test_replicas_starting_rollouts_together_get_one_each_slug(
    store: PromptStore, store_factory: StoreFactory
) -> None:
    await push(store, "a", "b", "c", "d", "e")
    replicas = [await store_factory.new() for _ in range(4)]

    async def attempt(replica: PromptStore, candidate: int) -> int | None:
        try:
            await replica.start_rollout(
                GREET,
                f"r-{candidate}",
                candidate,
                RolloutMode.CANARY,
                1000,
                StickyKey.parse("user"),
                f"replica-{candidate}",
                "",
                T0,
            )
        except InvalidTransition:
            return None
        return candidate

    results = await asyncio.gather(
        *(attempt(replica, candidate) for candidate, replica in enumerate(replicas, start=2))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    running = await store.get_rollout(GREET)
    assert running is not None
    assert (running.id, running.candidate) == (f"r-{winners[0]}", winners[0])
    # Only the winner's candidate moved; the losers left nothing behind.
    assert await statuses(store) == {
        n: Status.CANDIDATE if n == winners[0] else Status.DRAFT for n in range(1, 6)
    }
    starts = [e for e in await store.audit(limit=100) if e.action == "rollout_start"]
    assert [e.version for e in starts] == winners


_RACER = """
import asyncio, json, sys, time
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, StickyKey
from proxy.registry.store import InvalidTransition

kind, location, prefix, tag, candidate, racers, rounds, out = sys.argv[1:9]
slugs = sys.argv[9:]


def barrier(name: str) -> None:
    # Wait until every racer reached this round: each round starts together.
    Path(f"{rounds}.{name}.{tag}").touch()
    deadline = time.monotonic() + 20
    while len(list(Path(rounds).parent.glob(f"{Path(rounds).name}.{name}.*"))) < int(racers):
        assert time.monotonic() < deadline, f"racers never all reached {name}"
        time.sleep(0.0002)


async def main() -> None:
    if kind == "embedded":
        from proxy.registry.embedded_store import EmbeddedStore
        store = await EmbeddedStore.open(Path(location))
    elif kind == "postgres":
        from tests.registry.pg_stores import open_store
        store = await open_store(location, prefix)
    else:
        from proxy.registry.redis_store import RedisStore
        store = RedisStore.from_url(location, prefix=prefix)
    try:  # warm up: connection made, script loaded, schema read
        await store.abort_rollout(PromptKey(slugs[0]), tag, "", time.time())
    except InvalidTransition:
        pass
    attempts = []
    for i, slug in enumerate(slugs):
        barrier(str(i))
        began = time.time()
        try:
            await store.start_rollout(
                PromptKey(slug), tag, int(candidate), RolloutMode.SHADOW, 500,
                StickyKey.parse("none"), tag, "", time.time(),
            )
            won = True
        except InvalidTransition:
            won = False
        attempts.append({"slug": slug, "won": won, "began": began, "ended": time.time()})
    await store.close()
    Path(out).write_text(json.dumps(attempts))


asyncio.run(main())
"""


async def test_processes_starting_rollouts_together_get_one_each_slug(
    store: PromptStore, store_factory: StoreFactory, tmp_path: Path
) -> None:
    for slug in SLUGS:
        await push(store, "a", "b", "c", "d", slug=slug)
    rounds = tmp_path / "round"
    procs = []
    # Each racer rolls out its own version (v2, v3, v4) of every slug, in the same order.
    for candidate, tag in enumerate(RACERS, start=2):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _RACER,
                store_factory.kind,
                store_factory.location,
                store_factory.prefix,
                tag,
                str(candidate),
                str(len(RACERS)),
                str(rounds),
                str(tmp_path / f"{tag}.json"),
                *SLUGS,
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )

    try:
        async with asyncio.timeout(30):
            outputs = [await p.communicate() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert [p.returncode for p in procs] == [0] * len(RACERS), outputs

    attempts = {t: json.loads((tmp_path / f"{t}.json").read_text()) for t in RACERS}
    overlapping = 0
    snap = await store.snapshot()
    for i, slug in enumerate(SLUGS):
        tries = {tag: attempts[tag][i] for tag in RACERS}
        winners = [tag for tag, attempt in tries.items() if attempt["won"]]
        assert len(winners) == 1, (slug, tries)
        winner = winners[0]
        candidate = RACERS.index(winner) + 2
        key = PromptKey(slug)
        assert (snap.rollouts[key].id, snap.rollouts[key].candidate) == (winner, candidate)
        assert {n: v.status for n, v in snap.versions[key].items()} == {
            n: Status.CANDIDATE if n == candidate else Status.DRAFT for n in range(1, 5)
        }
        starts = [e for e in await store.audit(key=key) if e.action == "rollout_start"]
        assert [(e.version, e.actor) for e in starts] == [(candidate, winner)]
        spans = sorted((t["began"], t["ended"]) for t in tries.values())
        overlapping += any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    print(f"{overlapping} of {len(SLUGS)} slugs had overlapping attempts")
    assert overlapping, "no two attempts on a slug overlapped in time: nothing was raced"
