"""The CLI at a tenant's or a tier's layer of a prompt: `--tenant ID` / `--tier NAME` on
every command that names a slug.

Against the admin app in-process, and, to see exactly what each command asks, against a
small aiohttp server on 127.0.0.1 that records every request. The CLI is synchronous
(urllib), so it runs in a worker thread meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support import Clients, run_cli


@pytest.mark.parametrize(
    "command",
    [
        ("prompts", "show", "support"),
        ("prompts", "diff", "support", "1", "2"),
        ("prompts", "promote", "support", "1"),
        ("rollout", "status", "support"),
        ("shadow", "export", "support"),
    ],
)
async def test_tenant_and_tier_together_are_a_usage_error(
    clients: Clients, command: tuple[str, ...]
) -> None:
    _, admin, _ = clients
    result = await run_cli(admin, *command, "--tenant", "acme", "--tier", "pro")
    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert "--tenant and --tier exclude each other" in result.stderr


# -- what each command asks: a server that records requests ----------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.explain: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.path.endswith("/explain") and self.explain:
            return web.json_response(self.explain)
        # Any command stops at the first error, which is all these tests need to see.
        error = {"message": "recorded", "type": "not_found", "code": "recorded", "param": None}
        return web.json_response({"error": error}, status=404)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, TestClient[Any, Any]]]:
    recorded = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorded.handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield recorded, client


LAYERED_COMMANDS = [
    ("prompts", "show", "support"),
    ("prompts", "show", "support", "2"),
    ("prompts", "diff", "support", "1", "2"),
    ("prompts", "promote", "support", "2", "--no-wait"),
    ("prompts", "rollback", "support", "--no-wait"),
    ("prompts", "history", "support"),
    ("prompts", "history", "support", "--at", "2026-01-01T00:00:00Z"),
    ("rollout", "status", "support"),
    ("rollout", "set", "support", "--candidate", "2", "--canary", "5", "--no-wait"),
    ("rollout", "ramp", "support", "10", "--no-wait"),
    ("rollout", "promote", "support", "--no-wait"),
    ("rollout", "abort", "support", "--no-wait"),
    ("shadow", "tail", "support"),
    ("shadow", "export", "support"),
    ("shadow", "report", "support"),
]


@pytest.mark.parametrize("command", LAYERED_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("flag", [("--tenant", "acme"), ("--tier", "enterprise")], ids=str)
async def test_every_slug_command_sends_its_layer_as_a_query_parameter(
    recorder: tuple[Recorder, TestClient[Any, Any]],
    command: tuple[str, ...],
    flag: tuple[str, str],
) -> None:
    recorded, server = recorder
    result = await run_cli(server, *command, *flag)
    assert "error: recorded" in result.stderr, result.output
    assert recorded.requests
    layer = {flag[0].removeprefix("--"): flag[1]}
    for _method, path, query in recorded.requests:
        assert path.startswith("/admin/v1/prompts/support")
        assert {k: v for k, v in query.items() if k in ("tenant", "tier")} == layer


async def test_without_a_flag_the_base_is_addressed(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    await run_cli(server, "rollout", "status", "support")
    assert [query for _, _, query in recorded.requests] == [{}, {}, {}]
