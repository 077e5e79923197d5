"""promptproxy benchmark: one command, four targets, three scenarios, one JSON file.

    python -m loadtest.bench            # full run, about 7 minutes on 2 cores
    python -m loadtest.bench --soak     # 100k requests through promptproxy, RSS drift (~1 min)

The target under test (promptproxy, with or without swap-in, or the minimal pass-through) runs
pinned to one core; the simulated provider and the load generator (this process) share
the other, so both proxies are measured on equal terms in the same run. Each proxy cell
gets a fresh process, so its peak RSS is its own. CPU time is read from the target process
around the measured phase only (after a warm-up, with a short settle on both sides so the
log writer thread has flushed), and divided by the measured requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python loadtest/bench.py`: make the `loadtest` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import psutil

from loadtest import (
    aggregate,
    online_judging,
    peers,
    report,
    shadow_isolation,
    tracing_bench,
    workers,
    wrk,
)
from loadtest.loadgen import LoadGenerator, chat_request, summarize_ms
from loadtest.measure import (
    SETTLE_S,
    BenchError,
    Cell,
    CellConfig,
    access_log_lines,
    count_events,
    measure_cell,
)
from loadtest.procs import REPO_ROOT, Fleet, StartError
from loadtest.scenarios import BY_NAME
from loadtest.targets import (
    BASELINE_SWAP,
    BASELINES,
    DIRECT,
    LITELLM,
    NGINX,
    OURS,
    PEERS,
    PROMPTPROXY,
    PROMPTPROXY_CLAUDE,
    PROMPTPROXY_SWAP,
    ROLLOUTS,
    TARGETS,
    Running,
    start_minimal,
    start_promptproxy,
    start_simulator,
)

RESULTS_DIR = REPO_ROOT / "loadtest" / "results"


@dataclass(frozen=True, slots=True)
class Pinning:
    target: int | None
    load: int | None
    note: str

    @property
    def target_cores(self) -> set[int] | None:
        return None if self.target is None else {self.target}


def pin_self(target_core: int, load_core: int) -> Pinning:
    """Pin this process (load generator) before it starts anything: children inherit it."""
    available = os.sched_getaffinity(0)
    if target_core == load_core or not {target_core, load_core} <= available:
        return Pinning(None, None, f"not pinned: need two distinct cores of {sorted(available)}")
    os.sched_setaffinity(0, {load_core})
    return Pinning(
        target_core,
        load_core,
        f"target on core {target_core}; simulator and load generator on core {load_core}",
    )


def _round_order(targets: list[str], round_: int) -> list[str]:
    """Direct first; the proxies swap places every round so neither always goes first."""
    proxies = [t for t in targets if t != DIRECT]
    if round_ % 2:
        proxies.reverse()
    return [DIRECT, *proxies] if DIRECT in targets else proxies


def _start_target(
    name: str,
    fleet: Fleet,
    sim: Running,
    pinning: Pinning,
    label: str,
    baseline_dir: Path | None = None,
    available_peers: dict[str, peers.Peer] | None = None,
) -> Running:
    if name in PEERS:
        assert available_peers is not None
        start = peers.start_nginx if name == NGINX else peers.start_litellm
        return start(fleet, available_peers[name], sim.base_url, pinning.target_cores, label)
    if name in BASELINES:
        assert baseline_dir is not None
        return start_promptproxy(
            fleet,
            sim.base_url,
            pinning.target_cores,
            label,
            swap=name == BASELINE_SWAP,
            source=baseline_dir,
            name=name,
        )
    if name in OURS:
        return start_promptproxy(
            fleet,
            sim.base_url,
            pinning.target_cores,
            label,
            swap=name == PROMPTPROXY_SWAP,
            rollout=ROLLOUTS.get(name),
            anthropic=name == PROMPTPROXY_CLAUDE,
        )
    return start_minimal(fleet, sim.base_url, pinning.target_cores, label)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _cell_config(args: argparse.Namespace, pinning: Pinning) -> CellConfig:
    return CellConfig(
        clients=args.clients,
        warmup=args.warmup,
        requests=args.requests,
        max_seconds=args.max_seconds,
        target_core=pinning.target,
        load_core=pinning.load,
    )


def checkout_baseline(revision: str, into: Path) -> str:
    """The tree of ``revision`` (any git revision) extracted into ``into``; its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", full], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return full


def _budget(args: argparse.Namespace, name: str) -> float | None:
    """LiteLLM is ~50x slower than the others: its measured phases get a time budget."""
    return args.litellm_seconds if name == LITELLM and args.litellm_seconds > 0 else None


async def run_bench(args: argparse.Namespace, fleet: Fleet, pinning: Pinning) -> dict[str, Any]:
    cfg = _cell_config(args, pinning)
    if args.wrk_binary is not None:
        cfg = dataclasses.replace(cfg, wrk=args.wrk_binary)
    baseline_dir: Path | None = None
    baseline_revision: str | None = None
    if args.baseline:
        baseline_dir = fleet.log_dir / "baseline-src"
        baseline_revision = checkout_baseline(args.baseline, baseline_dir)
        _progress(f"baseline {baseline_revision[:12]} extracted to {baseline_dir}")
    sim = start_simulator(fleet, None)  # inherits this process's core
    scenarios = [BY_NAME[s] for s in args.scenarios]
    expected = {
        s.name: await count_events(sim.base_url + "/chat/completions", s) for s in scenarios
    }
    runs: list[Cell] = []
    for round_ in range(args.rounds):
        for scenario in scenarios:
            for name in _round_order(args.targets, round_):
                label = f"r{round_}-{scenario.name}-{name}"
                if name == DIRECT:
                    cell = await measure_cell(scenario, None, sim, cfg, expected[scenario.name])
                else:
                    target = _start_target(
                        name, fleet, sim, pinning, label, baseline_dir, args.available_peers
                    )
                    try:
                        cell = await measure_cell(
                            scenario,
                            target,
                            sim,
                            cfg,
                            expected[scenario.name],
                            budget_s=_budget(args, name),
                        )
                    finally:
                        fleet.stop(target.proc)
                cell["round"] = round_
                runs.append(cell)
                cpu = aggregate.value(cell, "cpu_us_per_req", "target")
                p50 = aggregate.value(cell, "latency_ms", "p50")
                _progress(
                    f"{label}: {cell['rps']:.0f} req/s, {cell['errors']} errors"
                    + ("" if p50 is None else f", p50 {p50:.2f} ms")
                    + ("" if cpu is None else f", {cpu:.0f} us/req")
                )
    aggregate.add_deltas(runs)
    cells = aggregate.combine(runs)
    return {
        "scenarios": {s.name: s.description for s in scenarios},
        "requests_per_cell": {s.name: s.requests(args.requests) for s in scenarios},
        "cells": cells,
        "cpu_ratio_promptproxy_vs_minimal": aggregate.cpu_ratios(cells),
        "swap_in_cost": aggregate.swap_in_cost(cells),
        "translation_cost": aggregate.translation_cost(cells),
        "rollout_cost": aggregate.rollout_cost(cells),
        **(
            {}
            if baseline_revision is None
            else {
                "baseline": {
                    "revision": baseline_revision,
                    "change": aggregate.baseline_change(cells),
                }
            }
        ),
        **({"peers": aggregate.peer_comparison(cells)} if args.available_peers else {}),
        **({"request_budgets": aggregate.request_budgets(runs)} if _has_budget(runs) else {}),
        "checks": [*report.bench_checks(cells, args.clients), report.access_log_check(runs)],
        "runs": runs,
    }


def _has_budget(runs: list[Cell]) -> bool:
    return any("request_budget" in r for r in runs)


async def run_soak(args: argparse.Namespace, fleet: Fleet, pinning: Pinning) -> dict[str, Any]:
    """Drive promptproxy with many requests; sample its RSS after every step. The swap-in
    path by default: it is the one that keeps something per request (the feedback index)."""
    sim = start_simulator(fleet, None)
    target = start_promptproxy(
        fleet,
        sim.base_url,
        pinning.target_cores,
        f"soak-{args.soak_target}",
        swap=args.soak_target == PROMPTPROXY_SWAP,
    )
    spec = chat_request(
        target.base_url + "/chat/completions",
        stream=False,
        extra_headers=BY_NAME["nonstream_0ms"].sim_headers,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.soak_max_seconds
    points: list[dict[str, Any]] = []
    done = errors = 0
    cpu_before = target.proc.cpu_seconds()
    async with LoadGenerator(spec, clients=args.clients) as gen:
        while done < args.soak_requests and (remaining := deadline - loop.time()) > 0:
            step = await gen.run(
                min(args.soak_step, args.soak_requests - done), max_seconds=remaining
            )
            done += step.completed
            errors += step.errors
            await asyncio.sleep(SETTLE_S)
            target.proc.check_alive()
            latency = summarize_ms(step.latencies_s) or {}
            points.append(
                {
                    "requests": done,
                    "rss_mib": target.proc.rss_mib(),
                    "rps": step.rps,
                    "p50_ms": latency.get("p50"),
                    "p99_ms": latency.get("p99"),
                    "errors": step.errors,
                }
            )
            _progress(
                f"soak: {done} requests, RSS {points[-1]['rss_mib']:.1f} MiB, {step.rps:.0f} req/s"
            )
            if step.stopped_early:
                break
    cpu_s = target.proc.cpu_seconds() - cpu_before
    first = next((p for p in points if p["requests"] >= args.soak_step), None)
    last = points[-1] if points and done >= args.soak_requests else None
    drift = None
    if first is not None and last is not None and first is not last:
        drift = (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"] * 100
    soak = {
        "target": args.soak_target,
        "clients": args.clients,
        "requested": args.soak_requests,
        "completed": done,
        "errors": errors,
        "points": points,
        "rss_first_step_mib": None if first is None else first["rss_mib"],
        "rss_last_mib": None if last is None else last["rss_mib"],
        "drift_pct": drift,
        "peak_rss_mib": target.proc.peak_rss_mib(),
        "cpu_us_per_req": cpu_s / done * 1e6 if done else None,
        "access_log_lines": access_log_lines(target.proc),
    }
    return {"soak": soak, "checks": report.soak_checks(soak)}


# --- the command ------------------------------------------------------------------------


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+uncommitted proxy/ changes" if dirty else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_facts(
    args: argparse.Namespace, pinning: Pinning, started: dt.datetime
) -> dict[str, Any]:
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "command": " ".join(sys.orig_argv),
        "cwd": os.getcwd(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "orjson": orjson.__version__,
        "git": _git_revision(),
        "pinning": pinning.note,
        "clients": args.clients,
        "warmup_requests": args.warmup,
        "requests_arg": args.requests,
        "rounds": args.rounds,
        "loadavg_at_end": os.getloadavg(),
        **_tool_facts(args),
    }


def _tool_facts(args: argparse.Namespace) -> dict[str, Any]:
    """The peers and wrk, when this run used them (a run without them records as before)."""
    facts: dict[str, Any] = {}
    if getattr(args, "wrk_binary", None) is not None:
        facts["loadgen"] = {"name": "wrk", "path": args.wrk_binary, "version": args.wrk_version}
    if getattr(args, "available_peers", None):
        facts["peers"] = {name: p.describe() for name, p in args.available_peers.items()}
    if getattr(args, "skipped_peers", None):
        facts["skipped_targets"] = args.skipped_peers
    return facts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="measured requests per cell and round (nonstream_0ms sends 4x as many)",
    )
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests per cell")
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeat every cell; the median is reported"
    )
    parser.add_argument(
        "--scenarios", nargs="+", choices=list(BY_NAME), default=list(BY_NAME), metavar="NAME"
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=(*TARGETS, *PEERS),
        default=list(TARGETS),
        help="nginx and litellm are peers: see --peers",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="add nginx and litellm to the targets; a peer whose tool is missing is skipped",
    )
    parser.add_argument(
        "--nginx", metavar="PATH", help="the nginx binary (default: nginx on PATH); adds nginx"
    )
    parser.add_argument(
        "--litellm-venv",
        metavar="PATH",
        type=Path,
        help="a venv with `pip install 'litellm[proxy]'`; adds litellm",
    )
    parser.add_argument(
        "--litellm-seconds",
        type=float,
        default=20.0,
        help="litellm's measured requests per cell: its warm-up req/s x this (at most "
        "--requests; 0: no cap)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("python", "wrk"),
        default="python",
        help="wrk (if installed) instead of loadtest/loadgen.py; wrk measures no TTFB",
    )
    parser.add_argument("--wrk", metavar="PATH", help="the wrk binary (default: wrk on PATH)")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run promptproxy and promptproxy_swap as they were at git revision REV "
        "(e.g. HEAD~1), in the same run, and report the change",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=180.0, help="time limit of one load phase"
    )
    parser.add_argument("--target-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--soak", action="store_true", help="run only the RSS soak")
    parser.add_argument(
        "--shadow-isolation",
        action="store_true",
        help="run only the shadow isolation check (faulty shadow upstream vs shadow off)",
    )
    parser.add_argument(
        "--online-judging",
        action="store_true",
        help="run only the online judging check (10 %% of answers judged vs judging off)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="run only the tracing cost check: no tracing code (--baseline, default the "
        "commit before tracing), tracing off, tracing on (nonstream_0ms)",
    )
    parser.add_argument(
        "--workers",
        action="store_true",
        help="run only serve --workers 2 against 1 worker on Redis (nonstream_0ms, unpinned)",
    )
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--soak-step", type=int, default=10_000, help="RSS sampled every N")
    parser.add_argument("--soak-max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--soak-target",
        choices=(PROMPTPROXY_SWAP, PROMPTPROXY),
        default=PROMPTPROXY_SWAP,
        help="the path the soak drives (default: prompt swap-in on every request)",
    )
    parser.add_argument("--output", type=Path, help="JSON result file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_DIR / (
            "soak-latest.json"
            if args.soak
            else "online-judging.json"
            if args.online_judging
            else "tracing.json"
            if args.tracing
            else "workers.json"
            if args.workers
            else "latest.json"
        )
    if args.baseline and not args.tracing:
        # Each compared target of this tree gets its twin at the baseline revision.
        args.targets += [old for old, new in BASELINES.items() if new in args.targets]
    if DIRECT not in args.targets and not (
        args.soak or args.shadow_isolation or args.online_judging or args.tracing or args.workers
    ):
        parser.error("--targets must include direct: added latency is measured against it")
    wanted = [p for p in PEERS if p in args.targets]
    if args.peers:
        wanted = list(PEERS)
    if args.nginx and NGINX not in wanted:
        wanted.append(NGINX)
    if args.litellm_venv and LITELLM not in wanted:
        wanted.append(LITELLM)
    args.targets = [t for t in args.targets if t not in PEERS] + wanted
    args.available_peers = {}
    args.skipped_peers = {}
    args.wrk_binary = args.wrk_version = None
    return args


def resolve_tools(args: argparse.Namespace) -> None:
    """Find the peers and wrk that were asked for; drop (with one line each) what is missing."""
    if args.soak or args.shadow_isolation or args.online_judging or args.tracing or args.workers:
        return
    for name in [t for t in args.targets if t in PEERS]:
        found = peers.resolve(name, nginx=args.nginx, litellm_venv=args.litellm_venv)
        if isinstance(found, str):
            args.skipped_peers[name] = found
            args.targets.remove(name)
            _progress(f"{name}: skipped: {found}")
        else:
            args.available_peers[name] = found
            _progress(f"{name}: {found.version or 'version unknown'} at {found.path}")
    if args.loadgen == "wrk":
        binary = wrk.find_wrk(args.wrk)
        if binary is None:
            _progress(
                f"wrk: {args.wrk or 'wrk'} not found (apt-get install wrk); "
                "using the Python load generator"
            )
        else:
            args.wrk_binary, args.wrk_version = binary, wrk.wrk_version(binary)
            _progress(f"load generator: {args.wrk_version or 'wrk'} at {binary}")


def print_report(result: dict[str, Any]) -> None:
    meta = result["meta"]
    print(f"\npromptproxy benchmark, {meta['date']}, {meta['cpu_model']}, nproc {meta['nproc']}")
    print(f"{meta['pinning']}; {meta['clients']} clients")
    if "shadow_isolation" in result:
        print(shadow_isolation.isolation_table(result["shadow_isolation"]))
        return
    if "online_judging" in result:
        print(online_judging.judging_table(result["online_judging"]) + "\n")
        print(report.checks_table(result["checks"]))
        return
    if "tracing" in result:
        print(tracing_bench.tracing_table(result) + "\n")
        print(report.checks_table(result["checks"]))
        return
    if "workers" in result:
        print(workers.workers_table(result["workers"]) + "\n")
        print(report.checks_table(result["checks"]))
        return
    if "cells" in result:
        counts = ", ".join(f"{k} {v}" for k, v in result["requests_per_cell"].items())
        print(f"median of {meta['rounds']} rounds; measured requests per round: {counts}")
        for line in report.tool_lines(meta, result.get("request_budgets")):
            print(line)
        print()
        print(report.latency_table(result["cells"]) + "\n")
        print(report.resource_table(result["cells"]) + "\n")
        if result.get("peers"):
            print(report.peers_table(result["cells"]) + "\n")
        if result["swap_in_cost"]:
            print(report.swap_in_table(result["swap_in_cost"]) + "\n")
        if result.get("translation_cost"):
            print(report.translation_table(result["translation_cost"]) + "\n")
        if result.get("rollout_cost"):
            print(report.rollout_table(result["rollout_cost"]) + "\n")
        if result.get("baseline"):
            baseline = result["baseline"]
            print(report.baseline_table(baseline["revision"][:12], baseline["change"]) + "\n")
        noisy = report.disturbed_cells(result["runs"])
        if noisy:
            print(f"warning: other load on our cores during {', '.join(noisy)}\n")
    if "soak" in result:
        soak = result["soak"]
        print(report.soak_table(soak) + "\n")
        drift = soak["drift_pct"]
        print(
            f"RSS drift {'-' if drift is None else f'{drift:+.2f}'} %, peak RSS "
            f"{soak['peak_rss_mib']:.1f} MiB, {soak['cpu_us_per_req']:.0f} us CPU/request, "
            f"{soak['access_log_lines']} access-log lines\n"
        )
    print(report.checks_table(result["checks"]))


async def _run(args: argparse.Namespace, fleet: Fleet, pinning: Pinning) -> dict[str, Any]:
    if args.soak:
        return await run_soak(args, fleet, pinning)
    if args.shadow_isolation:
        return await shadow_isolation.run_shadow_isolation(
            args, fleet, pinning.target_cores, _cell_config(args, pinning)
        )
    if args.online_judging:
        return await online_judging.run_online_judging(
            args, fleet, pinning.target_cores, _cell_config(args, pinning)
        )
    if args.tracing:
        return await tracing_bench.run_tracing(
            args, fleet, pinning.target_cores, _cell_config(args, pinning), checkout_baseline
        )
    if args.workers:
        return await workers.run_workers(args, fleet, _cell_config(args, pinning))
    return await run_bench(args, fleet, pinning)


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = parse_args(argv)
    resolve_tools(args)
    started = dt.datetime.now(dt.UTC)
    pinning = (
        # Two workers are meant to use both cores: nothing is pinned, shares are reported.
        Pinning(None, None, "not pinned: the proxy, simulator and load generator share the cores")
        if args.workers
        else pin_self(args.target_core, args.load_core)
    )
    # A plain `kill` must also reach the `finally` blocks that stop the children.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="promptproxy-bench-"))
    keep_logs = args.keep_logs
    try:
        with Fleet(log_dir) as fleet:
            result = uvloop.run(_run(args, fleet, pinning))
    except (StartError, BenchError) as exc:
        keep_logs = True
        print(f"error: {exc}\n(process logs kept in {log_dir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130
    finally:
        if not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    result = {"meta": machine_facts(args, pinning, started), **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )
    print_report(result)
    print(f"\nresults written to {args.output}")
    if args.keep_logs:
        print(f"process logs in {log_dir}")
    failed = any(c["name"].startswith("failed requests") and not c["met"] for c in result["checks"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
