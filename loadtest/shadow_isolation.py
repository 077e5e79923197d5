"""`python -m loadtest.bench --shadow-isolation`: does a faulty shadow upstream hurt callers?

The same load (16 keep-alive clients, the provider answering in 50 ms) against promptproxy
with prompt swap-in and no rollout, and against promptproxy with a 100 % shadow rollout whose
shadow upstream is 10 s slow, refuses connections, or answers 500. Goal (reliability guide
S1): primary p99 within 5 % + 5 ms of shadow off, and no failed request. Rounds interleave
the targets so drift on the machine hits all of them alike.
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtest import aggregate
from loadtest.measure import Cell, CellConfig, measure_cell
from loadtest.procs import Fleet, free_ports
from loadtest.scenarios import BY_NAME
from loadtest.targets import PROMPTPROXY_SWAP, Running, start_promptproxy, start_simulator

SCENARIO = "nonstream_50ms"
FAULTS = ("shadow_slow_10s", "shadow_refused", "shadow_500")


def _p99(cell: Cell | None) -> float | None:
    return None if cell is None else aggregate.value(cell, "latency_ms", "p99")


async def run_shadow_isolation(
    args: argparse.Namespace, fleet: Fleet, cores: set[int] | None, cfg: CellConfig
) -> dict[str, Any]:
    sim = start_simulator(fleet, None)
    slow = start_simulator(fleet, None, "--first-byte-ms", "10000", label="simulator-slow")
    (closed,) = free_ports(1)
    shadow_urls = {
        "shadow_slow_10s": (slow.base_url, None),
        "shadow_refused": (f"http://127.0.0.1:{closed}/v1", None),
        # The simulator answers 500 to this model; only the candidate (the shadow) pins it.
        "shadow_500": (sim.base_url, "sim-status-500"),
    }
    scenario = BY_NAME[SCENARIO]
    runs: list[Cell] = []
    for round_ in range(args.rounds):
        order = [PROMPTPROXY_SWAP, *FAULTS]
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for name in order:
            label = f"r{round_}-isolation-{name}"
            if name == PROMPTPROXY_SWAP:
                target = start_promptproxy(fleet, sim.base_url, cores, label, swap=True)
            else:
                url, model = shadow_urls[name]
                target = start_promptproxy(
                    fleet,
                    sim.base_url,
                    cores,
                    label,
                    rollout=("shadow", 100.0),
                    shadow_url=url,
                    candidate_model=model,
                )
            target = Running(name, target.base_url, target.proc)
            try:
                cell = await measure_cell(scenario, target, sim, cfg, None)
            finally:
                fleet.stop(target.proc)
            cell["round"] = round_
            runs.append(cell)
            print(
                f"{label}: {cell['rps']:.0f} req/s, {cell['errors']} errors, "
                f"p99 {_p99(cell) or 0:.2f} ms",
                flush=True,
            )
    cells = aggregate.combine(runs, (PROMPTPROXY_SWAP, *FAULTS))
    base = _p99(aggregate.find(cells, SCENARIO, PROMPTPROXY_SWAP))
    verdicts = []
    for fault in FAULTS:
        cell = aggregate.find(cells, SCENARIO, fault)
        p99 = _p99(cell)
        limit = None if base is None else base * 1.05 + 5.0
        verdicts.append(
            {
                "fault": fault,
                "p99_ms": p99,
                "p99_shadow_off_ms": base,
                "limit_ms": limit,
                "errors": None if cell is None else cell["errors"],
                "met": None if p99 is None or limit is None else p99 <= limit,
            }
        )
    checks = [
        {
            "name": f"primary p99 ms with {v['fault']}",
            "value": v["p99_ms"],
            "limit": v["limit_ms"],
            "met": v["met"],
        }
        for v in verdicts
    ]
    errors = sum(c["errors"] for c in cells)
    checks.append(
        {"name": "failed requests, all cells", "value": errors, "limit": 0, "met": errors == 0}
    )
    return {"shadow_isolation": verdicts, "checks": checks, "cells": cells, "runs": runs}


def isolation_table(verdicts: list[dict[str, Any]]) -> str:
    lines = ["shadow isolation (primary p99 at 16 clients, provider 50 ms; limit 1.05 x off + 5)"]
    lines.append(f"{'fault':<18}{'p99 ms':>10}{'off ms':>10}{'limit':>10}{'errors':>8}  result")
    for v in verdicts:
        lines.append(
            f"{v['fault']:<18}{_fmt(v['p99_ms'])}{_fmt(v['p99_shadow_off_ms'])}"
            f"{_fmt(v['limit_ms'])}{v['errors'] if v['errors'] is not None else '-':>8}  "
            + ("MET" if v["met"] else "NOT MET" if v["met"] is False else "n/a")
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.2f}"
