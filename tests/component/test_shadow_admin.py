"""The shadow pairs admin endpoint, in-process, and the whole path: a shadow rollout on the
data plane, the simulator as provider, pairs read back through the admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.services import Services
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta, SinkUnavailable
from proxy.simulator import SimulatorSettings, start_simulator
from proxy.web import admin_shadow
from tests.support import make_settings, proxy_clients

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}
PAIRS = "/admin/v1/prompts/support/shadow/pairs"

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    runner, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(chunks=4))
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.fixture
async def clients(tmp_path: Path, sim_url: str) -> AsyncIterator[Clients]:
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret", "READ_TOKEN": "read-secret"},
        **{
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "upstream.base_url": sim_url,
            "admin.tokens": [{"name": "dashboards", "env": "READ_TOKEN", "role": "read"}],
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
            # Every shadowed request also re-runs stable: the noise pairs are checked too.
            "shadow.noise_share": 1.0,
        },
    )
    async with proxy_clients(settings) as trio:
        yield trio


def pair(n: int, ts: float, slug: str = "support", rollout: str = "ro") -> Pair:
    meta = PairMeta(
        f"p{n}",
        PromptKey(slug),
        rollout,
        ShadowKind.CANDIDATE.value,
        f"r{n}",
        Route.CHAT.value,
        False,
    )
    return Pair.build(meta, ArmResult(version=1, text="a"), ArmResult(version=2, text="b"), ts)


async def eventually(check: Callable[[], Any]) -> None:
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 10 s")


async def lines(admin: TestClient[Any, Any], **params: str) -> list[dict[str, Any]]:
    resp = await admin.get(PAIRS, params=params, headers=READER)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/x-ndjson"
    return [orjson.loads(line) for line in (await resp.read()).splitlines() if line]


async def recorded(admin: TestClient[Any, Any], count: int, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal found
        found = await lines(admin, **params)
        return len(found) >= count

    await eventually(enough)
    return found


async def test_pairs_are_served_as_json_lines_oldest_first(clients: Clients) -> None:
    _, admin, services = clients
    now = time.time()
    services.shadow.sink.add(pair(0, now - 3600))  # an hour ago
    for n in range(1, 6):
        services.shadow.sink.add(pair(n, now - 60 + n))
    services.shadow.sink.add(pair(9, now, slug="billing"))
    everything = await recorded(admin, 6, limit="100")
    assert [p["pair_id"] for p in everything] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert [p["pair_id"] for p in await lines(admin, since="10m")] == ["p1", "p2", "p3", "p4", "p5"]
    assert [p["pair_id"] for p in await lines(admin, since="600", limit="2")] == ["p1", "p2"]
    assert [p["pair_id"] for p in await lines(admin, since=repr(now - 57.5))] == ["p3", "p4", "p5"]
    assert [p["pair_id"] for p in await lines(admin, limit="2")] == ["p4", "p5"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no zone
        ({"limit": "0"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"follow": "maybe"}, "follow"),
    ],
)
async def test_bad_input_is_a_400_in_the_openai_shape(
    clients: Clients, params: dict[str, str], param: str
) -> None:
    _, admin, _ = clients
    resp = await admin.get(PAIRS, params=params, headers=READER)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_a_bad_slug_is_refused(clients: Clients) -> None:
    _, admin, _ = clients
    resp = await admin.get("/admin/v1/prompts/a%20b/shadow/pairs", headers=READER)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "slug"


async def test_reading_needs_a_token_and_the_read_role_suffices(clients: Clients) -> None:
    _, admin, _ = clients
    assert (await admin.get(PAIRS)).status == 401
    assert (await admin.get(PAIRS, headers={"Authorization": "Bearer nope"})).status == 401
    assert (await admin.get(PAIRS, headers=READER)).status == 200
    assert (await admin.get(PAIRS, headers=ADMIN)).status == 200


async def test_an_unreachable_pair_store_is_a_503(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, admin, services = clients

    async def down(*_: Any) -> list[dict[str, Any]]:
        raise SinkUnavailable("redis unavailable for shadow pairs: ConnectionError")

    monkeypatch.setattr(services.shadow.sink, "read", down)
    resp = await admin.get(PAIRS, headers=READER)
    assert resp.status == 503
    assert "unavailable" in (await resp.json())["error"]["message"]


async def test_follow_streams_new_pairs_with_heartbeats_until_draining(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_shadow, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(admin_shadow, "_TICK", 0.05)
    _, admin, services = clients
    now = time.time()
    services.shadow.sink.add(pair(1, now - 30))
    await recorded(admin, 1)

    resp = await admin.get(PAIRS, params={"since": "1m", "follow": "true"}, headers=READER)
    assert resp.status == 200
    assert orjson.loads(await resp.content.readline())["pair_id"] == "p1"  # the backlog
    assert await resp.content.readline() == b"\n"  # idle: a heartbeat keeps it open
    services.shadow.sink.add(pair(2, time.time()))
    line = await resp.content.readline()
    while line == b"\n":
        line = await resp.content.readline()
    assert orjson.loads(line)["pair_id"] == "p2"

    services.lifecycle.start_draining()
    async with asyncio.timeout(5):
        rest = await resp.content.read()  # the server ends the response
    assert rest.strip() == b""


async def test_follow_keeps_only_the_named_rollouts_pairs(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_shadow, "_TICK", 0.05)
    _, admin, services = clients
    now = time.time()
    services.shadow.sink.add(pair(1, now - 30, rollout="earlier"))
    services.shadow.sink.add(pair(2, now - 20))
    await recorded(admin, 2)

    params = {"since": "1m", "follow": "true", "rollout": "ro"}
    resp = await admin.get(PAIRS, params=params, headers=READER)
    assert resp.status == 200
    assert resp.headers["X-Promptproxy-Rollout"] == "ro"
    assert orjson.loads(await resp.content.readline())["pair_id"] == "p2"
    services.shadow.sink.add(pair(3, time.time(), rollout="earlier"))
    services.shadow.sink.add(pair(4, time.time()))
    assert orjson.loads(await resp.content.readline())["pair_id"] == "p4"
    resp.close()


async def test_follow_ends_when_the_client_goes_away(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_shadow, "_TICK", 0.05)
    _, admin, services = clients
    sink = services.shadow.sink
    resp = await admin.get(PAIRS, params={"follow": "true"}, headers=READER)
    assert resp.status == 200
    await eventually(lambda: _followers(sink, 1))
    resp.close()
    await eventually(lambda: _followers(sink, 0))


async def _followers(sink: Any, count: int) -> bool:
    return len(sink._followers) == count


# -- the whole path -----------------------------------------------------------------------


async def test_a_shadow_rollout_records_pairs_readable_through_the_admin_api(
    clients: Clients,
) -> None:
    data, admin, services = clients
    for template in ("You are the stable prompt.", "You are the candidate prompt."):
        resp = await admin.post(
            "/admin/v1/prompts/support/versions", json={"template": template}, headers=ADMIN
        )
        assert resp.status == 201, await resp.text()
    resp = await admin.post("/admin/v1/prompts/support/promote", json={"version": 1}, headers=ADMIN)
    assert resp.status == 200
    rollout = {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"}
    resp = await admin.put("/admin/v1/prompts/support/rollout", json=rollout, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    assert await services.refresher.load_once()

    for stream in (False, True):
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Hello, stream={stream}"}],
            "stream": stream,
        }
        resp = await data.post("/p/support/v1/chat/completions", json=body)
        assert resp.status == 200
        assert resp.headers["x-prompt-version"] == "1"  # users get the stable answer
        await resp.read()

    recorded_pairs = await recorded(admin, 4, since="5m")
    pairs = [p for p in recorded_pairs if p["kind"] == "candidate"]
    noise = [p for p in recorded_pairs if p["kind"] == "stable"]
    assert len(pairs) == len(noise) == 2
    # The noise pairs ran stable twice on the same request: the floor candidates are judged on.
    assert {(p["primary"]["version"], p["shadow"]["version"]) for p in noise} == {(1, 1)}
    assert all(p["divergence"]["text_distance"] is not None for p in recorded_pairs)
    assert {p["stream"] for p in pairs} == {False, True}
    for p in pairs:
        assert (p["primary"]["version"], p["shadow"]["version"]) == (1, 2)
        assert p["primary"]["text"]
        assert p["shadow"]["text"]
        assert p["shadow"]["error_class"] is None
        assert p["request_id"]
    streamed = next(p for p in pairs if p["stream"])
    assert streamed["shadow"]["ttft_ms"] is not None
    assert streamed["shadow"]["output_tokens"]  # the usage the proxy asked for, on the shadow

    metrics = services.metrics.registry.get_sample_value
    assert metrics(
        "promptproxy_shadow_requests_total",
        {"slug": "support", "variant": "", "outcome": "completed"},
    )
    assert metrics(
        "promptproxy_requests_total",
        {
            "route": "chat.completions",
            "model": "gpt-4o-mini",
            "slug": "support",
            "version": "2",
            "arm": "shadow",
            "tier": "",
            "variant": "",
            "provider": "upstream",
            "status_class": "2xx",
        },
    )


async def test_a_pair_says_what_composed_each_arm_and_for_which_tenant(clients: Clients) -> None:
    data, admin, services = clients
    base = {"template": "{{ block.tone }}", "blocks": {"tone": {"default": "Be brief."}}}
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/admin/v1/prompts/support/versions", base),
        ("POST", "/admin/v1/prompts/support/versions", {**base, "template": "{{ block.tone }}!"}),
        ("POST", "/admin/v1/prompts/support/promote", {"version": 1}),
        ("POST", "/admin/v1/prompts/support/versions?tenant=acme", {"fills": {"tone": "Rhyme."}}),
        ("POST", "/admin/v1/prompts/support/promote?tenant=acme", {"version": 1}),
        ("PUT", "/admin/v1/tenants/acme", {"tier": "pro"}),
        (
            "PUT",
            "/admin/v1/prompts/support/rollout",
            {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"},
        ),
    ]
    for method, path, body in steps:
        resp = await admin.request(method, path, json=body, headers=ADMIN)
        assert resp.status in (200, 201), await resp.text()
    assert await services.refresher.load_once()

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    resp = await data.post(
        "/p/support/v1/chat/completions", json=body, headers={"x-tenant-id": "acme"}
    )
    assert resp.status == 200
    await resp.read()

    (candidate,) = [p for p in await recorded(admin, 1, since="5m") if p["kind"] == "candidate"]
    assert candidate["tenant"] == "acme"
    assert candidate["primary"]["layers"] == "base@1,tenant:acme@1"
    assert candidate["shadow"]["layers"] == "base@2,tenant:acme@1"


async def test_a_shadow_of_a_tenants_override_pairs_its_versions_under_its_line(
    clients: Clients,
) -> None:
    data, admin, services = clients
    base = {"template": "{{ block.tone }}", "blocks": {"tone": {"default": "Be brief."}}}
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/admin/v1/prompts/support/versions", base),
        # The base at v2, so a pair's versions (the override's, 1 and 2) cannot be the base's.
        ("POST", "/admin/v1/prompts/support/versions", {**base, "template": "{{ block.tone }}!"}),
        ("POST", "/admin/v1/prompts/support/promote", {"version": 2}),
        ("POST", "/admin/v1/prompts/support/versions?tenant=acme", {"fills": {"tone": "Rhyme."}}),
        ("POST", "/admin/v1/prompts/support/promote?tenant=acme", {"version": 1}),
        ("POST", "/admin/v1/prompts/support/versions?tenant=acme", {"fills": {"tone": "Sing."}}),
        ("PUT", "/admin/v1/tenants/acme", {"tier": "pro"}),
        (
            "PUT",
            "/admin/v1/prompts/support/rollout?tenant=acme",
            {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"},
        ),
    ]
    for method, path, body in steps:
        resp = await admin.request(method, path, json=body, headers=ADMIN)
        assert resp.status in (200, 201), await resp.text()
    assert await services.refresher.load_once()

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
    for tenant in ("acme", "bolt"):
        resp = await data.post(
            "/p/support/v1/chat/completions", json=body, headers={"x-tenant-id": tenant}
        )
        assert resp.status == 200
        await resp.read()

    pairs = await recorded(admin, 1, since="5m", tenant="acme")
    (candidate,) = [p for p in pairs if p["kind"] == "candidate"]
    assert candidate["slug"] == "tenant=acme/support"
    assert (candidate["primary"]["version"], candidate["shadow"]["version"]) == (1, 2)
    assert candidate["primary"]["layers"] == "base@2,tenant:acme@1"
    assert candidate["shadow"]["layers"] == "base@2,tenant:acme@2"
    assert await lines(admin, since="5m") == []  # the base's own line has no pairs
