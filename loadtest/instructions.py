"""User-space instructions per request of one target, counted by callgrind.

    python -m loadtest.instructions --target promptproxy_swap --scenario nonstream_0ms

A timed benchmark on a shared 2-core VM cannot resolve a change under ~10 %; an instruction
count can: callgrind counts what the process executes, not how long it took, so the figure
repeats to about 1 % whatever else the machine does. It misses what the kernel does and
what caches cost, so the timed benchmark stays the judge of the targets; this is for
comparing two versions of the code (run it on each). The target runs under
``valgrind --tool=callgrind`` with instrumentation off; after the warm-up it is switched on
(``callgrind_control -i on``) for the measured requests only, and the counts of all its
threads are summed. Needs valgrind (Debian's package); about 30-60 s per run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python loadtest/instructions.py`: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import shutil
import subprocess
import tempfile

from loadtest.loadgen import LoadGenerator, chat_request
from loadtest.procs import Fleet, StartError
from loadtest.scenarios import BY_NAME
from loadtest.targets import (
    BENCH_TENANT_HEADERS,
    MINIMAL,
    PROMPTPROXY,
    PROMPTPROXY_CLAUDE,
    PROMPTPROXY_SWAP,
    PROMPTPROXY_TENANTS,
    Running,
    start_minimal,
    start_promptproxy,
    start_simulator,
)

#: Python under valgrind starts 30-50 times slower.
START_TIMEOUT_S = 300.0


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


def total_instructions(out_prefix: Path) -> int:
    """The ``totals:`` of every part callgrind wrote (one per dump)."""
    total = 0
    for part in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in part.read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def _start(fleet: Fleet, target: str, upstream: str, wrapper: list[str]) -> Running:
    if target == MINIMAL:
        return start_minimal(fleet, upstream, None, wrapper=wrapper, ready_timeout=START_TIMEOUT_S)
    return start_promptproxy(
        fleet,
        upstream,
        None,
        f"counted-{target}",
        wrapper,
        swap=target == PROMPTPROXY_SWAP,
        tenants=target == PROMPTPROXY_TENANTS,
        anthropic=target == PROMPTPROXY_CLAUDE,
        ready_timeout=START_TIMEOUT_S,
    )


async def count(args: argparse.Namespace, fleet: Fleet) -> float:
    scenario = BY_NAME[args.scenario]
    sim = start_simulator(fleet, None)
    out = fleet.log_dir / "callgrind.out"
    wrapper = [
        args.valgrind, "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *(["--cache-sim=yes"] if args.cache_sim else []),
    ]  # fmt: skip
    target = _start(fleet, args.target, sim.base_url, wrapper)
    spec = chat_request(
        target.base_url + "/chat/completions",
        stream=scenario.stream,
        extra_headers={
            **scenario.sim_headers,
            **(BENCH_TENANT_HEADERS if args.target == PROMPTPROXY_TENANTS else {}),
        },
        model=target.model,
    )
    async with LoadGenerator(spec, clients=args.clients) as gen:
        warm = await gen.run(args.warmup, max_seconds=args.max_seconds)
        pid = str(target.proc.pid)
        _control("-i", "on", pid)
        phase = await gen.run(args.requests, max_seconds=args.max_seconds)
        _control("-i", "off", pid)
        _control("-d", pid)
    if warm.errors or phase.errors:
        raise StartError(f"{warm.errors + phase.errors} requests failed")
    return total_instructions(out) / phase.completed


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        choices=(PROMPTPROXY, PROMPTPROXY_CLAUDE, PROMPTPROXY_SWAP, PROMPTPROXY_TENANTS, MINIMAL),
        default=PROMPTPROXY,
    )
    parser.add_argument("--scenario", choices=list(BY_NAME), default="nonstream_0ms")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--valgrind", default=shutil.which("valgrind"))
    parser.add_argument(
        "--cache-sim", action="store_true", help="also simulate the caches (much slower)"
    )
    parser.add_argument(
        "--keep", type=Path, help="copy callgrind's output here, for callgrind_annotate"
    )
    args = parser.parse_args(argv)
    if args.valgrind is None or shutil.which("callgrind_control") is None:
        print("valgrind and callgrind_control are needed (Debian: valgrind)", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="promptproxy-instr-") as scratch,
        Fleet(Path(scratch)) as fleet,
    ):
        per_request = uvloop.run(count(args, fleet))
        if args.keep is not None:
            for part in fleet.log_dir.glob("callgrind.out*"):
                shutil.copy(part, args.keep)
    print(f"{args.target} {args.scenario}: {per_request / 1000:.1f} k instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
