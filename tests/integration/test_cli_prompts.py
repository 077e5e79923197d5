"""`promptproxy prompts ...` against a real proxy process, as an operator or a CI job runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.evals.suite import load_suite_file
from tests.processes import ProxyProc, free_port, proxy

pytestmark = pytest.mark.integration

TOKEN = "cli-admin-token"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def admin_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def cli(
    proc: ProxyProc | None, *args: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    if proc is not None:
        env["PROMPTPROXY_ADMIN_URL"] = proc.admin_url
    if token is not None:
        env["PROMPTPROXY_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "proxy", "prompts", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def test_push_promote_rollback_cycle(admin_proxy: ProxyProc, tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "config" / "prompts", folder)

    pushed = as_json(cli(admin_proxy, "-o", "json", "push", str(folder)))
    assert {p["slug"] for p in pushed} == {
        "support-reply",
        "summarize",
        "classify-ticket",
        "judge.helpfulness",
    }
    assert all(p["created"] for p in pushed)
    again = as_json(cli(admin_proxy, "-o", "json", "push", str(folder)))
    assert not any(p["created"] for p in again)  # idempotent sync of a folder

    reply = folder / "support-reply.md"
    reply.write_text(reply.read_text() + "- Sign off with the team name.\n")
    (changed,) = [p for p in as_json(cli(admin_proxy, "-o", "json", "push", str(reply)))]
    assert (changed["slug"], changed["version"], changed["created"]) == ("support-reply", 2, True)

    for version in ("1", "2"):
        assert (
            cli(admin_proxy, "promote", "support-reply", version, "--reason", "ship").returncode
            == 0
        )
    listed = {p["slug"]: p for p in as_json(cli(admin_proxy, "-o", "json", "list"))}
    assert listed["support-reply"]["prod_version"] == 2

    diff = cli(admin_proxy, "diff", "support-reply", "1", "2")
    assert diff.returncode == 0
    assert "+- Sign off with the team name." in diff.stdout

    rolled = cli(admin_proxy, "rollback", "support-reply", "--reason", "complaints")
    assert rolled.returncode == 0, rolled.stderr
    assert "v1" in rolled.stdout
    assert "prod" in rolled.stdout
    shown = as_json(cli(admin_proxy, "-o", "json", "show", "support-reply"))
    assert [v["status"] for v in shown["data"]] == ["prod", "deprecated"]
    table = cli(admin_proxy, "history", "support-reply")
    assert "rollback" in table.stdout
    assert "complaints" in table.stdout
    one = cli(admin_proxy, "show", "support-reply", "1")
    assert "You are a support agent" in one.stdout


def test_errors_exit_non_zero_with_a_message(admin_proxy: ProxyProc, tmp_path: Path) -> None:
    missing = cli(admin_proxy, "show", "no-such-prompt")
    assert missing.returncode == 1
    assert "no-such-prompt" in missing.stderr
    no_token = cli(admin_proxy, "promote", "x", "1", token=None)
    assert no_token.returncode == 1
    assert "token" in no_token.stderr.lower()
    # A port nothing listens on: the default (8081) may be taken by a proxy someone runs.
    unreachable = cli(None, "--admin-url", f"http://127.0.0.1:{free_port()}", "list")
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr


def test_lint_is_offline_and_fails_on_bad_files(tmp_path: Path) -> None:
    assert cli(None, "lint", str(REPO / "config" / "prompts")).returncode == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.md").write_text("---\nvariables: [name]\n---\nHello {{ nme }}\n")
    result = cli(None, "lint", str(bad))
    assert result.returncode == 1
    assert "broken.md:4" in result.stderr
    assert "nme" in result.stderr


def test_eval_runs_the_example_suite_through_a_real_proxy(
    admin_proxy: ProxyProc, tmp_path: Path
) -> None:
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "config" / "prompts", folder)
    assert cli(admin_proxy, "push", str(folder)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env |= {"PROMPTPROXY_ADMIN_URL": admin_proxy.admin_url, "PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    args = ["eval", "classify-ticket", "--candidate", "1", "--baseline", "none"]
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "-o", "json", *args, "--prompts", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    # The simulator is no classifier: the run may not pass, but it ran every sample
    # through the proxy's own listener, to the simulator and back.
    assert done.returncode in (0, 3), done.stderr
    run = orjson.loads(done.stdout)
    suite = load_suite_file(folder / "classify-ticket.eval.yaml")
    expected = sum(suite.samples if c.samples is None else c.samples for c in suite.cases)
    assert run["summary"]["candidate"]["samples"] == expected
    assert [case["name"] for case in run["detail"]["cases"]] == [c.name for c in suite.cases]
    assert all(
        sample["status"] == 200
        for case in run["detail"]["cases"]
        for sample in case["sides"]["candidate"]
    )
    history = cli(admin_proxy, "history", "classify-ticket")
    assert run["id"] in history.stdout


def test_the_example_judge_agrees_with_its_labels(admin_proxy: ProxyProc, tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "config" / "prompts", folder)
    assert cli(admin_proxy, "push", str(folder)).returncode == 0
    assert cli(admin_proxy, "promote", "judge.helpfulness", "1", "--reason", "r").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env |= {"PROMPTPROXY_ADMIN_URL": admin_proxy.admin_url, "PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    args = ["eval", "judge.helpfulness", "--candidate", "1", "--baseline", "none"]
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *args, "--prompts", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agrees with the labels 100.0% of 3, kappa 1.00" in done.stdout
