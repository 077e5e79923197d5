"""`GET /admin/v1/rollouts` gives each running rollout's last verdict (`analysis_summary`),
so the console's prompts list and `rollout status` show at a glance which candidates pass
and which fail, without a request per prompt. Verdicts come from real traffic: requests
through the proxy to a simulator process whose candidate answers fail, judged by an
analyser on a clock the test moves. A store that cannot give the summaries does not take
the list down: the list says so (`analysis_unavailable`) and still answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.analysis.analyser import Analyser
from proxy.config import AnalysisConfig
from proxy.prompt_key import PromptKey
from proxy.registry.models import Rollout
from proxy.simulator import SimulatorSettings, start_simulator
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, redis_server_fixture
from tests.support import ADMIN, READER, Clients, admin_settings, proxy_clients, run_cli

INTERVAL = 60.0
#: The harness analyser's flush_seconds + 1 (``Analyser._settle``).
SETTLE = 3.0
PLAIN = {
    "template": "You answer {{ name }} about routers, kindly and briefly.",
    "variables": [{"name": "name", "type": "string"}],
}
# Another wording, answered like the first.
GOOD = {**PLAIN, "template": PLAIN["template"] + " Thank them."}
# Every answer of this version is a 500 from the simulator: its error rate is 100 %.
BROKEN = {**PLAIN, "template": PLAIN["template"] + " [[sim error=1.0]]"}
POLICY = {"interval": INTERVAL, "min_samples": 20, "steps": [], "failure_limit": 3}


redis_server = redis_server_fixture("module")
postgres_server = postgres_server_fixture("module")


@pytest.fixture(params=["embedded", "redis", "postgres"])
async def clients(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Clients]:
    """Each backend's analysis state store, as the summaries read it."""
    store: dict[str, Any] = {}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        store = {"registry.store": redis.url, "registry.redis_prefix": f"t-{uuid.uuid4().hex}:"}
    elif request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        store = {"registry.store": postgres.new_database()}
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(seed=3))
    try:
        settings = admin_settings(
            tmp_path, **{"upstream.base_url": f"http://127.0.0.1:{port}/v1", **store}
        )
        async with proxy_clients(settings) as trio:
            # The test's analyser is the only one that judges, on its own clock; the
            # services' one still answers the admin routes from the same state store.
            await trio[2].analysis.close()
            yield trio
    finally:
        await sim.cleanup()


async def admin_call(
    clients: Clients, method: str, path: str, body: Any = None, headers: Any = ADMIN
) -> tuple[int, Any]:
    resp = await clients[1].request(method, f"/admin/v1{path}", json=body, headers=headers)
    return resp.status, await resp.json()


async def seed(clients: Clients, slug: str, candidate: dict[str, Any]) -> None:
    for body in (PLAIN, candidate):
        status, answer = await admin_call(clients, "POST", f"/prompts/{slug}/versions", body)
        assert status == 201, answer
    status, answer = await admin_call(
        clients, "POST", f"/prompts/{slug}/promote", {"version": 1, "reason": "r"}
    )
    assert status == 200, answer


async def start(clients: Clients, slug: str, policy: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"candidate": 2, "mode": "canary", "percent": 50, "sticky": "none"}
    if policy is not None:
        body["analysis"] = policy
    status, answer = await admin_call(clients, "PUT", f"/prompts/{slug}/rollout", body)
    assert status == 201, answer
    assert await clients[2].refresher.load_once()


async def traffic(clients: Clients, slug: str, requests: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Ticket {n}: the router reboots."}],
            "prompt_variables": {"name": f"customer {n}"},
        }
        async with gate:
            resp = await clients[0].post(f"/p/{slug}/v1/chat/completions", json=body)
            await resp.read()  # the candidate's answers are errors: any status will do

    await asyncio.gather(*(one(n) for n in range(requests)))


async def judge(clients: Clients) -> float:
    """One look of an analyser past every running rollout's first interval; its clock."""
    services = clients[2]
    rollouts = services.snapshot.current.rollouts.values()
    now = max(max(r.updated_at for r in rollouts) + INTERVAL + SETTLE, time.time() + SETTLE + 1)
    analyser = Analyser(
        config=AnalysisConfig(flush_seconds=SETTLE - 1),
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
    assert await services.refresher.load_once()
    return now


async def listed(clients: Clients) -> tuple[dict[str, Any], dict[str, Any]]:
    status, answer = await admin_call(clients, "GET", "/rollouts", headers=READER)
    assert status == 200, answer
    return answer, {item["slug"]: item for item in answer["data"]}


def running(clients: Clients, slug: str) -> Rollout:
    return clients[2].snapshot.current.rollouts[PromptKey(slug)]


async def test_the_list_gives_each_rollouts_last_verdict(clients: Clients) -> None:
    await seed(clients, "support", BROKEN)  # analysed: its candidate fails every call
    await seed(clients, "billing", GOOD)  # analysed: its candidate answers like stable
    await seed(clients, "faq", GOOD)  # a manual rollout: no policy, no verdicts
    await seed(clients, "onboarding", GOOD)  # analysed, started after the verdicts
    await start(clients, "support", POLICY)
    await start(clients, "billing", POLICY)
    await start(clients, "faq", None)
    await traffic(clients, "support", 120)
    await traffic(clients, "billing", 120)
    await traffic(clients, "faq", 20)

    now = await judge(clients)
    await start(clients, "onboarding", POLICY)
    answer, items = await listed(clients)

    assert answer["analysis_unavailable"] is False
    assert set(items) == {"support", "billing", "faq", "onboarding"}
    # The failed verdict did not end the rollout (3 failures are tolerated): it runs, and
    # the list shows it failing, as the rollout's own route does.
    support = items["support"]["analysis_summary"]
    assert support == {
        "last_verdict": "fail",
        "last_at": round(now, 3),
        "failures": 1,
        "next_at": now + INTERVAL,
    }
    status, detail = await admin_call(clients, "GET", "/prompts/support/rollout", headers=READER)
    assert status == 200, detail
    state = detail["analysis_state"]
    assert (state["verdicts"][0]["verdict"], state["verdicts"][0]["at"]) == ("fail", round(now, 3))
    assert (state["failures"], state["next_at"]) == (1, support["next_at"])

    billing = items["billing"]["analysis_summary"]
    assert (billing["last_verdict"], billing["failures"]) == ("pass", 0)
    # The policy stays where it was: `analysis` is the policy, the summary is beside it.
    assert items["billing"]["analysis"]["failure_limit"] == 3

    assert items["faq"]["analysis_summary"] is None
    assert items["faq"]["analysis"] is None

    # Not judged yet: no verdict, and the first is due after one interval.
    onboarding = items["onboarding"]["analysis_summary"]
    started = running(clients, "onboarding")
    assert (onboarding["last_verdict"], onboarding["last_at"], onboarding["failures"]) == (
        None,
        None,
        0,
    )
    assert onboarding["next_at"] > started.updated_at + INTERVAL

    # `rollout status` prints the same, briefly.
    shown = await run_cli(clients[1], "rollout", "status")
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[1:]}
    assert shown.stdout.splitlines()[0].split()[4] == "VERDICT"
    assert lines["support"][4:7] == ["fail", "(1", "failed)"]
    assert lines["billing"][4] == "pass"
    assert lines["faq"][4] == "manual"
    assert lines["onboarding"][4] == "pending"
    as_json = await run_cli(clients[1], "-o", "json", "rollout", "status")
    by_slug = {item["slug"]: item for item in orjson.loads(as_json.stdout)}
    assert by_slug["support"]["analysis_summary"] == support


async def test_the_list_answers_when_the_analysis_state_cannot_be_read(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(clients, "support", BROKEN)
    await seed(clients, "billing", GOOD)
    await seed(clients, "faq", GOOD)
    await start(clients, "support", POLICY)
    await start(clients, "billing", POLICY)
    await start(clients, "faq", None)
    await traffic(clients, "support", 120)
    await judge(clients)

    state = clients[2].backend.state
    load = state.load

    async def failing(key: PromptKey) -> Any:
        # The state of one prompt is out of reach (a store shard down, a corrupt record).
        if key == PromptKey("support"):
            raise ConnectionError("analysis store unreachable")
        return await load(key)

    monkeypatch.setattr(state, "load", failing)
    answer, items = await listed(clients)

    assert answer["analysis_unavailable"] is True
    assert set(items) == {"support", "billing", "faq"}
    # Unknown is not "no policy": the item that could not be read has no summary at all.
    assert "analysis_summary" not in items["support"]
    assert items["support"]["analysis"]["failure_limit"] == 3
    assert items["billing"]["analysis_summary"]["failures"] == 0
    assert items["faq"]["analysis_summary"] is None
    # The rollout's own route cannot answer without its state, and says so.
    status, detail = await admin_call(clients, "GET", "/prompts/support/rollout", headers=READER)
    assert status == 503, detail

    shown = await run_cli(clients[1], "rollout", "status")
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[1:]}
    assert lines["support"][4] == "?"
    assert lines["faq"][4] == "manual"
    assert "The analysis state could not be read" in shown.stdout

    monkeypatch.setattr(state, "load", load)
    answer, items = await listed(clients)
    assert answer["analysis_unavailable"] is False
    assert items["support"]["analysis_summary"]["last_verdict"] == "fail"
