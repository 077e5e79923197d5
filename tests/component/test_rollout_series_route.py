"""The series route (GET /admin/v1/prompts/{slug}/rollout/series) on each store: requests
sent through the data plane come back as the pool counted them, per arm, for the running
rollout and after it ended; and its 404s and 400s."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.analysis.series import SERIES_SECONDS
from tests.component.test_rollouts import ANSWER, CHAT, CHAT_URL, call, canary_body, seed
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, redis_server_fixture
from tests.support import READER, Clients, admin_settings, proxy_clients, upstream_mock

redis_server = redis_server_fixture("module")
postgres_server = postgres_server_fixture("module")

SERIES = "/prompts/support/rollout/series"
#: An answer with its token counts, so the series has answer lengths.
COUNTED = {**ANSWER, "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
REFUSED = {"error": {"message": "no", "type": "invalid_request_error"}}


@pytest.fixture(params=["embedded", "redis", "postgres"])
async def clients(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Clients]:
    store: dict[str, Any] = {}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        store = {"registry.store": redis.url, "registry.redis_prefix": f"t-{uuid.uuid4().hex}:"}
    elif request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        store = {"registry.store": postgres.new_database()}
    async with proxy_clients(admin_settings(tmp_path, **store)) as trio:
        yield trio


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Clients]:
    async with proxy_clients(admin_settings(tmp_path)) as trio:
        yield trio


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


async def send(clients: Clients, upstream: Any, n: int) -> tuple[Counter[str], Counter[str]]:
    """``n`` chat requests, every fifth refused by the provider: requests and errors per
    arm, as the answers' ``x-prompt-arm`` said."""
    data, _, _ = clients
    for i in range(n):
        if i % 5 == 4:
            upstream.post(CHAT_URL, status=422, payload=REFUSED)
        else:
            upstream.post(CHAT_URL, payload=COUNTED)
    sent: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for i in range(n):
        resp = await data.post("/p/support/v1/chat/completions", json=CHAT)
        arm = resp.headers["x-prompt-arm"]
        sent[arm] += 1
        if resp.status != 200:
            assert i % 5 == 4, await resp.text()
            failed[arm] += 1
    return sent, failed


async def series(clients: Clients, query: str = "") -> tuple[int, Any]:
    _, admin, _ = clients
    return await call(admin, "GET", SERIES + query, headers=READER)


def totals(answer: Any, what: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for point in answer["points"]:
        for arm, figures in point["arms"].items():
            out[arm] += figures[what]
    return out


async def test_the_series_counts_what_each_arm_served(clients: Clients, upstream: Any) -> None:
    """A rollout without an analysis policy: its arms are pooled all the same."""
    _, admin, services = clients
    await seed(admin)
    status, started = await call(admin, "PUT", "/prompts/support/rollout", canary_body(50, "none"))
    assert status == 201, started
    assert await services.refresher.load_once()
    sent, failed = await send(clients, upstream, 40)
    assert set(sent) == {"stable", "canary"}
    assert sum(failed.values()) == 8
    await services.analysis.flush()

    status, answer = await series(clients)
    assert status == 200, answer
    assert (answer["slug"], answer["rollout_id"], answer["mode"]) == (
        "support",
        started["id"],
        "canary",
    )
    # The defaults: the last 15 minutes in 15 s points, each with both arms.
    assert (answer["step"], len(answer["points"]), answer["arms"]) == (15, 60, ["stable", "canary"])
    assert answer["end"] - answer["start"] <= SERIES_SECONDS
    assert [p["at"] for p in answer["points"]] == list(
        range(answer["start"], answer["end"], answer["step"])
    )
    assert all(set(p["arms"]) == {"stable", "canary"} for p in answer["points"])
    assert totals(answer, "requests") == sent
    assert totals(answer, "errors") == failed
    busy = [p["arms"]["stable"] for p in answer["points"] if p["arms"]["stable"]["requests"]]
    assert busy
    assert all(f["answer_tokens"] == 7.0 and f["length_share"] == 0.0 for f in busy)
    quiet = [p["arms"]["canary"] for p in answer["points"] if not p["arms"]["canary"]["requests"]]
    assert quiet
    assert all(f["error_rate"] is None and f["p95_latency"] is None for f in quiet)

    # One-second points over the last minute hold the same counts.
    status, fine = await series(clients, "?since=1m&step=1&rollout=latest")
    assert (status, len(fine["points"]), fine["step"]) == (200, 60, 1)
    assert totals(fine, "requests") == sent


async def test_an_ended_rollout_is_charted_after_it_ended(clients: Clients, upstream: Any) -> None:
    _, admin, services = clients
    await seed(admin)
    _, first = await call(admin, "PUT", "/prompts/support/rollout", canary_body(100, "none"))
    assert await services.refresher.load_once()
    sent, _ = await send(clients, upstream, 6)
    assert sent == {"canary": 6}
    await services.analysis.flush()
    status, _ = await call(admin, "DELETE", "/prompts/support/rollout?reason=bad")
    assert status == 200
    assert await services.refresher.load_once()
    await services.analysis.tick()  # the embedded pool forgets ended rollouts on a tick

    status, answer = await series(clients)
    assert (status, answer["rollout_id"], answer["mode"]) == (200, first["id"], "canary")
    assert totals(answer, "requests") == {"stable": 0, "canary": 6}

    # A shadow rollout after it: latest is the shadow one, with its arms; the first is
    # still there by its id.
    status, shadow = await call(
        admin, "PUT", "/prompts/support/rollout", {"candidate": 3, "mode": "shadow", "percent": 10}
    )
    assert status == 201, shadow
    status, answer = await series(clients)
    assert (status, answer["rollout_id"], answer["mode"]) == (200, shadow["id"], "shadow")
    assert answer["arms"] == ["stable", "shadow", "rerun"]
    assert totals(answer, "requests") == {"stable": 0, "shadow": 0, "rerun": 0}
    status, again = await series(clients, f"?rollout={first['id']}")
    assert (status, again["mode"], totals(again, "requests")["canary"]) == (200, "canary", 6)


async def test_a_prompt_without_that_rollout_is_a_404(clients: Clients) -> None:
    _, admin, _ = clients
    await seed(admin)
    status, answer = await series(clients)
    assert status == 404
    assert (answer["error"]["code"], answer["error"]["param"]) == ("rollout_not_found", "rollout")
    status, answer = await call(admin, "GET", "/prompts/unknown/rollout/series", headers=READER)
    assert status == 404, answer
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(10, "none"))
    status, answer = await series(clients, "?rollout=no-such-rollout")
    assert (status, answer["error"]["code"]) == (404, "rollout_not_found")
    assert (await series(clients, "?rollout=latest"))[0] == 200


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?since=16m", "since"),
        ("?since=901", "since"),
        ("?since=1h", "since"),
        ("?since=0", "since"),
        ("?since=1.5m", "since"),
        ("?since=2026-12-06T10:00:00Z", "since"),
        ("?step=0", "step"),
        ("?step=1.5", "step"),
        ("?step=901", "step"),
        ("?since=1m&step=61", "step"),
        ("?rollout=a%20b", "rollout"),
        ("?tenant=acme&tier=gold", "tier"),
    ],
)
async def test_bad_parameters_are_400s_naming_them(
    embedded: Clients, query: str, param: str
) -> None:
    _, admin, _ = embedded
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(10, "none"))
    status, answer = await series(embedded, query)
    assert (status, answer["error"]["param"]) == (400, param), answer
    assert answer["error"]["type"] == "invalid_request_error"


async def test_a_pool_that_cannot_be_read_is_a_503(embedded: Clients, monkeypatch: Any) -> None:
    _, admin, services = embedded
    await seed(admin)
    await call(admin, "PUT", "/prompts/support/rollout", canary_body(10, "none"))

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(services.backend.pool, "read_buckets", unreachable)
    status, answer = await series(embedded)
    assert status == 503
    assert answer["error"]["message"] == ("The analysis pool is unavailable: Connection refused")
