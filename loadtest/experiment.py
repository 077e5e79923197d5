"""Scaffolding the one-off experiments share (pool_pressure, slowloris): the raised file
descriptor limit, a proxy started from a piece of YAML, and the results file.

Figures only: nothing here asserts anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtest.procs import REPO_ROOT, Fleet, ManagedProcess, free_ports, http_ok


def raise_nofile_limit() -> tuple[int, int]:
    """Lift the soft descriptor limit to the hard one (thousands of sockets are the point);
    returns the limits as they were, for the report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def start_proxy(
    fleet: Fleet, name: str, upstream: str, config: str
) -> tuple[int, int, ManagedProcess]:
    """A proxy with its own embedded store and ``config`` as its YAML, ready on return:
    (data port, admin port, process)."""
    port, admin = free_ports(2)
    config_path = fleet.log_dir / f"{name}.yaml"
    config_path.write_text(config)
    proc = fleet.start(
        name,
        [
            sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--admin-port", str(admin), "--upstream", upstream,
            "--store", f"embedded:{fleet.log_dir / name}.db", "--config", str(config_path),
            "--log-level", "WARNING",
        ],
    )  # fmt: skip
    proc.wait_ready(http_ok(admin, "/readyz"), 30)
    return port, admin, proc


@contextlib.contextmanager
def fleet_with_simulator(prefix: str) -> Iterator[tuple[Fleet, str]]:
    """A fleet logging to a scratch directory, with the simulated provider already ready in
    it: (fleet, the simulator's base URL ``.../v1``). Every child is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch, Fleet(Path(scratch)) as fleet:
        (port,) = free_ports(1)
        sim = fleet.start(
            "simulator",
            [sys.executable, "-m", "proxy", "simulate", "--host", "127.0.0.1", "--port", str(port)],
        )
        sim.wait_ready(http_ok(port, "/_sim/health"), 30)
        yield fleet, f"http://127.0.0.1:{port}/v1"


def _git_revision() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()


def write_results(
    path: Path, nofile: tuple[int, int], scenario: dict[str, Any], phases: Sequence[Any]
) -> None:
    """The results file: the command, when, which revision, the machine, the scenario and
    one entry per phase (already plain data)."""
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git_revision(),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "nofile": list(nofile),
        },
        "scenario": scenario,
        "phases": list(phases),
    }
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {path.relative_to(REPO_ROOT)}")
