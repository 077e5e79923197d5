"""The /admin/v1/registry endpoints in-process (embedded store): bad input is a clear
OpenAI-shaped 4xx, never a 500; writes need an admin token; a restore of a store that is
not lost is refused; a lost store file is reported and restored."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.prompt_key import PromptKey
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import VersionDraft
from proxy.services import Services
from tests.support import make_settings, proxy_clients

ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret"}

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services, Path]


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    db = tmp_path / "registry.db"
    settings = make_settings(
        environ={"PROMPTPROXY_ADMIN_TOKEN": "admin-secret", "READ_TOKEN": "read-secret"},
        **{
            "registry.store": f"embedded:{db}",
            "admin.tokens": [{"name": "dashboards", "env": "READ_TOKEN", "role": "read"}],
        },
    )
    async with proxy_clients(settings) as (data, admin, services):
        yield data, admin, services, db


def _put_in_place(source: Path, target: Path) -> None:
    os.replace(source, target)
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_bad_restore_and_import_bodies_are_clear_400s(clients: Clients) -> None:
    _, admin, _, _ = clients
    url = "/admin/v1/registry"
    for body in ({}, {"source": "redis"}, {"source": "snapshot", "extra": 1}):
        await error_of(await admin.post(f"{url}/restore", json=body, headers=ADMIN), 400)
    error = await error_of(await admin.post(f"{url}/import", data=b"{", headers=ADMIN), 400)
    assert error["code"] == "invalid_export"
    error = await error_of(
        await admin.post(f"{url}/import", json={"format": "other/1"}, headers=ADMIN), 400
    )
    assert "promptproxy-registry/1" in error["message"]


async def test_registry_writes_need_an_admin_token(clients: Clients) -> None:
    _, admin, _, _ = clients
    body = {"source": "snapshot"}
    await error_of(await admin.post("/admin/v1/registry/restore", json=body), 401)
    await error_of(await admin.post("/admin/v1/registry/restore", json=body, headers=READER), 403)
    assert (await admin.get("/admin/v1/registry", headers=READER)).status == 200


async def test_restore_of_a_store_that_is_not_lost_is_refused(clients: Clients) -> None:
    _, admin, _, _ = clients
    resp = await admin.post(
        "/admin/v1/registry/restore", json={"source": "snapshot"}, headers=ADMIN
    )
    error = await error_of(resp, 409)
    assert error["code"] == "registry_not_lost"


async def test_a_replaced_file_is_reported_refused_and_restored(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, services, db = clients
    for text in ("one", "two"):
        resp = await admin.post(
            "/admin/v1/prompts/greet/versions", json={"template": text}, headers=ADMIN
        )
        assert resp.status == 201
    assert await services.refresher.load_once()

    other = tmp_path / "other.db"
    await (await EmbeddedStore.open(other)).close()
    _put_in_place(other, db)  # an empty registry file where ours was (a wrong volume)
    assert not await services.refresher.load_once()

    ready = await (await admin.get("/readyz")).json()
    assert (ready["status"], ready["registry"]["state"]) == ("degraded", "replaced")
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions", json={"template": "three"}, headers=ADMIN
    )
    assert (await error_of(resp, 409))["code"] == "registry_store_replaced"
    metrics = await (await admin.get("/metrics")).text()
    assert "promptproxy_registry_store_replaced 1.0" in metrics

    resp = await admin.post(
        "/admin/v1/registry/restore", json={"source": "snapshot"}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["versions"] == 2
    # Read your writes: the answering replica serves the restore as soon as it answers.
    status = await (await admin.get("/admin/v1/registry", headers=READER)).json()
    assert (status["state"], status["problem"]) == ("ok", None)
    assert await services.refresher.load_once()
    assert (await (await admin.get("/readyz")).json())["registry"]["state"] == "ok"
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions", json={"template": "three"}, headers=ADMIN
    )
    assert (await resp.json())["version"]["version"] == 3


async def test_an_import_sent_in_many_chunks_is_read_whole(clients: Clients) -> None:
    """A chunked upload arrives in pieces: the handler must read to the end, not take the
    first piece for the whole export."""
    _, admin, _, _ = clients
    for n in range(3):
        resp = await admin.post(
            "/admin/v1/prompts/chunky/versions",
            json={"template": f"Version {n} " + "x" * 20_000},
            headers=ADMIN,
        )
        assert resp.status == 201, await resp.text()
    exported = await (await admin.get("/admin/v1/registry/export", headers=ADMIN)).read()
    assert len(exported) > 60_000

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(exported), 1024):
            yield exported[start : start + 1024]
            await asyncio.sleep(0.001)  # the server sees the body arrive in pieces

    resp = await admin.post("/admin/v1/registry/import", data=pieces(), headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["unchanged"] is True


def _broken(export: dict[str, Any], fault: str) -> dict[str, Any]:
    """``export`` (prod v1 + a draft v2 of greet, its audit) with one fault put in."""
    versions, audit = export["versions"], export["audit"]
    if fault == "huge seq":
        audit[-1]["seq"] = 2**63
    elif fault == "no room after seq":
        audit[-1]["seq"] = 2**63 - 1
    elif fault == "huge revision":
        export["revision"] = 2**63
    elif fault == "detail a string":
        audit[0]["detail"] = "not an object"
    elif fault == "duplicate seq":
        audit[1]["seq"] = audit[0]["seq"]
    elif fault == "two prods":
        versions[1]["status"] = "prod"
    elif fault == "bad slug":
        for version in versions:
            version["slug"] = "has a space"
    elif fault == "template":
        versions[1]["template"] = "Hello {{ name"
    elif fault == "sha256":
        versions[1]["template"] = "edited by hand"
    elif fault == "restore status":
        versions[1]["status"] = "candidate"
        export["rollouts"] = [{**_rollout(candidate=2), "restore_status": "prod"}]
    elif fault == "rollout segment":
        versions[1]["status"] = "candidate"
        export["rollouts"] = [{**_rollout(candidate=2), "segment": {"tiers": "pro"}}]
    elif fault == "rollout of a draft":
        export["rollouts"] = [_rollout(candidate=2)]
    elif fault == "rollout candidate":
        export["rollouts"] = [_rollout(candidate=9)]
    return export


def _rollout(candidate: int) -> dict[str, Any]:
    return {
        "slug": "greet",
        "id": "r1",
        "candidate": candidate,
        "mode": "canary",
        "basis_points": 1000,
        "sticky": "user",
        "started_at": 1.0,
        "updated_at": 1.0,
        "actor": "ops",
        "restore_status": "draft",
    }


@pytest.mark.parametrize(
    ("fault", "param"),
    [
        ("huge seq", "audit[2].seq"),
        ("no room after seq", "audit[2].seq"),
        ("huge revision", "revision"),
        ("detail a string", "audit[0].detail"),
        ("duplicate seq", "audit[1].seq"),
        ("two prods", "versions"),
        ("bad slug", "versions[0].slug"),
        ("template", "versions[1].template"),
        ("sha256", "versions[1].sha256"),
        ("rollout candidate", "rollouts[0].candidate"),
        ("rollout of a draft", "rollouts[0].candidate"),
        ("restore status", "rollouts[0].restore_status"),
        ("rollout segment", "rollouts[0].segment"),
    ],
)
async def test_an_export_with_a_fault_is_a_400_naming_the_field_and_writes_nothing(
    clients: Clients, tmp_path: Path, fault: str, param: str
) -> None:
    _, admin, _, db = clients
    for text in ("Hello {{ name }}", "Hi {{ name }}"):
        resp = await admin.post(
            "/admin/v1/prompts/greet/versions",
            json={"template": text, "variables": [{"name": "name"}]},
            headers=ADMIN,
        )
        assert resp.status == 201
    resp = await admin.post("/admin/v1/prompts/greet/promote", json={"version": 1}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    export = await (await admin.get("/admin/v1/registry/export", headers=ADMIN)).json()
    assert len(export["audit"]) == 3  # two creates and a promote
    # An empty registry file where ours was: an import goes in.
    other = tmp_path / "other.db"
    await (await EmbeddedStore.open(other)).close()
    _put_in_place(other, db)

    resp = await admin.post("/admin/v1/registry/import", json=_broken(export, fault), headers=ADMIN)

    error = await error_of(resp, 400)
    assert (error["code"], error["param"]) == ("invalid_export", param)
    check = await EmbeddedStore.open(db)
    try:
        assert not await check.list_keys()
    finally:
        await check.close()


async def test_a_restore_over_a_file_with_other_prompts_is_a_409_saying_what_to_do(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, services, db = clients
    resp = await admin.post(
        "/admin/v1/prompts/greet/versions", json={"template": "ours"}, headers=ADMIN
    )
    assert resp.status == 201
    assert await services.refresher.load_once()
    other = tmp_path / "other.db"
    theirs = await EmbeddedStore.open(other)
    await theirs.create_version(VersionDraft(PromptKey("theirs"), "their prompt"), "bob", 1.0)
    await theirs.close()
    _put_in_place(other, db)  # a wrong volume, holding another deployment's registry
    assert not await services.refresher.load_once()

    for body in ({"source": "snapshot"}, {"source": "snapshot", "overwrite": True}):
        resp = await admin.post("/admin/v1/registry/restore", json=body, headers=ADMIN)
        error = await error_of(resp, 409)
        assert error["code"] == "registry_not_empty"
        assert "move the file away" in error["message"]
    resp = await admin.post("/admin/v1/registry/import?overwrite=yes", json={}, headers=ADMIN)
    assert (await error_of(resp, 400))["param"] == "overwrite"
