"""`python -m loadtest.bench --online-judging`: does judging 10 % of answers slow callers?

The same load (16 keep-alive clients, the provider answering in 50 ms, and a stream of 20
chunks 5 ms apart) against promptproxy with prompt swap-in and online judging off, and
with 10 % of the prompt's answers judged online by a judge prompt pinning the simulator's
`sim-judge`, whose calls go through the same proxy to the same simulator. Goal (issue 11):
primary p50 and p99 within 5 % + 5 ms of judging off, no failed request. Rounds interleave
the targets so drift on the machine hits both alike. The judging target's /metrics says
how many answers were scored, and dropped.
"""

from __future__ import annotations

import argparse
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtest import aggregate
from loadtest.measure import Cell, CellConfig, measure_cell
from loadtest.procs import Fleet
from loadtest.scenarios import BY_NAME
from loadtest.targets import Running, start_promptproxy, start_simulator

SCENARIOS = ("nonstream_50ms", "stream_20x5ms")
OFF, ON = "judging_off", "judging_10pct"
SHARE = 0.1


def _pct(cell: Cell | None, what: str, which: str) -> float | None:
    return None if cell is None else aggregate.value(cell, what, which)


def _judged(admin_port: int) -> dict[str, float]:
    """The judging target's ``promptproxy_online_judge_total`` by result."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "promptproxy_online_judge_total":
                found[sample.labels["result"]] = sample.value
    return found


async def run_online_judging(
    args: argparse.Namespace, fleet: Fleet, cores: set[int] | None, cfg: CellConfig
) -> dict[str, Any]:
    sim = start_simulator(fleet, None)
    runs: list[Cell] = []
    scenarios = [s for s in SCENARIOS if s in args.scenarios] or list(SCENARIOS)
    for round_ in range(args.rounds):
        for scenario_name in scenarios:
            scenario = BY_NAME[scenario_name]
            order = [OFF, ON] if round_ % 2 == 0 else [ON, OFF]
            for name in order:
                label = f"r{round_}-{scenario_name}-{name}"
                started = start_promptproxy(
                    fleet,
                    sim.base_url,
                    cores,
                    label,
                    swap=True,
                    online_judging=SHARE if name == ON else None,
                )
                target = Running(name, started.base_url, started.proc)
                try:
                    cell = await measure_cell(scenario, target, sim, cfg, None)
                    if name == ON and started.admin_port is not None:
                        cell["online_judge"] = _judged(started.admin_port)
                finally:
                    fleet.stop(started.proc)
                cell["round"] = round_
                runs.append(cell)
                judged = cell.get("online_judge", {})
                print(
                    f"{label}: {cell['rps']:.0f} req/s, {cell['errors']} errors, "
                    f"p50 {_pct(cell, 'latency_ms', 'p50') or 0:.2f} ms, "
                    f"p99 {_pct(cell, 'latency_ms', 'p99') or 0:.2f} ms"
                    + (f", judged {judged}" if judged else ""),
                    flush=True,
                )
    cells = aggregate.combine(runs, (OFF, ON))
    rows = []
    checks: list[dict[str, Any]] = []
    for scenario_name in scenarios:
        off = aggregate.find(cells, scenario_name, OFF)
        on = aggregate.find(cells, scenario_name, ON)
        judged_here = [
            c.get("online_judge", {})
            for c in runs
            if c["target"] == ON and c["scenario"] == scenario_name
        ]
        row: dict[str, Any] = {"scenario": scenario_name}
        for what, which in (("latency_ms", "p50"), ("latency_ms", "p99"), ("ttfb_ms", "p50")):
            key = f"{'ttfb' if what == 'ttfb_ms' else 'latency'}_{which}_ms"
            row[key] = {"off": _pct(off, what, which), "on": _pct(on, what, which)}
        row["cpu_us_per_req"] = {
            "off": _pct(off, "cpu_us_per_req", "target"),
            "on": _pct(on, "cpu_us_per_req", "target"),
        }
        row["errors"] = {
            "off": None if off is None else off["errors"],
            "on": None if on is None else on["errors"],
        }
        row["requests_per_round"] = None if on is None else on["requested"] // args.rounds
        # Counted from the process's start: its warm-up's answers are judged too.
        row["judged_per_round"] = judged_here
        rows.append(row)
        for which in ("p50", "p99"):
            pair = row[f"latency_{which}_ms"]
            limit = None if pair["off"] is None else pair["off"] * 1.05 + 5.0
            checks.append(
                {
                    "name": f"primary {which} ms, {scenario_name}, judging 10 %",
                    "value": pair["on"],
                    "limit": limit,
                    "met": None if pair["on"] is None or limit is None else pair["on"] <= limit,
                    "minimal": None,
                }
            )
    errors = sum(c["errors"] for c in cells)
    checks.append(
        {
            "name": "failed requests, all cells",
            "value": errors,
            "limit": 0,
            "met": errors == 0,
            "minimal": None,
        }
    )
    return {"online_judging": rows, "checks": checks, "cells": cells, "runs": runs}


def judging_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "online judging (16 clients; judging off vs 10 % judged by sim-judge through the "
        "same proxy; medians over rounds)"
    ]
    lines.append(
        f"{'scenario':<16}{'':>4}{'p50 ms':>9}{'p99 ms':>9}{'TTFB p50':>10}"
        f"{'CPU us/req':>12}{'errors':>8}  scored / queue_full per round"
    )
    for row in rows:
        for side in ("off", "on"):
            judged = (
                ", ".join(
                    f"{j.get('scored', 0):.0f}/{j.get('queue_full', 0):.0f}"
                    for j in row["judged_per_round"]
                )
                if side == "on"
                else ""
            )
            lines.append(
                f"{row['scenario'] if side == 'off' else '':<16}{side:>4}"
                f"{_fmt(row['latency_p50_ms'][side], 9)}{_fmt(row['latency_p99_ms'][side], 9)}"
                f"{_fmt(row['ttfb_p50_ms'][side], 10)}{_fmt(row['cpu_us_per_req'][side], 12, 0)}"
                f"{row['errors'][side] if row['errors'][side] is not None else '-':>8}  {judged}"
            )
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"
