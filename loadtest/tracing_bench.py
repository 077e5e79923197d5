"""`python -m loadtest.bench --tracing`: what do traces cost the request path?

Three builds of promptproxy under the same load (``nonstream_0ms``: the provider answers
at once, so the proxy's own work is all there is to measure), in one run, rounds
interleaved so drift on the machine hits all alike:

- ``no_tracing_code``: the tree as it was before tracing existed (the parent of the
  commit that added ``proxy/tracing``, or ``--baseline REV``), extracted and run as is;
- ``tracing_off``: this tree, ``tracing.enabled: false`` (the default);
- ``tracing_on``: this tree, every request traced (``sample_ratio: 1``: a SERVER and a
  CLIENT span each), exported over OTLP/HTTP to a receiver process on this machine
  (``tests/otlp_receiver.py``, which only reads what it is sent while the load runs).

Reported per build: throughput, p50/p99 latency and the proxy's CPU per request; for
``tracing_on``, the spans the receiver got against the two per request sent.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest import aggregate
from loadtest.measure import Cell, CellConfig, measure_cell
from loadtest.procs import REPO_ROOT, Fleet, ManagedProcess, StartError, free_ports, http_ok
from loadtest.scenarios import BY_NAME
from loadtest.targets import Running, _clean_env, start_promptproxy, start_simulator

SCENARIO = "nonstream_0ms"
NO_CODE, OFF, ON = "no_tracing_code", "tracing_off", "tracing_on"
BUILDS = (NO_CODE, OFF, ON)
_RECEIVER_URL = re.compile(r"otlp receiver listening on (http://\S+)")


def tracing_baseline() -> str:
    """The commit before tracing: the parent of the one that added ``proxy/tracing``."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "proxy/tracing/__init__.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise StartError("no commit adds proxy/tracing/__init__.py: give --baseline REV")
    return added[-1] + "^"


class Receiver:
    """``python -m tests.otlp_receiver`` as a process of its own."""

    def __init__(self, log_dir: Path) -> None:
        self._log = (log_dir / "otlp-receiver.log").open("w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp_receiver"],
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_url()

    def _wait_url(self) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self._log.seek(0)
            found = _RECEIVER_URL.search(self._log.read())
            if found:
                return found.group(1)
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        raise StartError("the OTLP receiver did not start (see otlp-receiver.log)")

    def spans(self) -> int:
        stats_url = self.url.rsplit("/v1/", 1)[0] + "/stats"
        with urllib.request.urlopen(stats_url, timeout=30) as resp:
            return int(json.loads(resp.read())["spans"])

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._log.close()


def _start_traced(
    fleet: Fleet, upstream: str, cores: set[int] | None, label: str, endpoint: str
) -> Running:
    """This tree's proxy on ``/v1`` (as ``start_promptproxy`` starts it) with every
    request traced to ``endpoint``."""
    port, admin = free_ports(2)
    config = fleet.log_dir / f"{label}.yaml"
    config.write_text(f"tracing:\n  enabled: true\n  endpoint: {endpoint}\n  sample_ratio: 1.0\n")
    command = [
        sys.executable, "-m", "proxy", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
        "--log-level", "INFO", "--upstream", upstream, "--config", str(config),
    ]  # fmt: skip
    store = f"embedded:{fleet.log_dir / label}-registry.db"
    proc: ManagedProcess = fleet.start(label, command, cores, _clean_env(PROMPTPROXY_STORE=store))
    proc.wait_ready(http_ok(admin, "/readyz"))
    return Running(ON, f"http://127.0.0.1:{port}/v1", proc)


async def run_tracing(
    args: argparse.Namespace,
    fleet: Fleet,
    cores: set[int] | None,
    cfg: CellConfig,
    checkout_baseline: Any,
) -> dict[str, Any]:
    """``checkout_baseline(revision, into) -> full revision`` (the bench's own)."""
    revision = args.baseline or tracing_baseline()
    baseline_dir = fleet.log_dir / "no-tracing-src"
    full_revision = checkout_baseline(revision, baseline_dir)
    sim = start_simulator(fleet, None)
    receiver = Receiver(fleet.log_dir)
    scenario = BY_NAME[SCENARIO]
    runs: list[Cell] = []
    try:
        for round_ in range(args.rounds):
            order = list(BUILDS) if round_ % 2 == 0 else list(reversed(BUILDS))
            for name in order:
                label = f"r{round_}-{name}"
                if name == ON:
                    target = _start_traced(fleet, sim.base_url, cores, label, receiver.url)
                    before = receiver.spans()
                else:
                    target = start_promptproxy(
                        fleet,
                        sim.base_url,
                        cores,
                        label,
                        source=baseline_dir if name == NO_CODE else None,
                        name=name,
                    )
                try:
                    cell = await measure_cell(scenario, target, sim, cfg, None)
                finally:
                    fleet.stop(target.proc)  # its last spans leave as it shuts down
                if name == ON:
                    sent = cfg.warmup + cell["requested"]
                    cell["spans"] = {"expected": 2 * sent, "received": receiver.spans() - before}
                cell["round"] = round_
                runs.append(cell)
                print(
                    f"{label}: {cell['rps']:.0f} req/s, {cell['errors']} errors, "
                    f"p50 {_value(cell, 'latency_ms', 'p50'):.3f} ms, "
                    f"p99 {_value(cell, 'latency_ms', 'p99'):.3f} ms, "
                    f"CPU {_value(cell, 'cpu_us_per_req', 'target'):.0f} us/req"
                    + (f", spans {cell['spans']}" if "spans" in cell else ""),
                    flush=True,
                )
    finally:
        receiver.stop()
    cells = aggregate.combine(runs, BUILDS)
    rows = []
    for name in BUILDS:
        cell = aggregate.find(cells, SCENARIO, name)
        rows.append(
            {
                "build": name,
                "rps": None if cell is None else cell["rps"],
                "latency_p50_ms": _pct(cell, "latency_ms", "p50"),
                "latency_p99_ms": _pct(cell, "latency_ms", "p99"),
                "cpu_us_per_req": _pct(cell, "cpu_us_per_req", "target"),
                "errors": None if cell is None else cell["errors"],
            }
        )
    spans = [c["spans"] for c in runs if "spans" in c]
    errors = sum(c["errors"] for c in cells)
    checks = [
        {
            "name": "failed requests, all cells",
            "value": errors,
            "limit": 0,
            "met": errors == 0,
            "minimal": None,
        }
    ]
    return {
        "tracing": {"baseline": full_revision, "scenario": SCENARIO, "builds": rows},
        "spans_per_round": spans,
        "checks": checks,
        "cells": cells,
        "runs": runs,
    }


def _value(cell: Cell, what: str, which: str) -> float:
    found = aggregate.value(cell, what, which)
    return 0.0 if found is None else found


def _pct(cell: Cell | None, what: str, which: str) -> float | None:
    return None if cell is None else aggregate.value(cell, what, which)


def tracing_table(result: dict[str, Any]) -> str:
    tracing = result["tracing"]
    lines = [
        f"tracing cost ({tracing['scenario']}; medians over rounds; no_tracing_code is "
        f"{tracing['baseline'][:12]})",
        f"{'build':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'errors':>8}",
    ]
    for row in tracing["builds"]:
        lines.append(
            f"{row['build']:<18}{_fmt(row['rps'], 9, 0)}{_fmt(row['latency_p50_ms'], 9, 3)}"
            f"{_fmt(row['latency_p99_ms'], 9, 3)}{_fmt(row['cpu_us_per_req'], 12, 0)}"
            f"{row['errors'] if row['errors'] is not None else '-':>8}"
        )
    for spans in result["spans_per_round"]:
        lines.append(f"tracing_on spans received {spans['received']} of {spans['expected']}")
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"
