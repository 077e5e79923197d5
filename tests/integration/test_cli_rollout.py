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

from proxy.cli.rollout import describe_analysis_state
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.web import admin_models as api
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


def test_a_rollout_set_with_analysis_flags_shows_its_policy(
    admin_proxy: ProxyProc, tmp_path: Path
) -> None:
    seed(admin_proxy, tmp_path, "cli-analysis")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "interval: 120\nmin_samples: 500\nsteps: [10, 20]\n"
        "thresholds:\n  p95_ttft_ratio: null\n  feedback_drop: {name: thumbs_up, max_drop: 0.1}\n"
    )
    out = ok(
        cli(
            admin_proxy,
            "rollout",
            "set",
            "cli-analysis",
            "--candidate",
            "2",
            "--canary",
            "1",
            "--analysis",
            str(policy_file),
            # The flags win over the file.
            "--steps",
            "1,5,25,50",
            "--interval",
            "30",
            "--failure-limit",
            "2",
        )
    )
    assert "every 30s, 500 samples per arm" in out
    assert "tolerates 2 failed verdicts" in out
    assert "steps 1% -> 5% -> 25% -> 50%" in out

    status = ok(cli(admin_proxy, "rollout", "status", "cli-analysis"))
    assert "every 30s, 500 samples per arm, alpha 0.01, tolerates 2 failed verdicts" in status
    assert "steps 1% -> 5% -> 25% -> 50%" in status
    assert "p95 latency x1.5" in status
    assert "p95 TTFT" not in status  # turned off in the file
    assert "feedback thumbs_up -0.1" in status
    raw = as_json(cli(admin_proxy, "rollout", "-o", "json", "status", "cli-analysis"))
    assert raw["analysis"]["steps"] == [1.0, 5.0, 25.0, 50.0]
    assert raw["analysis"]["interval"] == 30.0
    assert "analysis_state" in raw

    # A ramp keeps the policy; a different one is refused with the reason.
    assert "steps 1% -> 5% -> 25% -> 50%" in ok(
        cli(admin_proxy, "rollout", "ramp", "cli-analysis", "5")
    )
    refused = cli(
        admin_proxy,
        "rollout",
        "set",
        "cli-analysis",
        "--candidate",
        "2",
        "--canary",
        "5",
        "--min-samples",
        "10",
    )
    assert refused.returncode == 1
    assert "Abort it" in refused.stderr
    assert "(param: analysis)" in refused.stderr
    ok(cli(admin_proxy, "rollout", "abort", "cli-analysis"))

    # A bad policy names its field; no flags, no policy.
    bad = cli(
        admin_proxy,
        "rollout",
        "set",
        "cli-analysis",
        "--candidate",
        "2",
        "--canary",
        "5",
        "--steps",
        "5,1",
    )
    assert bad.returncode == 1
    assert "(param: analysis.steps[1])" in bad.stderr
    plain = as_json(
        cli(
            admin_proxy,
            "rollout",
            "-o",
            "json",
            "set",
            "cli-analysis",
            "--candidate",
            "2",
            "--canary",
            "5",
        )
    )
    assert plain["analysis"] is None
    assert "analysis    none" in ok(cli(admin_proxy, "rollout", "status", "cli-analysis"))
    ok(cli(admin_proxy, "rollout", "abort", "cli-analysis"))


STATE = {
    "step": 1,
    "failures": 1,
    "next_at": 1732450060.0,
    "holder": "analyser:web-2:4242",
    "verdicts": [
        {
            "at": 1732450000.0,
            "rollout_id": "abc",
            "verdict": "fail",
            "percent": 5.0,
            "window": {"start": 1732449940.0, "end": 1732450000.0},
            "samples": {"stable": 1800, "canary": 190},
            "checks": [
                {
                    "name": "error_rate",
                    "result": "fail",
                    "stable": 0.004,
                    "candidate": 0.10212345,
                    "limit": 0.02,
                    "p_value": 1.234e-9,
                    "note": "10.2% vs 0.4%",
                },
                {
                    "name": "p95_latency",
                    "result": "pass",
                    "stable": 1.2,
                    "candidate": 1.3,
                    "limit": 1.5,
                    "p_value": None,
                    "note": "",
                },
            ],
            "action": "abort",
            "actor": "analyser:web-2:4242",
        },
        {
            "at": 1732449940.0,
            "rollout_id": "abc",
            "verdict": "pass",
            "percent": 1.0,
            "window": {"start": 1732449880.0, "end": 1732449940.0},
            "samples": {"stable": 1700, "canary": 20},
            "checks": [],
            "action": "ramp",
            "actor": "analyser:web-2:4242",
        },
    ],
}


def test_status_renders_the_analysers_verdicts() -> None:
    policy = AnalysisPolicy(failure_limit=1, steps=(100, 500, 2500)).to_dict()
    text = describe_analysis_state(
        api.AnalysisState.model_validate(STATE), api.AnalysisPolicy.model_validate(policy)
    )
    lines = text.splitlines()
    assert "  step        2 of 3 (5%)" in lines
    assert "  failures    1 (tolerated: 1)" in lines
    assert "  lease       analyser:web-2:4242" in lines
    assert "2024-11-24 12:07:40Z" in text  # next verdict
    verdicts = lines.index(next(line for line in lines if line.startswith("TIME")))
    assert lines[verdicts].split() == [
        "TIME",
        "VERDICT",
        "PERCENT",
        "STABLE",
        "CANDIDATE",
        "ACTION",
    ]
    # Newest first, one row each: time, verdict, percent, samples stable/candidate, action.
    assert lines[verdicts + 1].split() == [
        "2024-11-24",
        "12:06:40Z",
        "fail",
        "5%",
        "1800",
        "190",
        "abort",
    ]
    assert lines[verdicts + 2].split() == [
        "2024-11-24",
        "12:05:40Z",
        "pass",
        "1%",
        "1700",
        "20",
        "ramp",
    ]
    # Then the checks of the newest verdict: name, result, values, limit, p-value, note.
    assert "checks of the verdict at 2024-11-24 12:06:40Z:" in lines
    check_rows = [line.split(maxsplit=6) for line in lines if line.startswith(("error_", "p95_"))]
    assert check_rows == [
        ["error_rate", "fail", "0.004", "0.1021", "0.02", "1.2e-09", "10.2% vs 0.4%"],
        ["p95_latency", "pass", "1.2", "1.3", "1.5", "-"],
    ]


def test_status_renders_the_tiers_of_the_newest_verdict() -> None:
    failing = {
        "name": "length_finish",
        "result": "fail",
        "stable": 0.198,
        "candidate": 0.61,
        "limit": 0.05,
        "p_value": 1e-12,
        "note": "truncated 61.0 % vs stable 19.8 % (limit +5.0 points)",
    }
    newest = {
        **STATE["verdicts"][0],  # type: ignore[index]
        "tiers": {
            "enterprise": {
                "verdict": "fail",
                "samples": {"stable": 360, "canary": 40},
                "checks": [failing],
            },
            "free": {"verdict": "pass", "samples": {"stable": 1440, "canary": 150}, "checks": []},
        },
    }
    state: dict[str, Any] = {**STATE, "verdicts": [newest]}
    text = describe_analysis_state(api.AnalysisState.model_validate(state), None)
    lines = text.splitlines()

    start = lines.index("tiers of the verdict at 2024-11-24 12:06:40Z:")
    assert lines[start + 1].split() == [
        "TIER",
        "VERDICT",
        "STABLE",
        "CANDIDATE",
        "FAILED",
        "CHECKS",
    ]
    assert lines[start + 2].split(maxsplit=4) == [
        "enterprise",
        "fail",
        "360",
        "40",
        "length_finish: truncated 61.0 % vs stable 19.8 % (limit +5.0 points)",
    ]
    assert lines[start + 3].split() == ["free", "pass", "1440", "150"]
    # Verdicts without tiers (no request had one) print no such table.
    plain = describe_analysis_state(api.AnalysisState.model_validate(STATE), None)
    assert "tiers of the verdict" not in plain


def test_status_before_the_first_verdict() -> None:
    state = {"step": None, "failures": 0, "next_at": 1732450060.0, "holder": None, "verdicts": []}
    text = describe_analysis_state(
        api.AnalysisState.model_validate(state),
        api.AnalysisPolicy.model_validate(AnalysisPolicy().to_dict()),
    )
    assert "  step        no steps" in text
    assert "no replica holds it" in text
    assert "no verdict yet" in text
    assert "TIME" not in text
