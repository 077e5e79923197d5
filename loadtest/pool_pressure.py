"""Upstream pool pressure: short calls beside long streams, direct and through the proxy.

1,000 streams of 5 s hold their connections; 1,000 non-streaming calls of 3 s arrive while
they run. Direct, every call gets its own connection; through a proxy whose pool is full,
calls wait for a connection. Targets, in one run against one simulator:

- `direct`: the simulator itself;
- `proxy_unbounded`: the old behaviour, `upstream.max_connections: 1000` and a wait for a
  free connection bounded only by `pool_wait_seconds: 600` (before, there was no bound);
- `proxy_1000_bounded`: the same pool with the new default wait (2 s): calls that cannot
  get a connection get a retryable 503 instead of a silent wait;
- `proxy_default`: the new defaults (`max_connections: 4096`, `pool_wait_seconds: 2`).

    .venv/bin/python -m loadtest.pool_pressure            # ~1 minute
    .venv/bin/python -m loadtest.pool_pressure --streams 200 --calls 200

Writes loadtest/results/pool-pressure.json and prints a table. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.experiment import fleet_with_simulator, raise_nofile_limit, start_proxy, write_results
from loadtest.procs import ManagedProcess

RESULTS = Path(__file__).resolve().parent / "results" / "pool-pressure.json"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}

TARGETS: dict[str, str | None] = {
    "direct": None,
    "proxy_unbounded": "upstream:\n  max_connections: 1000\n  pool_wait_seconds: 600\n",
    "proxy_1000_bounded": "upstream:\n  max_connections: 1000\n  pool_wait_seconds: 2\n",
    "proxy_default": "",
}


@dataclass
class Phase:
    target: str
    call_ttfb_s: dict[str, float] = field(default_factory=dict)
    call_status: dict[str, int] = field(default_factory=dict)
    #: Time to the refusal, for calls answered 503 (the bounded wait).
    call_refused_s: dict[str, float] = field(default_factory=dict)
    stream_status: dict[str, int] = field(default_factory=dict)
    stream_ttfb_s: dict[str, float] = field(default_factory=dict)
    pool_in_use_max: float | None = None
    pool_waiting_max: float | None = None
    #: CPU seconds the proxy used during the phase (user + system), and the 1-minute load
    #: average at its start: on a shared 2-core machine both explain much of the spread.
    proxy_cpu_s: float | None = None
    load_average: float | None = None


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


async def _one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[str, float | None]:
    """Status (or the exception's name) and time to the first body byte."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            ttfb: float | None = None
            async for _ in resp.content.iter_any():
                if ttfb is None:
                    ttfb = time.perf_counter() - started
            return str(resp.status), ttfb
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, None


async def _warm_up(session: aiohttp.ClientSession, url: str, connections: int) -> None:
    """Open the client's keep-alive connections (and the proxy's upstream ones) 100 at a
    time before measuring. A burst of 2,000 connects overflows the simulator's listen
    backlog (128), and the SYN retransmits (1 s, 3 s, 7 s) would be measured instead."""
    held = {"x-sim-first-byte-ms": "2500"}
    tasks = []
    for start in range(0, connections, 100):
        tasks += [
            asyncio.create_task(_one(session, url, CHAT, held))
            for _ in range(min(100, connections - start))
        ]
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)


def _scrape(admin: int | None) -> tuple[float | None, float | None]:
    if admin is None:
        return None, None
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()

    def value(name: str) -> float | None:
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    return value("promptproxy_upstream_pool_in_use"), value("promptproxy_upstream_pool_waiting")


async def run_phase(
    target: str,
    base_url: str,
    admin: int | None,
    streams: int,
    calls: int,
    stream_s: float,
    call_s: float,
) -> Phase:
    # Few events: the point is connections held for seconds, not events per second (2,000
    # streams of 50 events would make this a CPU benchmark on a small machine).
    chunks = 5
    stream_headers = {
        "x-sim-chunks": str(chunks),
        "x-sim-chunk-delay-ms": str(int(stream_s * 1000 / chunks)),
    }
    call_headers = {"x-sim-first-byte-ms": str(int(call_s * 1000))}
    url = f"{base_url}/chat/completions"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=120)
    phase = Phase(target)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _warm_up(session, url, streams + calls)
        stream_tasks = [
            asyncio.create_task(_one(session, url, {**CHAT, "stream": True}, stream_headers))
            for _ in range(streams)
        ]
        # Let the streams take their connections before the calls arrive.
        await asyncio.sleep(min(1.0, stream_s / 4))
        call_tasks = [
            asyncio.create_task(_one(session, url, CHAT, call_headers)) for _ in range(calls)
        ]
        peaks: list[tuple[float | None, float | None]] = []
        while not all(t.done() for t in call_tasks):
            peaks.append(await asyncio.to_thread(_scrape, admin))
            await asyncio.sleep(0.5)
        call_results = await asyncio.gather(*call_tasks)
        stream_results = await asyncio.gather(*stream_tasks)
    phase.call_ttfb_s = _quantiles([t for s, t in call_results if s == "200" and t is not None])
    phase.call_status = dict(Counter(s for s, _ in call_results))
    phase.call_refused_s = _quantiles([t for s, t in call_results if s == "503" and t is not None])
    phase.stream_ttfb_s = _quantiles([t for s, t in stream_results if s == "200" and t is not None])
    phase.stream_status = dict(Counter(s for s, _ in stream_results))
    in_use = [p[0] for p in peaks if p[0] is not None]
    waiting = [p[1] for p in peaks if p[1] is not None]
    phase.pool_in_use_max = max(in_use) if in_use else None
    phase.pool_waiting_max = max(waiting) if waiting else None
    return phase


def _table(phases: list[Phase]) -> str:
    lines = [
        "target               calls TTFB p50 / p90 / p99 / max (s)   call statuses"
        "                 streams ok   pool in use / waiting (max)   503 after p50/max (s)"
        "   proxy CPU s   load",
    ]
    for p in phases:
        q = p.call_ttfb_s
        ttfb = " / ".join(f"{q.get(k, float('nan')):.2f}" for k in ("p50", "p90", "p99", "max"))
        pool = (
            f"{p.pool_in_use_max:.0f} / {p.pool_waiting_max:.0f}"
            if p.pool_in_use_max is not None and p.pool_waiting_max is not None
            else "-"
        )
        refused = p.call_refused_s
        ref = f"{refused['p50']:.2f} / {refused['max']:.2f}" if refused else "-"
        cpu = f"{p.proxy_cpu_s:.1f}" if p.proxy_cpu_s is not None else "-"
        lines.append(
            f"{p.target:<20} {ttfb:<38} {json.dumps(p.call_status):<29} "
            f"{p.stream_status.get('200', 0):>10}   {pool:<29} {ref:<23} {cpu:>11}   "
            f"{p.load_average}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    nofile = raise_nofile_limit()
    phases: list[Phase] = []
    with fleet_with_simulator("pool-pressure-") as (fleet, sim_url):
        for target, config in TARGETS.items():
            if args.only and target not in args.only:
                continue
            proc: ManagedProcess | None = None
            if config is None:
                base, admin = sim_url, None
            else:
                port, admin, proc = start_proxy(fleet, target, sim_url, config)
                base = f"http://127.0.0.1:{port}/v1"
            load = os.getloadavg()[0]
            cpu = proc.cpu_seconds() if proc is not None else None
            phase = await run_phase(
                target,
                base,
                admin,
                args.streams,
                args.calls,
                args.stream_seconds,
                args.call_seconds,
            )
            phase.load_average = round(load, 2)
            if proc is not None and cpu is not None:
                phase.proxy_cpu_s = round(proc.cpu_seconds() - cpu, 2)
                fleet.stop(proc)
            phases.append(phase)
            print(_table([phase]).splitlines()[-1], flush=True)
    print()
    print(_table(phases))
    scenario = {
        "streams": args.streams,
        "stream_seconds": args.stream_seconds,
        "calls": args.calls,
        "call_seconds": args.call_seconds,
    }
    write_results(RESULTS, nofile, scenario, [asdict(p) for p in phases])
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--stream-seconds", type=float, default=5.0)
    parser.add_argument("--call-seconds", type=float, default=3.0)
    parser.add_argument("--only", nargs="*", choices=list(TARGETS), default=None)
    sys.exit(asyncio.run(main(parser.parse_args())))


if __name__ == "__main__":
    cli()
