"""The `served` object of admin writes, `?wait=` and GET /admin/v1/fleet, in-process on the
embedded store (the multi-process behaviour is in tests/integration/test_fleet_on_redis.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.registry.store import StoreUnavailable
from tests.support import ADMIN, READER, Clients


async def post(admin: TestClient[Any, Any], path: str, body: Any, **query: str) -> Any:
    resp = await admin.post(f"/admin/v1{path}", json=body, headers=ADMIN, params=query)
    return resp.status, await resp.json()


async def test_a_write_answers_served_here_and_with_wait_by_the_fleet(clients: Clients) -> None:
    _, admin, services = clients
    status, pushed = await post(admin, "/prompts/p/versions", {"template": "one"})
    assert status == 201
    assert pushed["served"]["here"] is True
    assert pushed["served"]["fleet"] is None
    status, entry = await post(admin, "/prompts/p/promote", {"version": 1}, wait="5")
    assert status == 200
    served = entry["served"]
    assert served["revision"] == services.snapshot.current.revision
    fleet = served["fleet"]
    assert (fleet["replicas"], fleet["confirmed"], fleet["complete"]) == (1, 1, True)
    assert fleet["missing"] == []


@pytest.mark.parametrize("wait", ["0", "-1", "61", "soon", "nan"])
async def test_a_bad_wait_is_refused_before_anything_is_written(
    clients: Clients, wait: str
) -> None:
    _, admin, services = clients
    status, body = await post(admin, "/prompts/p/versions", {"template": "one"}, wait=wait)
    assert status == 400
    assert (body["error"]["param"], body["error"]["code"]) == ("wait", "invalid_wait")
    assert services.snapshot.current.versions == {}
    resp = await admin.get("/admin/v1/prompts/p", headers=ADMIN)
    assert resp.status == 404


async def test_a_committed_write_stays_a_success_when_loading_it_fails(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, admin, services = clients
    await post(admin, "/prompts/p/versions", {"template": "one"})
    store = services.registry._store

    read, write = store.snapshot, store.promote
    written = False

    async def promote(*args: Any, **kwargs: Any) -> Any:
        nonlocal written
        entry = await write(*args, **kwargs)
        written = True
        return entry

    async def broken() -> Any:
        # Reads before the write work (promote checks the overrides first); after it, not.
        if written:
            raise StoreUnavailable("read failed just after the write")
        return await read()

    monkeypatch.setattr(store, "promote", promote)
    monkeypatch.setattr(store, "snapshot", broken)
    status, entry = await post(admin, "/prompts/p/promote", {"version": 1})
    assert status == 200, entry
    assert entry["served"]["here"] is False
    monkeypatch.undo()
    resp = await admin.get("/admin/v1/prompts/p", headers=ADMIN)
    assert (await resp.json())["prod_version"] == 1


async def test_fleet_lists_this_replica_with_its_revision(clients: Clients) -> None:
    _, admin, services = clients
    await post(admin, "/prompts/p/versions", {"template": "one"}, wait="2")
    resp = await admin.get("/admin/v1/fleet", headers=READER)
    assert resp.status == 200
    body = await resp.json()
    (me,) = body["data"]
    assert body["revision"] == me["revision"] == services.snapshot.current.revision
    assert (me["live"], me["this"], me["behind"]) == (True, True, 0)
    assert (await admin.get("/admin/v1/fleet")).status == 401
