"""Tenant records through the admin API and the CLI, and the tenant of a request."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.component.test_registry_swap_in import (
    ANSWER,
    CHAT_URL,
    SUPPORT,
    promote,
    push,
    ready_for,
)
from tests.support import (
    ADMIN,
    ADMIN_TOKEN,
    READER,
    Clients,
    admin_settings,
    proxy_clients,
    run_cli,
    upstream_mock,
)

VARIABLES = {"customer_name": "Ada", "product": "pens"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


async def _clients(tmp_path: Path, **tenants: Any) -> AsyncIterator[Clients]:
    overrides = {f"tenants.{name}": value for name, value in tenants.items()}
    async with proxy_clients(admin_settings(tmp_path, **overrides)) as trio:
        yield trio


@pytest.fixture
async def by_key(tmp_path: Path) -> AsyncIterator[Clients]:
    async for trio in _clients(tmp_path, source="api_key", unknown="refuse"):
        yield trio


@pytest.fixture
async def refusing(tmp_path: Path) -> AsyncIterator[Clients]:
    async for trio in _clients(tmp_path, unknown="refuse"):
        yield trio


async def put(admin: Any, tenant: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = await admin.put(f"/admin/v1/tenants/{tenant}", json=body, headers=ADMIN)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_tenants_are_created_changed_listed_and_deleted_with_an_audit(
    clients: Clients,
) -> None:
    admin = clients[1]
    made = await put(admin, "acme", {"tier": "enterprise", "api_key_sha256": [digest("k1")]})
    assert made["changed"] is True
    assert made["tenant"]["api_keys"] == 1
    assert made["tenant"]["api_key_prefixes"] == [digest("k1")[:12]]
    assert made["audit"]["action"] == "tenant_set"
    again = await put(admin, "acme", {"tier": "enterprise", "api_key_sha256": [digest("k1")]})
    assert (again["changed"], again["audit"]) == (False, None)
    await put(admin, "acme", {"tier": "pro", "reason": "downgrade"})
    listing = await (await admin.get("/admin/v1/tenants", headers=READER)).json()
    assert [(t["id"], t["tier"], t["api_keys"]) for t in listing["data"]] == [
        ("acme", "pro", 1)
    ]  # keys kept
    # The whole hash is never shown, not even to an admin token.
    assert digest("k1") not in orjson.dumps(made).decode()

    resp = await admin.request(
        "DELETE", "/admin/v1/tenants/acme", json={"reason": "left"}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    assert (await admin.get("/admin/v1/tenants/acme", headers=READER)).status == 404
    audit = await (await admin.get("/admin/v1/audit", headers=READER)).json()
    tenant_entries = [
        (e["action"], e["reason"], e["detail"]["tier"])
        for e in audit["data"]
        if e["slug"] == "tenant=acme/_tenants"
    ]
    assert tenant_entries == [
        ("tenant_delete", "left", None),
        ("tenant_set", "downgrade", "pro"),
        ("tenant_set", "", "enterprise"),
    ]


@pytest.mark.parametrize(
    ("tenant", "body", "status", "param"),
    [
        ("acme", {"tier": "platinum"}, 400, "tier"),
        ("acme", {"tier": "pro", "api_key_sha256": ["sk-not-a-hash"]}, 400, "api_key_sha256[0]"),
        ("a b", {"tier": "pro"}, 400, "tenant_id"),
        ("acme", {"tier": "pro", "colour": "red"}, 400, "colour"),
    ],
    ids=["unknown-tier", "a-key-not-a-hash", "bad-id", "unknown-field"],
)
async def test_bad_tenant_writes_are_400s_naming_the_field(
    clients: Clients, tenant: str, body: dict[str, Any], status: int, param: str
) -> None:
    admin = clients[1]
    resp = await admin.put(f"/admin/v1/tenants/{tenant}", json=body, headers=ADMIN)
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["param"] == param
    listing = await (await admin.get("/admin/v1/tenants", headers=READER)).json()
    assert listing["data"] == []


async def test_a_key_names_one_tenant_and_tokens_are_checked(clients: Clients) -> None:
    admin = clients[1]
    await put(admin, "acme", {"tier": "pro", "api_key_sha256": [digest("k1")]})
    taken = await put(admin, "globex", {"tier": "free", "api_key_sha256": [digest("k1")]}, 409)
    assert taken["error"]["code"] == "api_key_taken"
    resp = await admin.put("/admin/v1/tenants/x", json={"tier": "pro"}, headers=READER)
    assert resp.status == 403
    resp = await admin.request("DELETE", "/admin/v1/tenants/nobody", json={}, headers=ADMIN)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "tenant_not_found"


async def test_the_cli_hashes_keys_before_sending_them(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = clients[1]
    monkeypatch.setenv("ACME_KEY", "sk-acme-secret")
    args = ("tenants", "set", "acme", "--tier", "enterprise", "--api-key-env", "ACME_KEY")
    refused = await run_cli(admin, *args)  # a read-only token
    assert refused.exit_code != 0
    result = await run_cli(admin, *args, "--no-wait", token=ADMIN_TOKEN)
    assert result.exit_code == 0, result.output
    assert digest("sk-acme-secret")[:12] in result.output
    assert "sk-acme-secret" not in result.output
    listing = await run_cli(admin, "tenants", "list")
    assert listing.exit_code == 0, listing.output
    assert "enterprise" in listing.output
    shown = await (await admin.get("/admin/v1/tenants/acme", headers=READER)).json()
    assert shown["api_key_prefixes"] == [digest("sk-acme-secret")[:12]]


async def test_a_known_tenant_is_in_the_access_log_and_an_unknown_one_is_refused(
    refusing: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = refusing
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await put(admin, "acme", {"tier": "enterprise"})
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    body = {"model": "m", "messages": [], "prompt_variables": VARIABLES}

    ok = await data.post(
        "/p/support/v1/chat/completions", json=body, headers={"X-Tenant-Id": "acme"}
    )
    assert ok.status == 200, await ok.text()
    for headers in ({"X-Tenant-Id": "nobody"}, {}):
        refused = await data.post("/p/support/v1/chat/completions", json=body, headers=headers)
        assert refused.status == 403
        error = (await refused.json())["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "permission_error",
            "unknown_tenant",
            "x-tenant-id",
        )
    lines = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert [(line["tenant"], line["tier"], line["status"]) for line in lines] == [
        ("acme", "enterprise", 200),
        (None, None, 403),
        (None, None, 403),
    ]
    # The tier is a label, the tenant never is.
    text = await (await admin.get("/metrics", headers=READER)).text()
    assert 'slug="support",status_class="2xx",tier="enterprise"' in text
    assert "acme" not in text
    # A request that names no prompt is not a tenant's business.
    plain = await data.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert plain.status == 200


async def test_tenants_by_api_key_keep_every_key_of_a_tenant_on_one_arm(
    by_key: Clients, upstream: Any, caplog: Any
) -> None:
    data, admin, services = by_key
    await push(admin, "support", SUPPORT)
    await promote(admin, "support", 1)
    await push(admin, "support", {**SUPPORT, "template": SUPPORT["template"] + " Be brief."})
    resp = await admin.put(
        "/admin/v1/prompts/support/rollout",
        json={"candidate": 2, "mode": "canary", "percent": 50, "sticky": "tenant"},
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    keys = [f"sk-acme-{i}" for i in range(12)]
    await put(admin, "acme", {"tier": "pro", "api_key_sha256": [digest(k) for k in keys]})
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    body = {"model": "m", "messages": [], "prompt_variables": VARIABLES}

    arms = set()
    for key in keys:
        resp = await data.post(
            "/p/support/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert resp.status == 200, await resp.text()
        arms.add(resp.headers["x-prompt-arm"])
    assert len(arms) == 1  # twelve keys, one tenant, one arm
    stranger = await data.post(
        "/p/support/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-stranger"},
    )
    assert stranger.status == 403
    assert (await stranger.json())["error"]["param"] == "authorization"
    logged = "\n".join(str(r.msg) for r in caplog.records)
    assert "sk-acme" not in logged
    assert "sk-stranger" not in logged
    lines = [r.msg for r in caplog.records if r.name == "promptproxy.access"]
    assert {line["tenant"] for line in lines if line["status"] == 200} == {"acme"}


async def test_a_tier_change_keeps_the_keys_unless_told(clients: Clients) -> None:
    admin = clients[1]
    await put(admin, "acme", {"tier": "pro", "api_key_sha256": [digest("k1"), digest("k2")]})
    moved = await put(admin, "acme", {"tier": "enterprise"})
    assert (moved["tenant"]["tier"], moved["tenant"]["api_keys"]) == ("enterprise", 2)
    cleared = await put(admin, "acme", {"tier": "enterprise", "api_key_sha256": []})
    assert cleared["tenant"]["api_keys"] == 0


async def test_a_store_holding_tenants_is_not_empty_to_an_import(clients: Clients) -> None:
    admin = clients[1]
    await put(admin, "acme", {"tier": "pro"})
    export = await (await admin.get("/admin/v1/registry/export", headers=ADMIN)).json()
    assert [t["id"] for t in export["tenants"]] == ["acme"]
    other = {**export, "tenants": [{"id": "globex", "tier": "free"}]}
    resp = await admin.post("/admin/v1/registry/import", json=other, headers=ADMIN)
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["error"]["code"] == "registry_not_empty"
    listing = await (await admin.get("/admin/v1/tenants", headers=READER)).json()
    assert [t["id"] for t in listing["data"]] == ["acme"]


async def test_an_export_needs_an_admin_token(clients: Clients) -> None:
    admin = clients[1]
    await put(admin, "acme", {"tier": "pro", "api_key_sha256": [digest("k1")]})
    assert (await admin.get("/admin/v1/registry/export", headers=READER)).status == 403
    export = await (await admin.get("/admin/v1/registry/export", headers=ADMIN)).json()
    assert export["tenants"][0]["key_hashes"] == [digest("k1")]
