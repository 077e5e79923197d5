"""Hostile input to the admin API gets a 400 naming the field, never a 500.

Integers past what a store holds (SQLite's INTEGER is 64-bit; orjson, which writes versions
and their content hash, encodes nothing wider), NaN and Infinity (JSON has neither: they were
stored as null and sent upstream), and digits that are not ASCII ('²'.isdigit() is true).
The API refuses them at the edge, so the store is never reached; what the edge lets through
(up to 2^63-1) is checked on both stores at the end of this file.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.prompt_key import PromptKey
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import INT64_MAX, INT64_MIN, VersionDraft
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import InvalidTransition, PromptStore, VersionNotFound
from tests.redis_server import RedisServer, running_redis
from tests.support import make_settings, proxy_clients

ADMIN = {"Authorization": "Bearer admin-secret"}
HUGE = "99999999999999999999"  # > 2^64
JUST_PAST_INT64 = "9223372036854775808"  # 2^63


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret"},
        **{"registry.store": f"embedded:{tmp_path / 'registry.db'}"},
    )
    async with proxy_clients(settings) as (_, admin_client, _):
        for body in ({"template": "one"}, {"template": "two"}):
            resp = await admin_client.post("/admin/v1/prompts/p/versions", json=body, headers=ADMIN)
            assert resp.status == 201, await resp.text()
        resp = await admin_client.post(
            "/admin/v1/prompts/p/promote", json={"version": 1}, headers=ADMIN
        )
        assert resp.status == 200, await resp.text()
        yield admin_client


async def _refused(resp: Any, param: str) -> str:
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    return str(error["message"])


@pytest.mark.parametrize(
    ("url", "param"),
    [
        (f"/admin/v1/prompts/p/versions/{HUGE}", "version"),
        (f"/admin/v1/prompts/p/versions/{JUST_PAST_INT64}", "version"),
        ("/admin/v1/prompts/p/versions/%C2%B2", "version"),  # '²'
        ("/admin/v1/prompts/p/versions/0", "version"),
        (f"/admin/v1/prompts/p/diff?from=1&to={HUGE}", "to"),
        (f"/admin/v1/prompts/p/diff?from={JUST_PAST_INT64}&to=1", "from"),
        (f"/admin/v1/audit?before={HUGE}", "before"),
        ("/admin/v1/audit?limit=%C2%B2", "limit"),
        (f"/admin/v1/prompts/p/history?limit={HUGE}", "limit"),
        ("/admin/v1/prompts/p/shadow/pairs?limit=%C2%B2", "limit"),
        (f"/admin/v1/prompts/p/shadow/pairs?since={'9' * 400}", "since"),
    ],
)
async def test_out_of_range_numbers_in_the_url_are_a_400_naming_them(
    admin: TestClient[Any, Any], url: str, param: str
) -> None:
    await _refused(await admin.get(url, headers=ADMIN), param)


async def test_the_largest_int64_is_still_just_not_found(admin: TestClient[Any, Any]) -> None:
    resp = await admin.get(f"/admin/v1/prompts/p/versions/{2**63 - 1}", headers=ADMIN)
    assert resp.status == 404


async def test_an_out_of_range_version_to_promote_is_a_400(admin: TestClient[Any, Any]) -> None:
    resp = await admin.post(
        "/admin/v1/prompts/p/promote",
        data=f'{{"version": {HUGE}}}',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    await _refused(resp, "version")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (f'{{"candidate": {HUGE}, "mode": "canary", "percent": 5}}', "candidate"),
        (
            f'{{"candidate": 2, "mode": "canary", "percent": 5, '
            f'"analysis": {{"min_samples": {HUGE}}}}}',
            "analysis.min_samples",
        ),
        (
            f'{{"candidate": 2, "mode": "canary", "percent": 5, '
            f'"analysis": {{"failure_limit": {HUGE}}}}}',
            "analysis.failure_limit",
        ),
    ],
)
async def test_out_of_range_rollout_numbers_are_a_400(
    admin: TestClient[Any, Any], body: str, param: str
) -> None:
    resp = await admin.put(
        "/admin/v1/prompts/p/rollout",
        data=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    await _refused(resp, param)
    assert (await admin.get("/admin/v1/rollouts", headers=ADMIN)).status == 200
    assert (await (await admin.get("/admin/v1/rollouts", headers=ADMIN)).json())["data"] == []


@pytest.mark.parametrize(
    ("fragment", "param"),
    [
        (f'"params": {{"seed": {HUGE}}}', "params.seed"),
        (f'"params": {{"seed": -{JUST_PAST_INT64}1}}', "params.seed"),
        (f'"params": {{"logit_bias": {{"50256": [1, {HUGE}]}}}}', "params.logit_bias.50256[1]"),
        ('"params": {"temperature": NaN}', "params.temperature"),
        ('"params": {"temperature": Infinity}', "params.temperature"),
        ('"params": {"temperature": -Infinity}', "params.temperature"),
        ('"params": {"temperature": 1e400}', "params.temperature"),
        ('"params": {"a": {"b": [0.5, {"c": NaN}]}}', "params.a.b[1].c"),
        (
            f'"template": "{{{{ n }}}}", "variables": [{{"name": "n", "default": {HUGE}}}]',
            "variables[0].default",
        ),
        (
            '"template": "{{ n }}", "variables": [{"name": "n", "default": NaN}]',
            "variables[0].default",
        ),
    ],
)
async def test_unstorable_numbers_in_a_version_are_a_400_naming_the_path(
    admin: TestClient[Any, Any], fragment: str, param: str
) -> None:
    body = "{" + ('"template": "hi", ' if '"template"' not in fragment else "") + fragment + "}"
    resp = await admin.post(
        "/admin/v1/prompts/q/versions",
        data=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    await _refused(resp, param)
    assert (await admin.get("/admin/v1/prompts/q", headers=ADMIN)).status == 404


async def test_the_widest_storable_numbers_are_kept_exactly(admin: TestClient[Any, Any]) -> None:
    params = {"low": -(2**63), "high": 2**63 - 1, "big": 1.7976931348623157e308}
    resp = await admin.post(
        "/admin/v1/prompts/q/versions", json={"template": "hi", "params": params}, headers=ADMIN
    )
    assert resp.status == 201, await resp.text()
    stored = await (await admin.get("/admin/v1/prompts/q/versions/1", headers=ADMIN)).json()
    assert stored["params"] == params


async def test_a_nameless_body_error_does_not_print_none(admin: TestClient[Any, Any]) -> None:
    resp = await admin.post("/admin/v1/prompts/q/versions", json=[], headers=ADMIN)
    assert resp.status == 400
    assert "None" not in (await resp.json())["error"]["message"]


async def test_nested_variable_errors_are_named_like_the_other_paths(
    admin: TestClient[Any, Any],
) -> None:
    resp = await admin.post(
        "/admin/v1/prompts/q/versions",
        json={"template": "hi", "variables": [{"name": "x"}, {"nom": "y"}]},
        headers=ADMIN,
    )
    await _refused(resp, "variables[1].name")


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("TRACE", "/admin/v1/prompts", {"GET", "HEAD"}),
        ("PATCH", "/admin/v1/prompts/p/rollout", {"GET", "HEAD", "PUT", "DELETE"}),
        ("GET", "/admin/v1/prompts/p/versions", {"POST"}),
    ],
)
async def test_a_wrong_method_is_a_405_that_says_which_are_allowed(
    admin: TestClient[Any, Any], method: str, url: str, allowed: set[str]
) -> None:
    resp = await admin.request(method, url, headers=ADMIN)
    assert resp.status == 405
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) == allowed
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")
    assert method in error["message"]


# -- the largest values the edge lets through, on both stores ------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PromptStore]:
    opened: PromptStore
    if request.param == "embedded":
        opened = await EmbeddedStore.open(tmp_path / "registry.db")
    else:
        url = request.getfixturevalue("redis_server").url
        opened = RedisStore.from_url(url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    try:
        yield opened
    finally:
        await opened.close()


async def test_stores_answer_int64_edges_as_not_found(store: PromptStore) -> None:
    params = {"low": INT64_MIN, "high": INT64_MAX, "big": 1.7976931348623157e308}
    version, _ = await store.create_version(
        VersionDraft(key=PromptKey("p"), template="hi", params=params), "t", 1.0
    )
    assert (await store.get_version(PromptKey("p"), 1)).params == params
    assert version.params == params
    with pytest.raises(VersionNotFound):
        await store.get_version(PromptKey("p"), INT64_MAX)
    with pytest.raises((VersionNotFound, InvalidTransition)):
        await store.promote(PromptKey("p"), INT64_MAX, "t", "", 2.0)
    assert [e.seq for e in await store.audit(PromptKey("p"), INT64_MAX, INT64_MAX)] == [1]
