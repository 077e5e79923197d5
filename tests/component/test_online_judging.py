"""Online judging: a share of the answers production serves is judged off the request path
by a judge prompt's prod version, the scores are metrics per version and arm, and a
canary whose answers a judge scores lower fails the analysis's ``judge_score`` check while
every other check passes. The primary's answers are untouched, a full queue drops and
counts, and the judge's own calls are in no traffic figure. The provider is a real
simulator process; its `sim-judge` model scores an answer by the share of its words that
are not the simulator's noise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.analysis.analyser import Analyser
from proxy.config import AnalysisConfig
from proxy.prompt_key import PromptKey
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
# Half the answer's words replaced by unrelated ones: a whole answer ending with `stop`, of
# the same length, so only a judge can tell.
NOISY = {**SUPPORT, "template": SUPPORT["template"] + " [[sim noise=0.5]]"}
RULE = {
    "match": "support",
    "share": 1.0,
    "rubric": "Stays on the customer's question, no stray words.",
    "judge": "judge.quality",
}


def _fixture(**overrides: Any) -> Callable[[Path], AsyncIterator[Clients]]:
    async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
        sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(seed=5))
        try:
            settings = admin_settings(
                tmp_path,
                **{
                    "upstream.base_url": f"http://127.0.0.1:{port}/v1",
                    "evals.online": [RULE],
                    **overrides,
                },
            )
            async with proxy_clients(settings) as trio:
                yield trio
        finally:
            await sim.cleanup()

    return clients


clients = pytest.fixture(_fixture())
small_queue = pytest.fixture(_fixture(**{"evals.online_queue_size": 2}))


async def _push(clients: Clients, slug: str, *versions: dict[str, Any]) -> None:
    _, admin, services = clients
    for body in versions:
        resp = await admin.post(f"/admin/v1/prompts/{slug}/versions", json=body, headers=ADMIN)
        assert resp.status == 201, await resp.text()
    resp = await admin.post(
        f"/admin/v1/prompts/{slug}/promote", json={"version": 1, "reason": "r"}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    assert await services.refresher.load_once()


async def _ask(clients: Clients, slug: str, n: int) -> str:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Ticket {n}: my router reboots nightly."}],
        "prompt_variables": {"customer_name": f"customer {n}"},
    }
    resp = await clients[0].post(f"/p/{slug}/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    return str(answer["choices"][0]["message"]["content"])


async def _metrics(clients: Clients) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = await clients[1].get("/metrics", headers=ADMIN)
    assert resp.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


def _labelled(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_scores_are_metrics_per_version_and_arm_and_the_judge_is_no_traffic(
    clients: Clients,
) -> None:
    services = clients[2]
    await _push(clients, "judge.quality", JUDGE)
    await _push(clients, "support", SUPPORT)
    # The same prompt under a slug no rule samples: the answers a caller gets unjudged.
    await _push(clients, "plain", SUPPORT)

    judged = [await _ask(clients, "support", n) for n in range(12)]
    unjudged = [await _ask(clients, "plain", n) for n in range(12)]
    await services.online.drain()

    # The primary's answers are what they would be without a judge.
    assert judged == unjudged
    m = await _metrics(clients)
    score = {"slug": "support", "version": "1", "arm": "stable", "variant": ""}
    assert _labelled(m, "promptproxy_judge_score_count", **score) == 12
    assert _labelled(m, "promptproxy_judge_score_sum", **score) == 12.0  # no noise: 1.0 each
    assert _labelled(m, "promptproxy_judge_score_count", slug="plain") == 0
    assert _labelled(m, "promptproxy_online_judge_total", result="scored") == 12
    # The 24 callers' requests, and not the 12 judge calls.
    assert _labelled(m, "promptproxy_requests_total") == 24
    assert _labelled(m, "promptproxy_requests_total", slug="judge.quality") == 0


async def test_a_full_queue_drops_and_counts_and_requests_still_answer(
    small_queue: Clients,
) -> None:
    clients = small_queue
    services = clients[2]
    await _push(clients, "judge.quality", JUDGE)
    await _push(clients, "support", SUPPORT)
    # No worker takes answers any more: the queue of 2 fills.
    await services.online.close()

    for n in range(5):
        await _ask(clients, "support", n)

    m = await _metrics(clients)
    assert services.online.pending == 2
    assert _labelled(m, "promptproxy_online_judge_total", result="queue_full") == 3
    assert _labelled(m, "promptproxy_requests_total", slug="support") == 5


async def test_a_judge_without_prod_is_counted_not_called(clients: Clients) -> None:
    services = clients[2]
    await _push(clients, "support", SUPPORT)

    for n in range(3):
        await _ask(clients, "support", n)
    await services.online.drain()

    m = await _metrics(clients)
    assert _labelled(m, "promptproxy_online_judge_total", result="no_judge") == 3
    assert _labelled(m, "promptproxy_requests_total") == 3


async def test_a_canary_the_judge_scores_lower_fails_the_judge_check_alone(
    clients: Clients,
) -> None:
    _, admin, services = clients
    await _push(clients, "judge.quality", JUDGE)
    await _push(clients, "support", SUPPORT, NOISY)
    interval = 60.0
    policy = {
        "interval": interval,
        "min_samples": 30,
        "thresholds": {"p95_ttft_ratio": None, "judge_drop": {"max_drop": 0.1}},
    }
    rollout = {
        "candidate": 2,
        "mode": "canary",
        "percent": 50,
        "sticky": "none",
        "analysis": policy,
        "reason": "r",
    }
    # The harness's analyser is the only one, on a clock the test moves; it reads the
    # window the request path and the online judge write.
    await services.analysis.close()
    resp = await admin.put("/admin/v1/prompts/support/rollout", json=rollout, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    assert await services.refresher.load_once()
    started = services.snapshot.current.rollouts[PromptKey("support")]

    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        async with gate:
            await _ask(clients, "support", n)

    await asyncio.gather(*(one(n) for n in range(160)))
    await services.online.drain()

    settle = 3.0  # the analyser's: flush_seconds + 1
    now = max(started.updated_at + interval + settle, time.time() + settle + 1)
    analyser = Analyser(
        config=AnalysisConfig(flush_seconds=2.0),
        snapshot=lambda: services.snapshot.current,
        registry=services.registry,
        recorder=services.analysis.recorder,
        pool=services.backend.pool,
        lease=services.backend.lease,
        state=services.backend.state,
        metrics=services.metrics,
        clock=lambda: now,
    )
    await analyser.flush()
    await analyser.tick()
    status = await analyser.status(started)
    assert status is not None
    (verdict,) = status["verdicts"]
    checks = {c["name"]: c for c in verdict["checks"]}

    assert verdict["verdict"] == "fail"
    assert checks["judge_score"]["result"] == "fail"
    assert checks["judge_score"]["stable"] == 1.0
    assert checks["judge_score"]["candidate"] < 0.8
    others = {name: c["result"] for name, c in checks.items() if name != "judge_score"}
    assert set(others) == {"error_rate", "p95_latency", "length_finish", "answer_length"}
    assert set(others.values()) == {"pass"}, checks
    # No failure tolerated: the analyser aborted the rollout, saying why.
    assert await services.refresher.load_once()
    assert PromptKey("support") not in services.snapshot.current.rollouts
    (entry,) = await services.registry.audit(PromptKey("support"), limit=1)
    assert entry.action == "rollout_abort"
    assert "judge_score: mean" in entry.reason

    # The console's charts (the series route) read the same pool: the verdict's requests,
    # and the judge's scores per arm, after the abort too.
    resp = await admin.get(
        f"/admin/v1/prompts/support/rollout/series?since=5m&step=1&rollout={started.id}",
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()
    points = (await resp.json())["points"]
    for arm in ("stable", "canary"):
        assert sum(p["arms"][arm]["requests"] for p in points) == verdict["samples"][arm]
    judged = {
        arm: [p["arms"][arm]["judge"] for p in points if p["arms"][arm]["judge"] is not None]
        for arm in ("stable", "canary")
    }
    assert judged["stable"]
    assert set(judged["stable"]) == {1.0}
    assert judged["canary"]
    assert min(judged["canary"]) < 0.8


async def test_a_judge_check_that_could_get_no_scores_is_refused(clients: Clients) -> None:
    admin = clients[1]
    await _push(clients, "billing", SUPPORT, NOISY)
    rollout = {
        "candidate": 2,
        "mode": "canary",
        "percent": 10,
        "analysis": {"thresholds": {"judge_drop": {"max_drop": 0.1}}},
        "reason": "r",
    }
    resp = await admin.put("/admin/v1/prompts/billing/rollout", json=rollout, headers=ADMIN)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "analysis.thresholds.judge_drop"
    assert "evals.online" in error["message"]
