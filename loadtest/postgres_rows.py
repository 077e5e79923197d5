"""`python -m loadtest.postgres_rows`: the PostgreSQL backend's figures, over several runs.

The scenarios are the integration tests of tests/integration/test_replicas_on_postgres.py
(three replicas, one private PostgreSQL, no Redis), run with PostgreSQL stopped for 30 s
under load instead of the suite's 2 s. Each test prints one ``FIGURES {json}`` line; they are
collected into ``loadtest/results/postgres-rows.json`` with a summary:

- propagation: seconds until each replica serves a rollback, then a promote, made through
  another replica (LISTEN/NOTIFY);
- connections killed: the same for a rollback while every connection is killed every 0.2 s;
- outage: requests served and failed while PostgreSQL was down, and how long until a replica
  reported it.

Not pinned to cores (unlike ``loadtest.bench``): the numbers carry the machine's noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from loadtest.fault_rows import PREFIX, spread

TEST = "tests/integration/test_replicas_on_postgres.py"


def run_once(outage_seconds: float) -> list[dict[str, Any]]:
    env = {**os.environ, "PROMPTPROXY_TEST_PG_OUTAGE_SECONDS": str(outage_seconds)}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
            "-o", f"timeout={int(outage_seconds) + 120}", TEST,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )  # fmt: skip
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-2000:])
        raise SystemExit(f"the tests failed (exit {done.returncode})")
    return [
        orjson.loads(line[len(PREFIX) :])
        for line in done.stdout.splitlines()
        if line.startswith(PREFIX)
    ]


def summarise(figures: list[dict[str, Any]]) -> dict[str, Any]:
    def of(case: str) -> list[dict[str, Any]]:
        return [f for f in figures if f.get("case") == case]

    propagation, killed, outage = of("propagation"), of("connections_killed"), of("outage")
    return {
        "rollback_every_replica_s": spread([t for f in propagation for t in f["rollback_s"]]),
        "promote_every_replica_s": spread([t for f in propagation for t in f["promote_s"]]),
        "rollback_connections_killed_s": spread([t for f in killed for t in f["rollback_s"]]),
        "outage": {
            "down_s": spread([f["down_s"] for f in outage]),
            "reported_s": spread([f["reported_s"] for f in outage]),
            "requests": sum(f["requests"] for f in outage),
            "failed": sum(f["failed"] for f in outage),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.postgres_rows", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--outage-seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=Path("loadtest/results/postgres-rows.json"))
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    figures: list[dict[str, Any]] = []
    for run in range(args.runs):
        got = run_once(args.outage_seconds)
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
