"""Drift on an eval run: a candidate whose answers differ from the baseline's beyond the
baseline's own noise is flagged, whatever its functional assertions say; an edit that
changes nothing a model answers differently is not. The provider is a real simulator
process's HTTP face, whose answers depend on the prompt's content words."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.simulator import SimulatorSettings, start_simulator
from tests.support import ADMIN, Clients, admin_settings, proxy_clients

V1 = {
    "template": "You answer {{ customer_name }} about routers, kindly and briefly.",
    "variables": [{"name": "customer_name", "type": "string"}],
}
# Courtesy words change no answer of the simulator (as a cosmetic edit of a real prompt
# changes little): noise-only.
COSMETIC = {**V1, "template": "Please, " + V1["template"] + " Thanks."}
# Three times longer answers: every functional assertion below still passes.
LONGER = {**V1, "template": V1["template"] + " [[sim longer=3]]"}
SUITE: dict[str, Any] = {
    "slug": "support",
    "samples": 4,
    "model": "gpt-4o-mini",
    "cases": [
        {
            "name": f"ticket-{n}",
            "variables": {"customer_name": name},
            "messages": [{"role": "user", "content": f"My router {n} keeps rebooting."}],
            "assert": [{"type": "finish_reason", "value": "stop"}],
        }
        for n, name in enumerate(("Ana", "Bo", "Cy", "Di"))
    ],
}


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    # Seeded, and the runs below send one call at a time: the noise directive's draws are
    # the same on every run, so the verdicts are too.
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(seed=7))
    try:
        settings = admin_settings(tmp_path, **{"upstream.base_url": f"http://127.0.0.1:{port}/v1"})
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await sim.cleanup()


async def _run(
    clients: Clients, candidate: int, versions: tuple[dict[str, Any], ...] = (V1, COSMETIC, LONGER)
) -> dict[str, Any]:
    _, admin, services = clients
    for body in versions:
        await admin.post("/admin/v1/prompts/support/versions", json=body, headers=ADMIN)
    await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert await services.refresher.load_once()
    resp = await admin.post(
        "/admin/v1/prompts/support/evals",
        json={"suite": SUITE, "candidate": candidate, "concurrency": 1},
        headers=ADMIN,
    )
    assert resp.status == 200
    *_, finished = [orjson.loads(x) for x in (await resp.read()).splitlines() if x.strip()]
    run: dict[str, Any] = finished["run"]
    return run


async def test_longer_answers_drift_though_every_assertion_passes(clients: Clients) -> None:
    run = await _run(clients, 3)
    assert run["summary"]["candidate"]["pass_rate"] == 1.0
    drift = run["summary"]["drift"]
    assert drift["result"] == "fail"
    assert drift["candidate_pairs"] == drift["noise_pairs"] == 16
    failed = {m["measure"] for m in drift["measures"] if m["result"] == "fail"}
    assert {"length_drift", "text_distance"} <= failed
    assert "finish_reason_changed" not in failed


async def test_a_cosmetic_edit_does_not_drift(clients: Clients) -> None:
    run = await _run(clients, 2)
    drift = run["summary"]["drift"]
    assert drift["result"] == "pass"
    assert {m["result"] for m in drift["measures"]} <= {"pass", "inconclusive"}
    by_name = {m["measure"]: m for m in drift["measures"]}
    assert by_name["refusal_rate"]["candidate_mean"] == 0.0
    assert by_name["text_distance"]["candidate_mean"] == 0.0


def _noisy(version: dict[str, Any]) -> dict[str, Any]:
    return {**version, "template": version["template"] + " [[sim noise=0.3]]"}


async def test_drift_is_judged_against_the_baselines_own_noise(clients: Clients) -> None:
    # A model that answers differently every time: candidate pairs differ as much as the
    # baseline's own pairs do, which is no drift; made longer on top, it is.
    versions = (_noisy(V1), _noisy(COSMETIC), _noisy(LONGER))
    same = (await _run(clients, 2, versions))["summary"]["drift"]
    by_name = {m["measure"]: m for m in same["measures"]}
    assert by_name["text_distance"]["noise_mean"] > 0.1
    assert same["result"] == "pass"
    longer = (await _run(clients, 3, versions))["summary"]["drift"]
    assert longer["result"] == "fail"
