"""Three replicas on one Redis: `promptproxy fleet` lists them, and a rollback made with the
CLI waits until all three serve it (`v1 served by 3/3 replicas after N ms`). A replica frozen
with SIGSTOP cannot confirm: it is named, and the CLI exits 3 (the write is made anyway)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.processes import ADMIN_TOKEN, ProxyProc

pytestmark = pytest.mark.integration


def cli(replica: ProxyProc, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env["PROMPTPROXY_ADMIN_URL"] = replica.admin_url
    env["PROMPTPROXY_ADMIN_TOKEN"] = ADMIN_TOKEN
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def seed(replica: ProxyProc, slug: str, tmp_path: Path) -> None:
    """Two versions of ``slug``, v2 prod (so a rollback goes to v1)."""
    for n, text in ((1, "good prompt"), (2, "bad prompt")):
        path = tmp_path / f"{slug}.md"
        path.write_text(f"---\nslug: {slug}\n---\n{text}\n")
        ok(cli(replica, "prompts", "push", str(path)))
        ok(cli(replica, "prompts", "promote", slug, str(n), "--no-wait"))


def test_fleet_lists_three_live_replicas(replicas: list[ProxyProc]) -> None:
    status = orjson.loads(ok(cli(replicas[0], "fleet", "-o", "json")))
    rows = status["data"]
    assert status["live"] == 3
    assert sorted(int(r["pid"]) for r in rows) == sorted(r.pid for r in replicas)
    assert [r["this"] for r in rows].count(True) == 1
    table = ok(cli(replicas[1], "fleet"))
    assert "3 live replicas" in table
    assert table.count(" yes ") == 3


def test_rollback_waits_until_all_three_serve_it(replicas: list[ProxyProc], tmp_path: Path) -> None:
    seed(replicas[0], "checkout", tmp_path)
    out = ok(cli(replicas[1], "prompts", "rollback", "checkout", "--reason", "regression"))
    match = re.search(r"^v1 served by 3/3 replicas after (\d+) ms$", out, re.M)
    assert match, out
    print(f"\nfleet confirmation of a rollback: {match.group(1)} ms")
    status = orjson.loads(ok(cli(replicas[2], "fleet", "-o", "json")))
    assert {r["behind"] for r in status["data"]} == {0}


def test_a_frozen_replica_is_named_as_not_confirming(
    replicas: list[ProxyProc], tmp_path: Path
) -> None:
    seed(replicas[0], "billing", tmp_path)
    frozen = replicas[2]
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        result = cli(replicas[0], "prompts", "rollback", "billing", "--timeout", "1.5")
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "served by" in x]
    assert line.startswith("v1 served by 2/3 replicas after ")
    (named,) = re.findall(r"not confirmed within 1.5 s: (\S+) \(serves revision", line)
    assert f":{frozen.pid}:" in named
    # The write was made all the same, and with JSON out the answer names it too.
    history = orjson.loads(ok(cli(replicas[1], "prompts", "-o", "json", "show", "billing")))
    assert [v["status"] for v in history["data"] if v["version"] == 1] == ["prod"]


def test_a_replica_shut_down_cleanly_leaves_the_board(replicas: list[ProxyProc]) -> None:
    # Last in this module: it stops a replica of the shared fixture.
    leaving = replicas[2]
    assert leaving.stop(signal.SIGTERM) == 0
    status = orjson.loads(ok(cli(replicas[0], "fleet", "-o", "json")))
    assert sorted(int(r["pid"]) for r in status["data"]) == sorted(r.pid for r in replicas[:2])
