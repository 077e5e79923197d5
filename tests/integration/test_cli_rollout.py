"""`promptproxy rollout ...` against a real proxy process, as an operator or a CI job runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.processes import ProxyProc, proxy

pytestmark = pytest.mark.integration

TOKEN = "cli-admin-token"


@pytest.fixture(scope="module")
def admin_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def cli(proc: ProxyProc, group: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env["PROMPTPROXY_ADMIN_URL"] = proc.admin_url
    env["PROMPTPROXY_ADMIN_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "proxy", group, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return orjson.loads(ok(result))


def seed(proc: ProxyProc, tmp_path: Path, slug: str) -> None:
    for n, text in enumerate(("Be brief.", "Be brief and kind.", "Be kind."), start=1):
        path = tmp_path / f"{slug}.md"
        path.write_text(f"---\nslug: {slug}\n---\n{text}\n")
        pushed = as_json(cli(proc, "prompts", "-o", "json", "push", str(path)))
        assert pushed[0]["version"] == n
    ok(cli(proc, "prompts", "promote", slug, "1"))


def test_canary_ramp_abort_then_shadow_and_promote(admin_proxy: ProxyProc, tmp_path: Path) -> None:
    seed(admin_proxy, tmp_path, "cli-rollout")
    out = ok(
        cli(
            admin_proxy,
            "rollout",
            "set",
            "cli-rollout",
            "--candidate",
            "2",
            "--canary",
            "10",
            "--sticky",
            "header:x-user-id",
            "--reason",
            "try kinder",
        )
    )
    assert "canary rollout of v2 at 10% (stable: v1)" in out
    assert "header:x-user-id" in out

    out = ok(cli(admin_proxy, "rollout", "ramp", "cli-rollout", "25"))
    assert "at 25%" in out
    assert "header:x-user-id" in out  # the ramp kept the key
    table = ok(cli(admin_proxy, "rollout", "status"))
    assert "cli-rollout" in table
    assert "25%" in table

    out = ok(cli(admin_proxy, "rollout", "abort", "cli-rollout", "--reason", "too long"))
    assert "rollout_abort" in out
    assert "candidate -> draft" in out
    assert "no rollout running" in ok(cli(admin_proxy, "rollout", "status"))

    refused = cli(admin_proxy, "rollout", "set", "cli-rollout", "--candidate", "2")
    assert refused.returncode != 0
    assert "--canary" in refused.stderr
    missing = cli(admin_proxy, "rollout", "abort", "cli-rollout")
    assert missing.returncode == 1
    assert "error:" in missing.stderr
    assert "rollout" in missing.stderr

    shadow = as_json(
        cli(
            admin_proxy,
            "rollout",
            "-o",
            "json",
            "set",
            "cli-rollout",
            "--candidate",
            "3",
            "--shadow",
            "5",
        )
    )
    assert (shadow["mode"], shadow["candidate"], shadow["sticky"]) == ("shadow", 3, "none")
    promoted = as_json(cli(admin_proxy, "rollout", "-o", "json", "promote", "cli-rollout"))
    assert (promoted["action"], promoted["version"]) == ("promote", 3)
    assert promoted["to_status"] == "prod"

    history = ok(cli(admin_proxy, "prompts", "history", "cli-rollout"))
    for expected in ("canary 10%", "canary 25% (was 10%)", "shadow 5%, ended", "too long"):
        assert expected in history, history
