"""Judges are registry prompts: a judge assertion is scored by the judge's prod version
through the proxy's own request path, every score names the judge's version, and a judge's
own labelled suite measures its agreement, so a worse judge version shows up before it
judges anything. The provider is a real simulator process's HTTP face; its `sim-judge`
model scores an answer by the share of its words that are not the simulator's noise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.simulator import SimulatorSettings, start_simulator
from tests.support import ADMIN, Clients, admin_settings, proxy_clients

JUDGE = {
    "template": "You grade an answer against this rubric: {{ rubric }}\n"
    'Reply with JSON only: {"score": <0 to 1>, "reason": "<one sentence>"}.',
    "variables": [{"name": "rubric", "type": "string"}],
    "model": "sim-judge",
}
SUPPORT = {
    "template": "You answer {{ customer_name }} about routers, kindly and briefly.",
    "variables": [{"name": "customer_name", "type": "string"}],
}
# Half the answer's words replaced by unrelated ones: still a whole answer that ends with
# `stop` and is long enough, so only a judge can tell.
NOISY = {**SUPPORT, "template": SUPPORT["template"] + " [[sim noise=0.5]]"}
SUITE: dict[str, Any] = {
    "slug": "support",
    "samples": 4,
    "model": "gpt-4o-mini",
    "cases": [
        {
            "name": f"ticket-{n}",
            "variables": {"customer_name": name},
            "messages": [{"role": "user", "content": f"My router {n} keeps rebooting."}],
            "assert": [
                {"type": "finish_reason", "value": "stop"},
                {"type": "length", "min_words": 3},
                {
                    "type": "judge",
                    "rubric": "Stays on the customer's question, no stray words.",
                    "threshold": 0.9,
                    "judge": "judge.quality",
                },
            ],
        }
        for n, name in enumerate(("Ana", "Bo", "Cy", "Di", "Ed"))
    ],
}


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings())
    try:
        settings = admin_settings(
            tmp_path,
            **{
                "upstream.base_url": f"http://127.0.0.1:{port}/v1",
                # The support prompt needs a passing eval and judge before it serves.
                "gates.slugs": [{"match": "support", "require": ["eval", "judge"]}],
            },
        )
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await sim.cleanup()


async def _push(clients: Clients, slug: str, *versions: dict[str, Any]) -> None:
    _, admin, services = clients
    for body in versions:
        resp = await admin.post(f"/admin/v1/prompts/{slug}/versions", json=body, headers=ADMIN)
        assert resp.status == 201, await resp.text()
    first = {"version": 1, "reason": "first version", "override_gates": slug == "support"}
    resp = await admin.post(f"/admin/v1/prompts/{slug}/promote", json=first, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert await services.refresher.load_once()


async def _run(admin: Any, slug: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await admin.post(f"/admin/v1/prompts/{slug}/evals", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines() if line.strip()]
    assert lines[-1]["event"] == "finished", lines[-1]
    run: dict[str, Any] = lines[-1]["run"]
    return run


async def test_a_judge_catches_what_every_functional_assertion_passes(clients: Clients) -> None:
    admin = clients[1]
    await _push(clients, "judge.quality", JUDGE)
    await _push(clients, "support", SUPPORT, NOISY)

    run = await _run(admin, "support", {"suite": SUITE, "candidate": 2})

    samples = [
        (side, sample)
        for case in run["detail"]["cases"]
        for side, found in case["sides"].items()
        for sample in found
    ]
    # Every functional assertion passed on both versions; only the judge tells them apart.
    assert all(f["type"] == "judge" for _, s in samples for f in s["failures"])
    summary = run["summary"]
    assert summary["baseline"]["pass_rate"] == 1.0
    assert summary["candidate"]["pass_rate"] < 0.5
    assert summary["baseline"]["judge"] == {"mean": 1.0, "n": 20, "unscored": 0}
    assert summary["candidate"]["judge"]["mean"] < 0.8
    assert summary["judge_difference"]["significant_drop"] is True
    assert run["passed"] is False
    # Every score names the judge version that gave it, and the run records it.
    assert run["judges"] == [["judge.quality", 1]]
    scores = [score for _, s in samples for score in s["scores"]]
    assert len(scores) == 40
    assert {(s["judge"], s["version"]) for s in scores} == {("judge.quality", 1)}
    assert all(s["reason"] for s in scores)


async def test_the_judge_used_is_its_prod_version_at_the_start(clients: Clients) -> None:
    _, admin, services = clients
    await _push(clients, "judge.quality", JUDGE, {**JUDGE, "model": "sim-judge-strict"})
    await _push(clients, "support", SUPPORT)
    resp = await admin.post(
        "/admin/v1/prompts/judge.quality/promote", json={"version": 2, "reason": "r"}, headers=ADMIN
    )
    assert resp.status == 200
    assert await services.refresher.load_once()
    run = await _run(admin, "support", {"suite": SUITE, "candidate": 1, "baseline": None})
    assert run["judges"] == [["judge.quality", 2]]


# Answers of 20 words with 0, 1 or 4 noise words; a person labelled those with at most
# one stray word good enough and the last bad.
_WORDS = [
    "the",
    "router",
    "restarts",
    "because",
    "its",
    "firmware",
    "update",
    "failed",
    "so",
    "reset",
    "it",
    "and",
    "retry",
]


def _answer(noise: int) -> str:
    words = (_WORDS * 2)[:20]
    for i in range(noise):
        words[2 + 4 * i] = "banana"
    return " ".join(words)


JUDGE_SUITE: dict[str, Any] = {
    "slug": "judge.quality",
    "samples": 1,
    "cases": [
        {
            "name": f"example-{n}-{noise}-stray-words",
            "variables": {"rubric": "Stays on the customer's question, no stray words."},
            "messages": [
                {
                    "role": "user",
                    "content": f"Question:\nuser: why does it reboot?\n\nAnswer:\n{_answer(noise)}",
                }
            ],
            "assert": [{"type": "label", "expected": label, "threshold": 0.9}],
        }
        for n, (noise, label) in enumerate(
            ((0, "pass"), (0, "pass"), (1, "pass"), (1, "pass"), (4, "fail"))
        )
    ],
}


async def test_a_worse_judge_version_agrees_less_with_the_labels(clients: Clients) -> None:
    admin = clients[1]
    # v2 fails any answer with a single stray word: stricter than the people who labelled.
    await _push(clients, "judge.quality", JUDGE, {**JUDGE, "model": "sim-judge-strict"})

    run = await _run(admin, "judge.quality", {"suite": JUDGE_SUITE, "candidate": 2})

    summary = run["summary"]
    assert summary["baseline"]["agreement"] == {"n": 5, "accuracy": 1.0, "kappa": 1.0}
    worse = summary["candidate"]["agreement"]
    assert worse["accuracy"] == pytest.approx(0.6)
    assert worse["kappa"] < 0.5
    assert summary["candidate"]["pass_rate"] < summary["baseline"]["pass_rate"]
    assert run["passed"] is False


async def test_a_judge_must_be_usable_before_anything_runs(clients: Clients) -> None:
    _, admin, _ = clients
    await _push(clients, "support", SUPPORT)
    url = "/admin/v1/prompts/support/evals"
    body = {"suite": SUITE, "candidate": 1, "baseline": None}
    resp = await admin.post(url, json=body, headers=ADMIN)
    assert resp.status == 400
    assert "judge.quality" in (await resp.json())["error"]["message"]
    # A judge pinning no model cannot give comparable scores.
    await _push(clients, "judge.quality", {k: v for k, v in JUDGE.items() if k != "model"})
    resp = await admin.post(url, json=body, headers=ADMIN)
    assert resp.status == 400
    assert "pins no model" in (await resp.json())["error"]["message"]


async def test_the_seed_incident_is_blocked_by_the_gate_and_let_through_audited(
    clients: Clients,
) -> None:
    # Slack's case: a change that passes every functional assertion but reads worse.
    _, admin, _ = clients
    await _push(clients, "judge.quality", JUDGE)
    await _push(clients, "support", SUPPORT, NOISY)
    run = await _run(admin, "support", {"suite": SUITE, "candidate": 2, "min_pass_rate": 0})

    promote = {"version": 2, "reason": "ship the new wording"}
    resp = await admin.post("/admin/v1/prompts/support/promote", json=promote, headers=ADMIN)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "gates_not_passed"
    assert "judge: run " + run["id"] in error["message"]
    assert "eval: run " + run["id"] in error["message"]

    overridden = {**promote, "override_gates": True, "reason": "VP sign-off, ticket 42"}
    resp = await admin.post("/admin/v1/prompts/support/promote", json=overridden, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    resp = await admin.get("/admin/v1/prompts/support/history", headers=ADMIN)
    (entry,) = [e for e in (await resp.json())["data"] if e["action"] == "promote"][:1]
    assert (entry["version"], entry["actor"]) == (2, "admin")
    assert entry["reason"].startswith("VP sign-off, ticket 42 [gates overridden: eval: ")
    assert f"judge: run {run['id']}: judge score" in entry["reason"]
