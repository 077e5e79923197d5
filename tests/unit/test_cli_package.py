"""The CLI package: `promptproxy` and `python -m proxy` are one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import main

ROOT = Path(__file__).resolve().parents[2]
GROUPS = (
    "serve",
    "simulate",
    "config",
    "prompts",
    "rollout",
    "shadow",
    "fleet",
    "registry",
    "tenants",
    "eval",
    "replay",
)


def test_every_command_is_on_the_entry_point() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = [
        line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()
    ]
    assert sorted(listed) == sorted(GROUPS)


def test_python_dash_m_proxy_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "shadow", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert {"report", "export", "tail"} <= set(done.stdout.split())
