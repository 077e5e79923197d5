"""`python -m loadtest.fault_rows`: figures for reliability rows S2 and C3, over several runs.

The scenarios are the integration tests themselves (tests/integration/test_shadow_keepalive.py
for S2, tests/integration/test_ramp_propagation.py for C3), so the figures come from exactly
what the suite checks. Each run is one pytest process; every test prints one
``FIGURES {json}`` line, collected here into ``loadtest/results/fault-rows.json`` with a
summary per row:

- S2: per-request latency on one keep-alive connection, 1,000 sequential requests, with
  the shadow off and with every request shadowed to a 10 s slow upstream.
- C3: seconds from the admin ramp 10 % -> 0 % until each of three replicas serves stable to
  a key that was on the canary: by pub/sub notification, with pub/sub killed once just
  before the ramp, and with pub/sub killed every 50 ms from then on (polling only); and the
  same after nine rapid ramps 10 -> 0 -> 10 ... through alternating replicas.

Not pinned to cores (unlike ``loadtest.bench``): the numbers carry the machine's noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

TESTS = (
    "tests/integration/test_shadow_keepalive.py",
    "tests/integration/test_ramp_propagation.py",
)
PREFIX = "FIGURES "


def run_once() -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *TESTS],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-2000:])
        raise SystemExit(f"the tests failed (exit {done.returncode})")
    return [
        orjson.loads(line[len(PREFIX) :])
        for line in done.stdout.splitlines()
        if line.startswith(PREFIX)
    ]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def summarise(figures: list[dict[str, Any]]) -> dict[str, Any]:
    s2 = [f for f in figures if f["row"] == "S2"]
    c3 = [f for f in figures if f["row"] == "C3"]
    out: dict[str, Any] = {"S2": {}, "C3": {}}
    for side in ("shadow_off", "shadow_on"):
        out["S2"][side] = {
            stat: spread([f[side][stat] for f in s2])
            for stat in ("total_s", "mean_ms", "p50_ms", "p99_ms", "max_ms")
        }
    for killed, flaps in sorted({(f["pubsub_killed"], f["flaps"]) for f in c3}):
        runs = [f for f in c3 if (f["pubsub_killed"], f["flaps"]) == (killed, flaps)]
        name = f"pubsub_killed_{killed}" + (f"_after_{flaps}_rapid_ramps" if flaps else "")
        out["C3"][name] = {
            "slowest_replica_s": spread([max(f["applied_s"]) for f in runs]),
            "every_replica_s": spread([t for f in runs for t in f["applied_s"]]),
            "canary_after_apply": sum(f["canary_after_apply"] for f in runs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fault_rows", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("loadtest/results/fault-rows.json"))
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    figures: list[dict[str, Any]] = []
    for run in range(args.runs):
        got = run_once()
        for f in got:
            f["run"] = run
        figures += got
        print(f"run {run + 1}/{args.runs}: {len(got)} figure lines", flush=True)
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
            "command": " ".join(sys.orig_argv),
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "git": git,
            "runs": args.runs,
            "loadavg_at_end": os.getloadavg(),
        },
        "summary": summarise(figures),
        "figures": figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result["summary"], option=orjson.OPT_INDENT_2).decode())
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
