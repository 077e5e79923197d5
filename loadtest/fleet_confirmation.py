"""Read your writes and fleet confirmation, measured on real processes.

1. Fleet confirmation: three replicas on one Redis; each run promotes or rolls back through
   one of them (in turn) with ``?wait=10`` and records ``served.fleet.elapsed_ms``: from just
   before the write until every live replica reports serving it.
2. Read your writes, on each store: a write, then at once a data-plane request to the same
   process; counts answers whose ``x-prompt-version`` is not the one just written.

    python -m loadtest.fleet_confirmation --runs 100

writes ``loadtest/results/fleet-confirmation.json`` and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson

RESULTS = Path(__file__).resolve().parent / "results" / "fleet-confirmation.json"
TOKEN = "bench"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _admin(
    session: aiohttp.ClientSession, base: str, method: str, path: str, body: Any, wait: float | None
) -> Any:
    params = {"wait": str(wait)} if wait else None
    url = f"{base}/admin/v1{path}"
    async with session.request(method, url, json=body, headers=ADMIN, params=params) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def _served(session: aiohttp.ClientSession, data_url: str, slug: str) -> str | None:
    base = data_url.removesuffix("/v1")
    async with session.post(f"{base}/p/{slug}/v1/chat/completions", json=CHAT) as resp:
        await resp.read()
        return resp.headers.get("x-prompt-version")


async def _seed(session: aiohttp.ClientSession, admin: str, slug: str) -> None:
    for text in ("one", "two"):
        await _admin(session, admin, "POST", f"/prompts/{slug}/versions", {"template": text}, None)
    for version in (1, 2):
        await _admin(session, admin, "POST", f"/prompts/{slug}/promote", {"version": version}, 5)


async def confirmation(replicas: list[Any], runs: int) -> list[float]:
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        await _seed(session, replicas[0].admin_url, "bench-fleet")
        for i in range(runs):
            via = replicas[i % len(replicas)].admin_url
            if i % 2 == 0:
                answer = await _admin(session, via, "POST", "/prompts/bench-fleet/rollback", {}, 10)
            else:
                answer = await _admin(
                    session, via, "POST", "/prompts/bench-fleet/promote", {"version": 2}, 10
                )
            fleet = answer["served"]["fleet"]
            assert fleet["complete"], fleet
            assert fleet["replicas"] == len(replicas), fleet
            times.append(fleet["elapsed_ms"])
            await asyncio.sleep(0.05)
    return times


async def read_your_writes(replica: Any, runs: int) -> dict[str, Any]:
    stale = 0
    async with aiohttp.ClientSession() as session:
        await _seed(session, replica.admin_url, "bench-ryw")
        for i in range(runs):
            rollback = i % 2 == 0
            path = "/prompts/bench-ryw/rollback" if rollback else "/prompts/bench-ryw/promote"
            body = {} if rollback else {"version": 2}
            answer = await _admin(session, replica.admin_url, "POST", path, body, None)
            if await _served(session, replica.url, "bench-ryw") != str(answer["version"]):
                stale += 1
    return {"writes": runs, "stale_next_requests": stale}


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "runs": len(ordered),
        "min_ms": ordered[0],
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "max_ms": ordered[-1],
    }


async def _main(args: argparse.Namespace) -> None:
    from tests.processes import proxy, simulator
    from tests.redis_server import running_redis

    env = {"PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        redis = stack.enter_context(running_redis(work))
        sim_url, _ = stack.enter_context(simulator(work))
        replicas = [
            stack.enter_context(proxy(work, sim_url, store=redis.url, env=env))
            for _ in range(args.replicas)
        ]
        embedded = stack.enter_context(proxy(work, sim_url, env=env))
        await asyncio.sleep(1.5)  # every heartbeat on the board
        times = await confirmation(replicas, args.runs)
        summary = {
            "fleet_confirmation_redis": {"replicas": args.replicas, **_summary(times)},
            "read_your_writes": {
                "redis": await read_your_writes(replicas[0], args.runs),
                "embedded": await read_your_writes(embedded, args.runs),
            },
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps({**summary, "times_ms": times}, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
