"""Eval runs through the admin API and `promptproxy eval`: each sample goes through this
proxy's own data plane to a real simulator process's HTTP face, pinned to a version; the
run is stored and read back, and stays out of the metrics and the tenant's usage."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from proxy.simulator import SimulatorSettings, start_simulator
from proxy.web.admin_params import EVAL_RUN_ID
from tests.support import (
    ADMIN,
    ADMIN_TOKEN,
    READER,
    Clients,
    admin_settings,
    proxy_clients,
    run_cli,
)

SUPPORT_V1 = {
    "template": "You answer {{ customer_name }} about routers, kindly and briefly.",
    "variables": [{"name": "customer_name", "type": "string"}],
}
# The same prompt, with the simulator told to cut 90 % of its answers short: what a
# prompt asking for far too much looks like from outside (finish_reason `length`).
SUPPORT_V2 = {**SUPPORT_V1, "template": SUPPORT_V1["template"] + " [[sim truncate=0.9]]"}
SUITE: dict[str, Any] = {
    "slug": "support",
    "samples": 6,
    "model": "gpt-4o-mini",
    "cases": [
        {
            "name": f"ticket-{n}",
            "variables": {"customer_name": name},
            "messages": [{"role": "user", "content": f"My router {n} keeps rebooting."}],
            "assert": [
                {"type": "contains", "value": "Simulated answer"},
                {"type": "finish_reason", "value": "stop"},
            ],
        }
        for n, name in enumerate(("Ana", "Bo", "Cy", "Di", "Ed"))
    ],
}


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings())
    try:
        settings = admin_settings(tmp_path, **{"upstream.base_url": f"http://127.0.0.1:{port}/v1"})
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await sim.cleanup()


async def _seed(clients: Clients, *versions: dict[str, Any]) -> None:
    _, admin, services = clients
    for body in versions:
        resp = await admin.post("/admin/v1/prompts/support/versions", json=body, headers=ADMIN)
        assert resp.status == 201, await resp.text()
    resp = await admin.post(
        "/admin/v1/prompts/support/promote", json={"version": 1, "reason": "r"}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    assert await services.refresher.load_once()


async def _run(admin: Any, body: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
    resp = await admin.post(f"/admin/v1/prompts/support/evals{query}", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in (await resp.read()).splitlines() if line.strip()]


async def test_a_truncating_candidate_is_caught_and_the_run_is_stored(
    clients: Clients, caplog: Any
) -> None:
    _, admin, _ = clients
    await _seed(clients, SUPPORT_V1, SUPPORT_V2)
    caplog.set_level(logging.INFO, logger="promptproxy.access")

    events = await _run(admin, {"suite": SUITE, "candidate": 2})

    started, *progress, finished = events
    assert started["event"] == "started"
    assert started["total"] == 5 * 6 * 2
    assert EVAL_RUN_ID.fullmatch(started["id"])
    assert progress
    assert all(e["event"] == "progress" for e in progress)
    assert progress[-1]["done"] == started["total"]
    assert finished["event"] == "finished"
    run = finished["run"]
    summary = run["summary"]
    assert (run["candidate"], run["baseline"]) == (2, 1)  # the baseline is prod by default
    assert summary["baseline"]["pass_rate"] == 1.0
    assert summary["candidate"]["pass_rate"] < 0.5
    assert summary["difference"]["significant_drop"] is True
    assert run["passed"] is False
    assert summary["regressed_count"] >= 1
    assert any(row["regressed"] for row in run["detail"]["rows"])
    failed = [
        sample
        for case in run["detail"]["cases"]
        for sample in case["sides"]["candidate"]
        if not sample["passed"]
    ]
    assert failed
    # Each failed because it was cut short (a cut may also lose the words checked for).
    for sample in failed:
        assert sample["finish_reason"] == "length"
        (finish,) = [f for f in sample["failures"] if f["type"] == "finish_reason"]
        assert "'length'" in finish["detail"]

    # Every call went through the request path, pinned, as the eval arm.
    lines = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert len(lines) == started["total"]
    assert {line["arm"] for line in lines} == {"eval"}
    assert {line["version"] for line in lines} == {"1", "2"}
    # ... and none of them is anybody's traffic in the metrics.
    metrics = await (await admin.get("/metrics")).text()
    requests = [line for line in metrics.splitlines() if line.startswith("promptproxy_requests")]
    assert not [line for line in requests if 'slug="support"' in line]

    # Stored: listed without samples, read whole by id, by a read-only token too.
    resp = await admin.get("/admin/v1/prompts/support/evals", headers=READER)
    listed = (await resp.json())["data"]
    assert [r["id"] for r in listed] == [run["id"]]
    assert listed[0]["detail"] == {}
    assert listed[0]["summary"] == summary
    resp = await admin.get(f"/admin/v1/evals/{run['id']}", headers=READER)
    assert (await resp.json())["detail"] == run["detail"]
    resp = await admin.get("/admin/v1/prompts/support/evals?candidate=1", headers=READER)
    assert (await resp.json())["data"] == []


async def test_the_same_version_against_itself_passes(clients: Clients) -> None:
    _, admin, _ = clients
    await _seed(clients, SUPPORT_V1)
    *_, finished = await _run(admin, {"suite": SUITE, "candidate": 1, "max_drop": 0.1})
    run = finished["run"]
    assert run["passed"] is True
    assert run["summary"]["difference"]["value"] == 0.0
    assert run["summary"]["regressed"] == []
    assert not any(row["regressed"] for row in run["detail"]["rows"])


async def test_refusals_name_what_is_wrong_before_any_call(clients: Clients) -> None:
    _, admin, services = clients
    await _seed(clients, SUPPORT_V1)
    url = "/admin/v1/prompts/support/evals"

    async def refused(body: Any, status: int, path: str = url) -> dict[str, Any]:
        resp = await admin.post(path, json=body, headers=ADMIN)
        assert resp.status == status, await resp.text()
        error: dict[str, Any] = (await resp.json())["error"]
        return error

    assert (await refused({"suite": SUITE, "candidate": 7}, 404))["code"] == "version_not_found"
    other = {**SUITE, "slug": "billing"}
    assert "billing" in (await refused({"suite": other, "candidate": 1}, 400))["message"]
    broken = {**SUITE, "cases": [{"name": "x", "messages": [], "assert": []}]}
    error = await refused({"suite": broken, "candidate": 1}, 400)
    assert error["code"] == "invalid_suite"
    modelless = {key: value for key, value in SUITE.items() if key != "model"}
    error = await refused({"suite": modelless, "candidate": 1}, 400)
    assert "model" in error["message"]
    resp = await admin.post(url, json={"suite": SUITE, "candidate": 1}, headers=READER)
    assert resp.status == 403
    # Nothing ran, nothing was stored.
    assert await services.evals.history(services.snapshot.current.plain_keys["support"]) == []


async def test_a_caller_cannot_pass_for_an_eval(clients: Clients) -> None:
    data, _, _ = clients
    await _seed(clients, SUPPORT_V1)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt_variables": {"customer_name": "Ana"},
    }
    resp = await data.post(
        "/p/support/v1/chat/completions",
        json=body,
        headers={"x-promptproxy-eval": "guess", "x-prompt-version": "1"},
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_eval_key"


async def test_the_cli_prints_a_table_json_and_markdown_and_exits_3_when_not_passed(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, _ = clients
    await _seed(clients, SUPPORT_V1, SUPPORT_V2)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "support.eval.yaml").write_text(yaml.safe_dump(SUITE), encoding="utf-8")
    markdown = tmp_path / "summary.md"

    result = await run_cli(
        admin,
        "eval",
        "support",
        "--candidate",
        "2",
        "--prompts",
        str(prompts),
        "--markdown",
        str(markdown),
        token=ADMIN_TOKEN,
    )
    assert result.exit_code == 3, result.output
    assert "REGRESSED" in result.stdout
    assert "NOT PASSED" in result.stdout
    assert "candidate v2:" in result.stdout
    text = markdown.read_text(encoding="utf-8")
    assert text.startswith("### ❌ Eval of `support` v2 against v1: did not pass")
    assert "finish_reason" in text

    result = await run_cli(
        admin,
        "-o",
        "json",
        "eval",
        "support",
        "--candidate",
        "1",
        "--prompts",
        str(prompts),
        token=ADMIN_TOKEN,
    )
    assert result.exit_code == 0, result.output
    run = orjson.loads(result.stdout)
    assert run["passed"] is True

    # Both runs are in the prompt's history, newest first.
    result = await run_cli(admin, "prompts", "history", "support")
    assert result.exit_code == 0, result.output
    history = result.stdout.split("Eval runs (newest first):")[1]
    assert history.index(run["id"]) < history.index("not passed")


async def test_a_run_goes_on_when_its_follower_leaves(clients: Clients) -> None:
    _, admin, services = clients
    await _seed(clients, SUPPORT_V1)
    resp = await admin.post(
        "/admin/v1/prompts/support/evals", json={"suite": SUITE, "candidate": 1}, headers=ADMIN
    )
    started = orjson.loads(await resp.content.readline())
    resp.close()  # the CLI was interrupted
    key = services.snapshot.current.plain_keys["support"]
    for _ in range(200):
        if await services.evals.history(key):
            break
        await asyncio.sleep(0.05)
    (stored,) = await services.evals.history(key)
    assert stored.id == started["id"]


async def test_eval_calls_carry_a_callers_key_where_providers_take_the_callers(
    tmp_path: Path,
) -> None:
    # The provider wants a key and the proxy forwards each caller's: an eval call is a
    # caller too, with the key evals.api_key_env names.
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(api_key="sk-sim-eval-1"))
    try:
        for environ, status in (({"EVAL_KEY": "sk-sim-eval-1"}, 200), ({}, 401)):
            settings = admin_settings(
                tmp_path / str(status), **{"upstream.base_url": f"http://127.0.0.1:{port}/v1"}
            )
            # What load_config reads from evals.api_key_env (tests/unit/test_config.py).
            settings = dataclasses.replace(settings, eval_api_key=environ.get("EVAL_KEY"))
            async with proxy_clients(settings) as trio:
                await _seed(trio, SUPPORT_V1)
                body = {"suite": {**SUITE, "samples": 1}, "candidate": 1, "baseline": None}
                *_, finished = await _run(trio[1], body)
                statuses = {
                    sample["status"]
                    for case in finished["run"]["detail"]["cases"]
                    for sample in case["sides"]["candidate"]
                }
                assert statuses == {status}
    finally:
        await sim.cleanup()
