"""Capture and replay: a sampled share of a prompt's calls is kept (redacted as logs are),
and `promptproxy replay` sends them again to a candidate and to the captured version,
comparing both with the captured answers: a degraded candidate is flagged, a noise-only one
passes, and live traffic is untouched. The provider is a real simulator process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.simulator import SimulatorSettings, start_simulator
from tests.support import ADMIN, ADMIN_TOKEN, Clients, admin_settings, proxy_clients, run_cli

BASE = {
    "template": "You answer {{ customer_name }} about routers, kindly. [[sim noise=0.2]]",
    "variables": [{"name": "customer_name", "type": "string"}],
}
COSMETIC = {**BASE, "template": "Please: " + BASE["template"]}
LONGER = {**BASE, "template": BASE["template"] + " [[sim longer=3]]"}


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(seed=11))
    try:
        settings = admin_settings(
            tmp_path,
            **{
                "upstream.base_url": f"http://127.0.0.1:{port}/v1",
                "capture.slugs": [{"match": "supp*", "share": 1.0}],
                "capture.flush_seconds": 60,  # the tests flush when they need to
            },
        )
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await sim.cleanup()


async def _traffic(clients: Clients, calls: int = 30) -> list[str]:
    """Versions 1 (prod) to 3, then ``calls`` requests; the answers' texts."""
    data, admin, services = clients
    for body in (BASE, COSMETIC, LONGER):
        resp = await admin.post("/admin/v1/prompts/support/versions", json=body, headers=ADMIN)
        assert resp.status == 201
    await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert await services.refresher.load_once()
    texts = []
    for n in range(calls):
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Ticket {n}: my router reboots nightly."}],
            "prompt_variables": {"customer_name": f"customer {n}"},
        }
        resp = await data.post("/p/support/v1/chat/completions", json=body)
        assert resp.status == 200
        texts.append((await resp.json())["choices"][0]["message"]["content"])
    await services.capture.flush()
    return texts


async def _replay(admin: Any, candidate: int) -> dict[str, Any]:
    body = {"candidate": candidate, "since": "1h", "concurrency": 1}
    resp = await admin.post("/admin/v1/prompts/support/replays", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    *_, finished = [orjson.loads(x) for x in (await resp.read()).splitlines() if x.strip()]
    assert finished["event"] == "finished", finished
    run: dict[str, Any] = finished["run"]
    return run


async def test_calls_are_captured_with_what_a_replay_needs_and_secrets_masked(
    clients: Clients,
) -> None:
    data, _, services = clients
    texts = await _traffic(clients, calls=3)
    secret = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "my key is sk-live0123456789abcdefXYZ"}],
        "prompt_variables": {"customer_name": "Ada"},
    }
    resp = await data.post("/p/support/v1/chat/completions", json=secret)
    assert resp.status == 200
    await services.capture.flush()
    captured = await services.capture.read("support", since=0)
    assert len(captured) == 4
    first = captured[0]
    assert (first.slug, first.version, first.arm, first.rollout_id) == (
        "support",
        1,
        "stable",
        None,
    )
    assert first.request["prompt_variables"] == {"customer_name": "customer 0"}
    assert first.answer["finish_reason"] == "stop"
    assert first.answer["text"] == texts[0]  # what the caller got
    assert first.prompt_hash is not None
    assert len(first.prompt_hash) == 16
    assert first.layers == "base@1"
    masked = captured[-1].request["messages"][0]["content"]
    assert "sk-live0123456789" not in masked
    assert "REDACTED" in masked


async def test_replay_flags_a_degraded_candidate_and_passes_a_noise_only_one(
    clients: Clients,
) -> None:
    _, admin, services = clients
    await _traffic(clients)

    same = await _replay(admin, 2)
    assert same["kind"] == "replay"
    replay = same["summary"]["replay"]
    assert replay["captures"] == 30
    assert replay["result"] == "pass"
    by_name = {m["measure"]: m for m in replay["measures"]}
    assert by_name["text_distance"]["noise_mean"] > 0.05  # the baseline varies: noise
    assert same["passed"] is True

    worse = await _replay(admin, 3)
    failed = {m["measure"] for m in worse["summary"]["replay"]["measures"] if m["result"] == "fail"}
    assert "length_drift" in failed
    assert worse["passed"] is False

    # The replays' own calls were not captured, and they are in the prompt's history.
    await services.capture.flush()
    assert len(await services.capture.read("support", since=0)) == 30
    resp = await admin.get("/admin/v1/prompts/support/evals", headers=ADMIN)
    assert [r["kind"] for r in (await resp.json())["data"]] == ["replay", "replay"]


async def test_nothing_to_replay_is_said(clients: Clients) -> None:
    _, admin, services = clients
    await admin.post("/admin/v1/prompts/support/versions", json=BASE, headers=ADMIN)
    await admin.post("/admin/v1/prompts/support/versions", json=COSMETIC, headers=ADMIN)
    await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert await services.refresher.load_once()
    resp = await admin.post(
        "/admin/v1/prompts/support/replays", json={"candidate": 2}, headers=ADMIN
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "nothing_to_replay"
    resp = await admin.post(
        "/admin/v1/prompts/support/replays",
        json={"candidate": 2, "since": "yesterday"},
        headers=ADMIN,
    )
    assert resp.status == 400


async def test_the_cli_replays_and_exits_3_on_a_degraded_candidate(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, _ = clients
    await _traffic(clients)
    result = await run_cli(
        admin, "replay", "support", "--candidate", "3", "--concurrency", "1", token=ADMIN_TOKEN
    )
    assert result.exit_code == 3, result.output
    assert "30 captured calls of v1 replayed on v3 and v1" in result.stdout
    assert "FAIL: the candidate diverges" in result.stdout
    assert "length_drift" in result.stdout


async def test_a_replay_takes_the_newest_calls_of_its_baseline(clients: Clients) -> None:
    data, admin, services = clients
    await _traffic(clients, calls=12)  # captured as v1
    await admin.post("/admin/v1/prompts/support/promote", json={"version": 2}, headers=ADMIN)
    assert await services.refresher.load_once()
    for n in range(12):  # now captured as v2
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Later ticket {n}"}],
            "prompt_variables": {"customer_name": "Ada"},
            "metadata": {"api_key": "hunter2-not-a-pattern"},
        }
        assert (await data.post("/p/support/v1/chat/completions", json=body)).status == 200
    await services.capture.flush()
    captured = await services.capture.read("support", since=0)
    assert captured[-1].request["metadata"]["api_key"] == "[REDACTED]"
    body = {"candidate": 3, "limit": 10, "concurrency": 1}
    resp = await admin.post("/admin/v1/prompts/support/replays", json=body, headers=ADMIN)
    *_, finished = [orjson.loads(x) for x in (await resp.read()).splitlines() if x.strip()]
    replay = finished["run"]["summary"]["replay"]
    assert finished["run"]["baseline"] == 2
    assert replay["captures"] == 10
    assert replay["skipped"] == {"v1": 12, "over_limit": 2}
