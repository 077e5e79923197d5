"""`shadow report` and `shadow export` read one rollout's pairs: the running rollout, else
the last one, or `--rollout ID`; an earlier rollout of the same slug never leaks in."""

from __future__ import annotations

import orjson

from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode, VersionDraft
from proxy.services import Services
from tests.component.test_shadow_cli import cli
from tests.component.test_shadow_report import SLUG, Seeder
from tests.support import READER, Clients

KEY = PromptKey(SLUG)


async def shadow_of(services: Services, candidate: int) -> str:
    change = await services.registry.set_rollout(
        KEY, candidate, RolloutMode.SHADOW, 50, None, "operator", ""
    )
    return change.rollout.id


async def two_rollouts(services: Services) -> tuple[str, str]:
    """An earlier shadow whose candidate went off track (aborted), then a running one whose
    candidate answers like stable; the pairs of both are in the sink."""
    for n in (1, 2, 3):
        await services.registry.push(VersionDraft(key=KEY, template=f"v{n}"), actor="test")
    await services.registry.promote(KEY, 1, "test", "")
    seeder = Seeder(services, 7)
    seeder.rollout_id = old = await shadow_of(services, 2)
    seeder.noise(40)
    seeder.candidate_off_track(40)
    await services.registry.abort_rollout(KEY, "operator", "off track")
    seeder.rollout_id = new = await shadow_of(services, 3)
    seeder.noise(40)
    seeder.candidate_like_stable(40)
    await seeder.stored()
    return old, new


async def test_report_judges_the_running_rollout_only_and_names_it(clients: Clients) -> None:
    _, admin, services = clients
    old, new = await two_rollouts(services)

    result = await cli(admin, "report", SLUG)
    assert result.exit_code == 0, result.output
    assert f"{SLUG}, rollout {new} (running): pairs since 1h: 40 stable vs stable" in result.output
    assert "40 stable vs candidate; 0 skipped" in result.output  # not 80: r-old left out
    assert result.output.rstrip().splitlines()[-1].startswith("verdict: pass")

    data = orjson.loads((await cli(admin, "-o", "json", "report", SLUG)).output)
    assert (data["rollout_id"], data["rollout_running"], data["result"]) == (new, True, "pass")

    earlier = await cli(admin, "report", SLUG, "--rollout", old)
    assert f"rollout {old} (named with --rollout)" in earlier.output
    assert earlier.output.rstrip().splitlines()[-1].startswith("verdict: fail")


async def test_export_defaults_to_the_last_rollout_once_none_runs(clients: Clients) -> None:
    _, admin, services = clients
    old, new = await two_rollouts(services)
    await services.registry.abort_rollout(KEY, "operator", "done")

    result = await cli(admin, "export", SLUG)
    assert result.exit_code == 0, result.output
    exported = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(exported) == 80
    assert {p["rollout_id"] for p in exported} == {new}
    assert f"{SLUG}: pairs of rollout {new} (the last one, ended)" in result.stderr

    by_id = await cli(admin, "export", SLUG, "--rollout", old, "--limit", "5")
    assert {orjson.loads(line)["rollout_id"] for line in by_id.stdout.splitlines()} == {old}

    resp = await admin.get(f"/admin/v1/prompts/{SLUG}/shadow/rollout", headers=READER)
    assert await resp.json() == {"slug": SLUG, "rollout_id": new, "running": False}
    resp = await admin.get(
        f"/admin/v1/prompts/{SLUG}/shadow/pairs", params={"rollout": "latest"}, headers=READER
    )
    assert resp.headers["X-Promptproxy-Rollout"] == new


async def test_a_slug_that_never_had_a_rollout_says_so(clients: Clients) -> None:
    _, admin, services = clients
    await services.registry.push(VersionDraft(key=KEY, template="v1"), actor="test")
    result = await cli(admin, "report", SLUG)
    assert result.exit_code == 1
    assert f"{SLUG} has had no rollout" in result.output
    assert "(param: rollout)" in result.output
    resp = await admin.get(
        f"/admin/v1/prompts/{SLUG}/shadow/pairs", params={"rollout": "no such/id"}, headers=READER
    )
    assert (resp.status, (await resp.json())["error"]["param"]) == (400, "rollout")
