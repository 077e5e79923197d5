"""X5 figures: legitimate latency and the proxy's file descriptors under a slowloris.

2,000 sockets send a request head one byte every 10 s (each one reconnects when the proxy
closes it, so the attack is sustained; the attacker runs in a process of its own) while 16
clients make normal chat calls (50 ms provider delay). Phases, each against a fresh proxy in
front of one simulator:

- `baseline`: normal calls only, default deadlines;
- `attack`: normal calls plus the slowloris, default deadlines (header 10 s);
- `attack_no_deadline`: the same with deadlines pushed out of reach (header 300 s,
  keep-alive 3,600 s: what aiohttp's defaults gave before), for comparison.

    .venv/bin/python -m loadtest.slowloris            # ~2 minutes

Writes loadtest/results/slowloris.json and prints a table. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

from loadtest.experiment import fleet_with_simulator, raise_nofile_limit, start_proxy, write_results
from loadtest.procs import Fleet

RESULTS = Path(__file__).resolve().parent / "results" / "slowloris.json"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
PHASES = {
    "baseline": ("", False),
    "attack": ("", True),
    "attack_no_deadline": (
        "server:\n  header_timeout_seconds: 300\n  keepalive_timeout_seconds: 3600\n",
        True,
    ),
}


@dataclass
class Result:
    phase: str
    requests: int = 0
    errors: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    proxy_fds: dict[str, int] = field(default_factory=dict)
    hostile_connections: int = 0
    hostile_closed_by_proxy: int = 0
    hostile_lifetime_s: dict[str, float] = field(default_factory=dict)
    closed_total: dict[str, float] = field(default_factory=dict)


def _quantiles(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1] * scale, 2)}


async def _legit(url: str, stop: asyncio.Event, latencies: list[float], errors: list[str]) -> None:
    headers = {"x-sim-first-byte-ms": "50"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.post(url, json=CHAT, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors.append(str(resp.status))
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(type(exc).__name__)
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client() for _ in range(16)))


async def _loris(
    port: int, stop: asyncio.Event, lifetimes: list[float], counts: dict[str, int]
) -> None:
    """One attacker slot: connect, trickle a byte every 10 s, reconnect when closed."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 4096
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        counts["connections"] += 1
        opened = time.monotonic()
        read = asyncio.ensure_future(reader.read())
        stopped = asyncio.ensure_future(stop.wait())
        sent = 0
        try:
            while not stop.is_set() and not read.done():
                with contextlib.suppress(ConnectionError):
                    writer.write(head[sent : sent + 1])
                sent += 1
                await asyncio.wait({read, stopped}, timeout=10, return_when="FIRST_COMPLETED")
            if read.done():
                counts["closed_by_proxy"] += 1
                lifetimes.append(time.monotonic() - opened)
        finally:
            read.cancel()
            stopped.cancel()
            writer.close()


async def _attack(port: int, sockets: int, seconds: float) -> dict[str, object]:
    """The attacker, run in its own process so its churn does not slow the load generator's
    event loop (which would show up as proxy latency)."""
    stop = asyncio.Event()
    lifetimes: list[float] = []
    counts = {"connections": 0, "closed_by_proxy": 0}
    slots = []
    for start in range(0, sockets, 100):  # 100 at a time: the listen backlog is 1,024
        slots += [
            asyncio.create_task(_loris(port, stop, lifetimes, counts))
            for _ in range(min(100, sockets - start))
        ]
        await asyncio.sleep(0.1)
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*slots)
    return {**counts, "lifetime_s": _quantiles(lifetimes)}


def _closed_total(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^promptproxy_connections_closed_total\{port="data",reason="(\w+)"\} (\S+)$',
            text,
            re.MULTILINE,
        )
    }


async def run_phase(
    name: str, fleet: Fleet, sim_url: str, config: str, attack: bool, seconds: float, sockets: int
) -> Result:
    port, admin, proc = start_proxy(fleet, name, sim_url, config)
    ps = psutil.Process(proc.pid)
    result = Result(name)
    fds = [ps.num_fds()]
    stop = asyncio.Event()
    latencies: list[float] = []
    errors: list[str] = []
    tasks = [
        asyncio.create_task(
            _legit(f"http://127.0.0.1:{port}/v1/chat/completions", stop, latencies, errors)
        )
    ]
    attacker = None
    if attack:
        attacker = fleet.start(
            f"{name}-attacker",
            [sys.executable, "-m", "loadtest.slowloris", "--attack-port", str(port),
             "--sockets", str(sockets), "--seconds", str(seconds)],
        )  # fmt: skip
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        fds.append(ps.num_fds())
    stop.set()
    await asyncio.gather(*tasks)
    if attacker is not None:
        await asyncio.to_thread(attacker.wait, 60)
        found = json.loads(attacker.stdout_path.read_text())
        result.hostile_connections = found["connections"]
        result.hostile_closed_by_proxy = found["closed_by_proxy"]
        result.hostile_lifetime_s = found["lifetime_s"]
        fleet.stop(attacker)
    await asyncio.sleep(1)
    result.requests = len(latencies)
    result.errors = len(errors)
    result.latency_ms = _quantiles(latencies, 1000)
    result.proxy_fds = {"start": fds[0], "peak": max(fds), "after": ps.num_fds()}
    result.closed_total = _closed_total(admin)
    fleet.stop(proc)
    return result


def _table(results: list[Result]) -> str:
    lines = [
        "phase                requests errors  p50/p90/p99 ms           fds start/peak/after"
        "  hostile conns / closed   lifetime p50/max s   closed_total"
    ]
    for r in results:
        q = r.latency_ms
        lat = " / ".join(f"{q.get(k, float('nan')):.1f}" for k in ("p50", "p90", "p99"))
        fds = "/".join(str(r.proxy_fds.get(k)) for k in ("start", "peak", "after"))
        life = r.hostile_lifetime_s
        lt = f"{life['p50']:.1f} / {life['max']:.1f}" if life else "-"
        lines.append(
            f"{r.phase:<20} {r.requests:>8} {r.errors:>6}  {lat:<24} {fds:<21} "
            f"{r.hostile_connections:>7} / {r.hostile_closed_by_proxy:<10} {lt:<20} "
            f"{json.dumps(r.closed_total)}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    nofile = raise_nofile_limit()
    results: list[Result] = []
    with fleet_with_simulator("slowloris-") as (fleet, sim_url):
        for name, (config, attack) in PHASES.items():
            result = await run_phase(
                name, fleet, sim_url, config, attack, args.seconds, args.sockets
            )
            results.append(result)
            print(_table([result]).splitlines()[-1], flush=True)
    print()
    print(_table(results))
    scenario = {"sockets": args.sockets, "seconds": args.seconds, "legit_clients": 16}
    write_results(RESULTS, nofile, scenario, [asdict(r) for r in results])
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--attack-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack_port:
        raise_nofile_limit()
        print(json.dumps(asyncio.run(_attack(args.attack_port, args.sockets, args.seconds))))
        return
    sys.exit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
