"""Gates before prod through the admin API and the CLI (embedded store, in-process), with eval
runs stored straight into the backend's store. The seed's incident: a version whose every
functional assertion passes but which the judge scores lower than prod is refused at
promote and at rollout start, naming the judge gate, with nothing changed; the same version
is accepted with an override and a reason, and the audit names what was overridden.
Rollback, a rollout's percentage change and its promote are never gated; a slug no policy
matches is never gated."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from proxy.evals.runs import EvalRun, new_run_id
from proxy.services import Services
from tests.support import ADMIN, ADMIN_TOKEN, admin_settings, proxy_clients, run_cli

#: support-* must pass an eval run and its judge scores; every other slug nothing.
GATES = {
    "gates.slugs": [
        {"match": "support-*", "require": ["eval", "judge"], "judge": {"min_score": 0.5}}
    ]
}
SLUG = "support-reply"


async def call(admin: TestClient[Any, Any], method: str, path: str, body: Any = None) -> Any:
    resp = await admin.request(method, f"/admin/v1{path}", json=body, headers=ADMIN)
    return resp.status, await resp.json()


async def two_versions(admin: TestClient[Any, Any], slug: str) -> None:
    """v1 prod (its first promote, ungated or with no run: overridden), v2 a draft."""
    for text in ("You help Acme's customers.", "You help Acme's customers, briefly."):
        status, body = await call(admin, "POST", f"/prompts/{slug}/versions", {"template": text})
        assert status == 201, body
    first = {"version": 1, "override_gates": True, "reason": "first version"}
    status, body = await call(admin, "POST", f"/prompts/{slug}/promote", first)
    assert status == 200, body


async def store_run(
    services: Services, slug: str, *, pass_rate: float, judge: float, prod_judge: float
) -> str:
    """A finished eval run of v2 against prod v1, as the runner would store it."""
    now = time.time()
    run_id = new_run_id(now)
    summary = {
        "candidate": {
            "version": 2,
            "samples": 30,
            "passed": round(30 * pass_rate),
            "errors": 0,
            "pass_rate": pass_rate,
            "interval": [0.8, 1.0],
            "judge": {"mean": judge, "n": 30},
        },
        "baseline": {
            "version": 1,
            "samples": 30,
            "passed": 30,
            "errors": 0,
            "pass_rate": 1.0,
            "interval": [0.8, 1.0],
            "judge": {"mean": prod_judge, "n": 30},
        },
        "difference": {
            "value": pass_rate - 1.0,
            "interval": [pass_rate - 1.0, 0.0],
            "cases": 5,
            "significant_drop": False,
        },
        "judge_difference": {"value": judge - prod_judge, "interval": [-0.4, -0.2]},
        "criteria": {"min_pass_rate": 1.0, "max_drop": 0.0},
        "cases": [],
        "passed": pass_rate == 1.0,
    }
    await services.backend.evals.add(
        EvalRun(
            id=run_id,
            slug=slug,
            candidate=2,
            baseline=1,
            kind="eval",
            actor="admin",
            started_at=now - 30,
            finished_at=now,
            suite_name=f"prompts/{slug}.eval.yaml",
            suite_sha256="0" * 64,
            judges=(("judge.helpfulness", 1),),
            passed=pass_rate == 1.0,
            summary=summary,
            detail={},
        )
    )
    return run_id


async def state(admin: TestClient[Any, Any], slug: str) -> tuple[Any, Any, list[Any]]:
    """What a refusal must leave unchanged: the prompt, its rollout and its audit."""
    _, prompt = await call(admin, "GET", f"/prompts/{slug}")
    status, _ = await call(admin, "GET", f"/prompts/{slug}/rollout")
    _, audit = await call(admin, "GET", f"/audit?slug={slug}")
    return prompt, status, audit["data"]


async def test_the_seed_incident_is_blocked_by_the_judge_gate_and_accepted_when_overridden(
    tmp_path: Path,
) -> None:
    async with proxy_clients(admin_settings(tmp_path, **GATES)) as (_, admin, services):
        await two_versions(admin, SLUG)
        # Every functional assertion passes (1.0, no drop); the judge scores 0.6 vs 0.9.
        run_id = await store_run(services, SLUG, pass_rate=1.0, judge=0.6, prod_judge=0.9)
        before = await state(admin, SLUG)

        status, body = await call(admin, "POST", f"/prompts/{SLUG}/promote", {"version": 2})
        assert (status, body["error"]["code"]) == (409, "gates_not_passed"), body
        message = body["error"]["message"]
        assert f"judge: run {run_id}: judge score 0.60 is 0.30 below prod v1's (0.90)" in message
        assert "eval:" not in message  # the functional assertions all passed
        canary = {"candidate": 2, "mode": "canary", "percent": 10}
        status, body = await call(admin, "PUT", f"/prompts/{SLUG}/rollout", canary)
        assert (status, body["error"]["code"]) == (409, "gates_not_passed"), body
        assert f"judge: run {run_id}: judge score 0.60" in body["error"]["message"]
        assert await state(admin, SLUG) == before  # nothing changed, nothing audited

        # An override needs a reason.
        for path, request in (
            (f"/prompts/{SLUG}/promote", {"version": 2, "override_gates": True}),
            (f"/prompts/{SLUG}/rollout", {**canary, "override_gates": True, "reason": " "}),
        ):
            status, body = await call(admin, "PUT" if "rollout" in path else "POST", path, request)
            assert status == 400, body
            assert await state(admin, SLUG) == before

        overridden = {"version": 2, "override_gates": True, "reason": "CR-9, judge re-tuned"}
        status, entry = await call(admin, "POST", f"/prompts/{SLUG}/promote", overridden)
        assert (status, entry["version"], entry["to_status"]) == (200, 2, "prod"), entry
        assert entry["reason"].startswith("CR-9, judge re-tuned [gates overridden: judge: run ")
        assert "0.30 below prod v1's" in entry["reason"]
        _, _, audit = await state(admin, SLUG)
        assert audit[0]["reason"] == entry["reason"]
        assert audit[0]["actor"] == entry["actor"] != ""

        # Rollback is never gated (v1 has no eval run at all).
        status, entry = await call(admin, "POST", f"/prompts/{SLUG}/rollback", {})
        assert (status, entry["version"]) == (200, 1), entry


async def test_an_overridden_rollout_is_not_gated_again_until_it_ends(tmp_path: Path) -> None:
    async with proxy_clients(admin_settings(tmp_path, **GATES)) as (_, admin, services):
        await two_versions(admin, SLUG)
        await store_run(services, SLUG, pass_rate=1.0, judge=0.6, prod_judge=0.9)
        canary = {"candidate": 2, "mode": "canary", "percent": 10}
        start = {**canary, "override_gates": True, "reason": "judge drift known"}
        status, body = await call(admin, "PUT", f"/prompts/{SLUG}/rollout", start)
        assert status == 201, body
        assert "[gates overridden: judge: run " in body["audit"]["reason"]

        status, body = await call(
            admin, "PUT", f"/prompts/{SLUG}/rollout", {**canary, "percent": 50}
        )
        assert (status, body["percent"]) == (200, 50), body
        status, entry = await call(admin, "POST", f"/prompts/{SLUG}/rollout/promote", {})
        assert (status, entry["version"]) == (200, 2), entry


async def test_a_passing_run_opens_the_gates_and_a_missing_one_is_named(tmp_path: Path) -> None:
    async with proxy_clients(admin_settings(tmp_path, **GATES)) as (_, admin, services):
        await two_versions(admin, SLUG)
        status, body = await call(admin, "POST", f"/prompts/{SLUG}/promote", {"version": 2})
        assert (status, body["error"]["code"]) == (409, "gates_not_passed"), body
        assert (
            "eval: no eval run of v2 against prod v1 in the last 168 h; run "
            f"`promptproxy eval {SLUG} --candidate 2`"
        ) in body["error"]["message"]
        assert "judge: no eval run of v2" in body["error"]["message"]
        status, body = await call(admin, "POST", f"/prompts/{SLUG}/promote", {"version": 9})
        assert (status, body["error"]["code"]) == (404, "version_not_found"), body

        await store_run(services, SLUG, pass_rate=1.0, judge=0.88, prod_judge=0.9)
        status, entry = await call(admin, "POST", f"/prompts/{SLUG}/promote", {"version": 2})
        assert (status, entry["reason"]) == (200, ""), entry


async def test_a_slug_no_policy_matches_is_never_gated(tmp_path: Path) -> None:
    async with proxy_clients(admin_settings(tmp_path, **GATES)) as (_, admin, _):
        await two_versions(admin, "billing")
        canary = {"candidate": 2, "mode": "canary", "percent": 10}
        assert (await call(admin, "PUT", "/prompts/billing/rollout", canary))[0] == 201
        assert (await call(admin, "POST", "/prompts/billing/rollout/promote", {}))[0] == 200
        # The first promote of two_versions was overridden for nothing: no problem, no note.
        _, _, audit = await state(admin, "billing")
        assert [e["reason"] for e in audit if e["action"] == "promote"][-1] == "first version"


async def test_the_cli_overrides_the_gates_with_a_reason(tmp_path: Path) -> None:
    async with proxy_clients(admin_settings(tmp_path, **GATES)) as (_, admin, services):
        await two_versions(admin, SLUG)
        await store_run(services, SLUG, pass_rate=0.8, judge=0.9, prod_judge=0.9)
        promote = ("prompts", "promote", SLUG, "2")

        refused = await run_cli(admin, *promote, token=ADMIN_TOKEN)
        assert refused.exit_code == 1, refused.output
        assert "eval: run " in refused.output
        assert "pass rate 80.0% < 100.0%" in refused.output
        no_reason = await run_cli(admin, *promote, "--override-gates", token=ADMIN_TOKEN)
        assert no_reason.exit_code == 2
        assert "--override-gates needs --reason" in no_reason.output

        rollout = ("rollout", "set", SLUG, "--candidate", "2", "--canary", "10")
        refused = await run_cli(admin, *rollout, token=ADMIN_TOKEN)
        assert refused.exit_code == 1, refused.output
        assert "pass rate 80.0% < 100.0%" in refused.output
        started = await run_cli(
            admin, *rollout, "--override-gates", "--reason", "CR-10", token=ADMIN_TOKEN
        )
        assert started.exit_code == 0, started.output
        assert (await call(admin, "DELETE", f"/prompts/{SLUG}/rollout", {"reason": "x"}))[0] == 200

        accepted = await run_cli(
            admin, *promote, "--override-gates", "--reason", "CR-11", token=ADMIN_TOKEN
        )
        assert accepted.exit_code == 0, accepted.output
        _, _, audit = await state(admin, SLUG)
        reasons = [e["reason"] for e in audit]
        assert reasons[0].startswith("CR-11 [gates overridden: eval: run "), reasons
        assert any(r.startswith("CR-10 [gates overridden: eval: run ") for r in reasons), reasons


async def test_a_bootstrapped_prompts_first_prod_overrides_its_gates_audited(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / f"{SLUG}.md").write_text("---\nchangelog: first\n---\nYou help Acme's customers.\n")
    settings = admin_settings(tmp_path, **GATES, **{"registry.bootstrap_dir": str(prompts)})
    async with proxy_clients(settings) as (_, admin, _):
        prompt, _, audit = await state(admin, SLUG)
        assert prompt["prod_version"] == 1
        promoted = [e for e in audit if e["action"] == "promote"]
        assert promoted[0]["actor"] == "bootstrap"
        assert promoted[0]["reason"].startswith(f"bootstrap from {prompts / SLUG}.md [gates ")
        assert "eval: no eval run of v1 in the last 168 h" in promoted[0]["reason"]


async def test_a_restart_never_ships_drafts_a_sync_left_without_prod(tmp_path: Path) -> None:
    # A CI sync pushed drafts; nobody promoted them. A restart with bootstrap_dir must not.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / f"{SLUG}.md").write_text("---\nchangelog: v2\n---\nYou help Acme's customers.\n")
    settings = admin_settings(tmp_path, **GATES)
    async with proxy_clients(settings) as (_, admin, _):
        for text in ("An older draft.", "You help Acme's customers."):
            status, _ = await call(admin, "POST", f"/prompts/{SLUG}/versions", {"template": text})
            assert status == 201
    settings = admin_settings(tmp_path, **GATES, **{"registry.bootstrap_dir": str(prompts)})
    async with proxy_clients(settings) as (_, admin, _):
        prompt, _, audit = await state(admin, SLUG)
        assert prompt["prod_version"] is None
        assert not [e for e in audit if e["action"] == "promote"]
