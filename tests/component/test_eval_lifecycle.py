"""An eval run's life: an answer its checks cannot read fails its sample, not the run; a run
cut short by a shutdown is not stored (a failed run stored then would be what the gates
read); finished runs are not held in memory without bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.evals.report import CANDIDATE
from proxy.evals.runner import Plan, Runner, Target
from proxy.evals.suite import parse_suite
from proxy.prompt_key import PromptKey
from proxy.simulator import SimulatorSettings, start_simulator
from tests.support import ADMIN, Clients, admin_settings, proxy_clients

SUITE: dict[str, Any] = {
    "slug": "support",
    "samples": 2,
    "model": "gpt-4o-mini",
    "cases": [
        {
            "name": f"case-{n}",
            "messages": [{"role": "user", "content": f"question {n}"}],
            "assert": [{"type": "json_schema", "schema": {"type": "array"}}],
        }
        for n in range(3)
    ],
}


async def test_an_answer_the_checks_cannot_read_fails_its_sample_only() -> None:
    # A "data plane" whose first answer nests JSON past any parser's depth.
    calls = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        text = "[" * 100_000 if calls == 1 else "[1]"
        body = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_post("/p/support/v1/chat/completions", chat)
    server = TestServer(app)
    await server.start_server()
    try:
        suite = parse_suite(SUITE)
        plan = Plan(
            PromptKey("support"),
            suite,
            ((CANDIDATE, 1),),
            {c.name: "m" for c in suite.cases},
            concurrency=1,
        )
        async with aiohttp.ClientSession() as session:
            target = Target(str(server.make_url("")).rstrip("/"), "key")
            cases = await Runner(session, target, plan, lambda: None, 10.0).run()
    finally:
        await server.close()
    samples = [s for case in cases for s in case.sides[CANDIDATE]]
    assert calls == 6
    assert [s.passed for s in samples] == [False, True, True, True, True, True]
    assert "unreadable" in (samples[0].error or "")


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[Clients]:
    # Answers take 300 ms: a run of 6 calls one at a time is still running when stopped.
    sim, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(first_byte_ms=300))
    try:
        settings = admin_settings(tmp_path, **{"upstream.base_url": f"http://127.0.0.1:{port}/v1"})
        async with proxy_clients(settings) as trio:
            yield trio
    finally:
        await sim.cleanup()


async def test_a_run_cut_by_a_shutdown_is_not_stored(slow: Clients) -> None:
    _, admin, services = slow
    await admin.post("/admin/v1/prompts/support/versions", json={"template": "Hi."}, headers=ADMIN)
    await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert await services.refresher.load_once()
    suite = {
        **SUITE,
        "cases": [{**c, "assert": [{"finish_reason": "stop"}]} for c in SUITE["cases"]],
    }
    body = {"suite": suite, "candidate": 1, "concurrency": 1}
    resp = await admin.post("/admin/v1/prompts/support/evals", json=body, headers=ADMIN)
    started = orjson.loads(await resp.content.readline())
    await asyncio.sleep(0.4)  # a call or two done
    await services.evals.close()  # what the server does on SIGTERM, before its data plane
    lines = [orjson.loads(x) for x in (await resp.read()).splitlines() if x.strip()]
    assert lines[-1]["event"] == "failed"
    assert "not stored" in lines[-1]["error"]
    key = services.snapshot.current.plain_keys["support"]
    assert await services.evals.history(key) == []
    progress = services.evals.progress(started["id"])
    assert progress is not None
    assert progress.state == "failed"
    # No run starts any more on this process.
    resp = await admin.post("/admin/v1/prompts/support/evals", json=body, headers=ADMIN)
    assert resp.status == 503
