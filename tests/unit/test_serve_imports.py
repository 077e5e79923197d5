"""What `promptproxy serve` loads: never the simulated provider (it only runs with
`promptproxy simulate`, or with `simulator.enabled`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE_IMPORTS = ("proxy.cli", "proxy.server", "proxy.web.app", "proxy.services")


def _loaded_after(*modules: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_serving_does_not_import_the_simulator() -> None:
    loaded = _loaded_after(*SERVE_IMPORTS)
    assert "proxy.server" in loaded  # the probe itself worked
    assert [m for m in loaded if m == "proxy.simulator" or m.startswith("proxy.simulator.")] == []


def test_the_simulate_command_still_finds_it() -> None:
    assert "proxy.simulator" in _loaded_after("proxy.cli", "proxy.simulator")
