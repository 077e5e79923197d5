"""`serve --workers 2` against one process, on Redis, at `nonstream_0ms` (``--workers``).

    python -m loadtest.bench --workers     # ~3 minutes on 2 cores

Both targets run on the same redis-server (started here on a free port): one worker is the
plain single process (`serve` without a supervisor), two workers are the supervisor and its
two workers. Nothing is pinned: two workers are meant to use both cores, so the load
generator and the simulator compete with them for the same two cores, and the figures say
how much of the cores each took. CPU per request is the whole process tree's (supervisor
and workers) user + system time over the measured requests. Both targets stay up for the
whole run and their measured phases alternate (which goes first changes every round); the
2-vs-1 ratio is taken round by round.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
from typing import Any

import aiohttp
import orjson

from loadtest import aggregate
from loadtest.measure import Cell, CellConfig, measure_cell
from loadtest.procs import Fleet, StartError, free_ports, http_ok, listening
from loadtest.scenarios import BY_NAME
from loadtest.targets import Running, start_simulator

SCENARIO = "nonstream_0ms"
ONE, TWO = "workers_1", "workers_2"
#: The issue's bar: CPU per request with 2 workers within 5 % of 1 worker.
CPU_LIMIT = 1.05


def start_redis(fleet: Fleet) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartError("redis-server is not on PATH (apt-get install redis-server)")
    (port,) = free_ports(1)
    proc = fleet.start(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    proc.wait_ready(listening(proc, port), 20)
    return f"redis://127.0.0.1:{port}/0"


def start_workers(fleet: Fleet, upstream: str, store: str, workers: int, label: str) -> Running:
    port, admin = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    proc = fleet.start(
        label,
        [
            sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--admin-port", str(admin), "--upstream", upstream,
            "--store", store, "--workers", str(workers), "--log-level", "INFO",
        ],
        env=env,
        include_children=True,
    )  # fmt: skip
    proc.wait_ready(http_ok(admin, "/readyz"), 30)
    return Running(
        ONE if workers == 1 else TWO, f"http://127.0.0.1:{port}/v1", proc, admin_port=admin
    )


async def per_worker_requests(admin_port: int | None) -> list[float]:
    """Requests each worker answered so far, read from its private admin socket."""
    assert admin_port is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp,
    ):
        ready = orjson.loads(await resp.read())
    counts = []
    for worker in ready["workers"]:
        connector = aiohttp.UnixConnector(path=worker["admin"])
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://worker/metrics") as resp,
        ):
            text = await resp.text()
        counts.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("promptproxy_requests_total{")
            )
        )
    return counts


async def run_workers(args: argparse.Namespace, fleet: Fleet, cfg: CellConfig) -> dict[str, Any]:
    scenario = BY_NAME[SCENARIO]
    sim = start_simulator(fleet, None)
    store = start_redis(fleet)
    cores = len(os.sched_getaffinity(0))
    if cores != 2:
        raise StartError(f"the workers comparison is written for 2 cores; this process has {cores}")
    # Nothing is pinned; the two "cores" only make measure_cell read both cores' busy time,
    # so what none of our processes used is known (its `foreign_pct`, summed).
    cell_config = dataclasses.replace(cfg, target_core=0, load_core=1)
    # Both targets run for the whole comparison and the measured phases alternate between
    # them: on a shared machine the CPU a request costs drifts from minute to minute, and
    # two phases seconds apart see the same drift.
    targets = {n: start_workers(fleet, sim.base_url, store, n, f"workers-{n}") for n in (1, 2)}
    runs: list[Cell] = []
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            target = targets[workers]
            load_before = os.getloadavg()[0]
            split_before = await per_worker_requests(target.admin_port) if workers > 1 else None
            cell = await measure_cell(scenario, target, sim, cell_config, None)
            if split_before is not None:
                split = await per_worker_requests(target.admin_port)
                pairs = zip(split, split_before, strict=True)
                # Warm-up included: which worker took the cell's connections.
                cell["per_worker_requests"] = [after - before for after, before in pairs]
            cell["round"] = round_
            elapsed = cell["elapsed_s"]
            shares = {
                who: cell["cpu_us_per_req"][who] * cell["ok"] / 1e6 / elapsed / cores
                for who in ("target", "simulator", "loadgen")
            }
            # Busy time of the cores none of our processes used (other programs, the kernel).
            foreign = cell["foreign_pct"]
            shares["others"] = (foreign["target_core"] + foreign["load_core"]) / 100 / cores
            cell["core_share"] = shares
            cell["loadavg_before"] = load_before
            runs.append(cell)
            print(
                f"r{round_}-workers-{workers}: {cell['rps']:.0f} req/s, {cell['errors']} errors, "
                f"{cell['cpu_us_per_req']['target']:.0f} us CPU/request (tree), cores: "
                f"proxy {shares['target']:.0%}, load generator {shares['loadgen']:.0%}, "
                f"simulator {shares['simulator']:.0%}, others {shares['others']:.0%}"
                + (
                    f"; per worker {cell['per_worker_requests']}"
                    if "per_worker_requests" in cell
                    else ""
                ),
                flush=True,
            )
    cells = aggregate.combine(runs, (ONE, TWO))
    ratios = _paired_cpu_ratios(runs)
    one, two = aggregate.find(cells, SCENARIO, ONE), aggregate.find(cells, SCENARIO, TWO)
    ratio = statistics.median(ratios) if ratios else None
    summary = {
        "scenario": SCENARIO,
        "cores": cores,
        "rps": {ONE: aggregate.value(one, "rps"), TWO: aggregate.value(two, "rps")},
        "cpu_us_per_req": {
            ONE: aggregate.value(one, "cpu_us_per_req", "target"),
            TWO: aggregate.value(two, "cpu_us_per_req", "target"),
        },
        "cpu_ratio_2_vs_1": ratio,
        "cpu_ratio_by_round": ratios,
        "core_share": {
            name: _median_shares([c for c in runs if c["target"] == name]) for name in (ONE, TWO)
        },
    }
    errors = sum(c["errors"] for c in cells)
    checks = [
        {
            "name": f"CPU per request, 2 workers / 1 worker, {SCENARIO}",
            "value": ratio,
            "limit": CPU_LIMIT,
            "met": None if ratio is None else ratio <= CPU_LIMIT,
            "minimal": None,
        },
        {
            "name": "failed requests, all cells",
            "value": errors,
            "limit": 0,
            "met": errors == 0,
            "minimal": None,
        },
    ]
    return {"workers": summary, "checks": checks, "cells": cells, "runs": runs}


def _paired_cpu_ratios(runs: list[Cell]) -> list[float]:
    """2 workers' CPU per request over 1 worker's, round by round (a shared VM's CPU cost
    drifts between minutes; within a round it mostly cancels)."""
    ratios = []
    for round_ in sorted({c["round"] for c in runs}):
        one = aggregate.find(runs, SCENARIO, ONE, round_)
        two = aggregate.find(runs, SCENARIO, TWO, round_)
        a = aggregate.value(one, "cpu_us_per_req", "target")
        b = aggregate.value(two, "cpu_us_per_req", "target")
        if a and b is not None:
            ratios.append(b / a)
    return ratios


def _median_shares(cells: list[Cell]) -> dict[str, float]:
    keys = cells[0]["core_share"].keys() if cells else ()
    return {k: statistics.median(c["core_share"][k] for c in cells) for k in keys}


def workers_table(summary: dict[str, Any]) -> str:
    shares = summary["core_share"]
    lines = [
        f"serve --workers, {summary['scenario']}, Redis store, {summary['cores']} cores shared "
        "by the proxy, the simulator and the load generator (medians over rounds)",
        f"  {'':10} {'req/s':>8} {'CPU us/req':>11} {'proxy':>7} {'loadgen':>8} "
        f"{'simulator':>10} {'others':>7}",
    ]
    for name in (ONE, TWO):
        share = shares[name]
        lines.append(
            f"  {name:10} {summary['rps'][name] or 0:8.0f} "
            f"{summary['cpu_us_per_req'][name] or 0:11.0f} {share.get('target', 0):7.0%} "
            f"{share.get('loadgen', 0):8.0%} {share.get('simulator', 0):10.0%} "
            f"{share.get('others', 0):7.0%}"
        )
    ratio = summary["cpu_ratio_2_vs_1"]
    lines.append(
        "  CPU per request, 2 workers / 1 worker: "
        + ("-" if ratio is None else f"{ratio:.3f}")
        + " (round by round: "
        + ", ".join(f"{r:.3f}" for r in summary["cpu_ratio_by_round"])
        + ")"
    )
    return "\n".join(lines)
