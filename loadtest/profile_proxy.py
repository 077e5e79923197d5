"""Where does a proxy's CPU time per request go? py-spy under the benchmark's load.

    python -m loadtest.profile_proxy --target promptproxy --scenario stream_20x5ms

Starts the simulator and the target (pinned like in the benchmark) under
``py-spy record --gil``, sends warm-up plus measured requests, stops the target so py-spy
writes its samples, and prints the functions with the most CPU time per request, by self
time and inclusive time. ``--gil`` keeps only samples where a thread held the GIL, i.e.
Python work; a sampling profiler also slows the target, so compare targets profiled the
same way rather than reading the figures as absolute costs. py-spy is not a dependency:
``pip install --target /tmp/tools py-spy`` and pass ``--py-spy /tmp/tools/bin/py-spy``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python loadtest/profile_proxy.py`: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import collections
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable

import psutil

from loadtest.loadgen import LoadGenerator, chat_request
from loadtest.procs import Fleet, StartError
from loadtest.scenarios import BY_NAME
from loadtest.targets import (
    MINIMAL,
    PROMPTPROXY,
    PROMPTPROXY_CLAUDE,
    Running,
    start_minimal,
    start_promptproxy,
    start_simulator,
)

_LINE_NO = re.compile(r":\d+\)$")
# Frames of module imports: start-up cost, not per-request cost.
_STARTUP = ("<module>", "_find_and_load", "_call_with_frames_removed")


def read_collapsed(path: Path) -> Iterable[tuple[list[str], int]]:
    """``py-spy --format raw`` lines: ``frame;frame;...;frame count``, outermost first."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield [_LINE_NO.sub(")", f) for f in stack.split(";")], int(count)


def per_request(
    path: Path, rate: int, requests: int, main_module: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Self and inclusive microseconds per request for every function."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for frames, count in read_collapsed(path):
        if any(s in f and main_module not in f for f in frames for s in _STARTUP):
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    scale = 1e6 / rate / requests
    return (
        {f: c * scale for f, c in own.items()},
        {f: c * scale for f, c in total.items()},
    )


def print_top(title: str, values: dict[str, float], limit: int, only: str | None = None) -> None:
    print(f"\n{title}")
    rows = sorted(values.items(), key=lambda kv: -kv[1])
    shown = 0
    for frame, us in rows:
        if only is not None and not re.search(only, frame):
            continue
        print(f"{us:9.1f} us/req  {frame}")
        shown += 1
        if shown >= limit:
            break


def _stop_profiled(target: Running) -> None:
    """SIGTERM the profiled interpreter only: py-spy then writes its file and exits."""
    for child in psutil.Process(target.proc.pid).children(recursive=True):
        child.send_signal(signal.SIGTERM)
    if target.proc.wait(60) is None:
        raise StartError("py-spy did not exit within 60 s after its target stopped")


async def profile(args: argparse.Namespace, fleet: Fleet, out: Path) -> int:
    scenario = BY_NAME[args.scenario]
    sim = start_simulator(fleet, None)
    wrapper = [
        args.py_spy, "record", "--gil", "--format", "raw", "--rate", str(args.rate),
        "--output", str(out), "--",
    ]  # fmt: skip
    label, cores = f"profiled-{args.target}", {args.target_core}
    if args.target == MINIMAL:
        target = start_minimal(fleet, sim.base_url, cores, label, wrapper)
    else:
        anthropic = args.target == PROMPTPROXY_CLAUDE
        target = start_promptproxy(fleet, sim.base_url, cores, label, wrapper, anthropic=anthropic)
    spec = chat_request(
        target.base_url + "/chat/completions",
        stream=scenario.stream,
        extra_headers=scenario.sim_headers,
        model=target.model,
    )
    async with LoadGenerator(spec, clients=args.clients) as gen:
        warm = await gen.run(args.warmup, max_seconds=args.max_seconds)
        phase = await gen.run(args.requests, max_seconds=args.max_seconds)
    _stop_profiled(target)
    if warm.errors or phase.errors:
        print(f"warning: {warm.errors + phase.errors} requests failed", file=sys.stderr)
    return warm.completed + phase.completed


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", choices=(PROMPTPROXY, PROMPTPROXY_CLAUDE, MINIMAL), default=PROMPTPROXY
    )
    parser.add_argument("--scenario", choices=list(BY_NAME), default="nonstream_0ms")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    parser.add_argument("--output", type=Path, help="keep the collapsed stacks here")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--target-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.py_spy:
        parser.error("py-spy not found: pip install --target /tmp/tools py-spy, then --py-spy")
    if {args.target_core, args.load_core} <= os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.load_core})
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="promptproxy-profile-"))
    out = args.output or log_dir / "stacks.txt"
    try:
        with Fleet(log_dir) as fleet:
            requests = uvloop.run(profile(args, fleet, out))
    except StartError as exc:
        print(f"error: {exc}\n(logs in {log_dir})", file=sys.stderr)
        return 2
    main_module = "minimal_proxy.py" if args.target == MINIMAL else "proxy/__main__.py"
    own, total = per_request(out, args.rate, requests, main_module)
    print(f"{args.target}, {args.scenario}: {requests} requests, GIL-holding samples")
    print(f"total {sum(own.values()):.0f} us/req (profiler overhead included)")
    print_top("self time", own, args.top)
    print_top("inclusive time, proxy code", total, args.top, r"proxy/|loadtest/|logging|prometheus")
    if args.output is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
