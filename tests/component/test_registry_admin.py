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

from proxy.registry.embedded_store import EmbeddedStore
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
