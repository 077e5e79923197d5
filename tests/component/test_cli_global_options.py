"""`--admin-url`, `--token` and `-o/--output` work wherever they are written: before the
command group, between group and command, or after the command, against the admin app
in-process (the CLI is synchronous, so it runs in a worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.services import Services
from tests.processes import free_port
from tests.support import make_settings, proxy_clients

TOKEN = "global-options-token"
PROMPTS = Path(__file__).resolve().parents[2] / "config" / "prompts"

Clients = tuple[TestClient[Any, Any], TestClient[Any, Any], Services]


@pytest.fixture
async def admin() -> AsyncIterator[str]:
    settings = make_settings(environ={"PROMPTPROXY_ADMIN_TOKEN": TOKEN})
    async with proxy_clients(settings) as (_, admin_client, _services):
        url = str(admin_client.make_url("")).rstrip("/")
        pushed = await cli(["prompts", "--admin-url", url, "--token", TOKEN, "push", str(PROMPTS)])
        assert pushed.exit_code == 0, pushed.output
        yield url


async def cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    # Nothing from the developer's shell: every value comes from the arguments or `env`.
    blank = {"PROMPTPROXY_ADMIN_URL": None, "PROMPTPROXY_ADMIN_TOKEN": None}
    return await asyncio.to_thread(
        CliRunner().invoke, main, args, env={**blank, **(env or {})}, catch_exceptions=False
    )


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize(
    "args",
    [
        ["-o", "json", "prompts", "list"],
        ["prompts", "-o", "json", "list"],
        ["prompts", "list", "-o", "json"],
        ["prompts", "list", "--output", "json"],
        ["-o", "table", "prompts", "list", "-o", "json"],  # the innermost wins
    ],
)
async def test_output_json_anywhere(admin: str, args: list[str]) -> None:
    result = await cli(args, {"PROMPTPROXY_ADMIN_URL": admin, "PROMPTPROXY_ADMIN_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    slugs = {p["slug"] for p in orjson.loads(result.output)}
    assert slugs == {"support-reply", "summarize", "classify-ticket", "judge.helpfulness"}


async def test_table_is_still_the_default(admin: str) -> None:
    result = await cli(
        ["prompts", "list"], {"PROMPTPROXY_ADMIN_URL": admin, "PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert "support-reply" in result.output
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(result.output)


@pytest.mark.parametrize("where", ["main", "group", "command"])
async def test_admin_url_anywhere_overrides_the_environment(admin: str, where: str) -> None:
    option = ["--admin-url", admin]
    args = {
        "main": [*option, "rollout", "status"],
        "group": ["rollout", *option, "status"],
        "command": ["rollout", "status", *option],
    }[where]
    result = await cli(
        args, {"PROMPTPROXY_ADMIN_URL": dead_url(), "PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output


async def test_innermost_admin_url_wins(admin: str) -> None:
    outer, middle = dead_url(), dead_url()
    args = ["--admin-url", outer, "prompts", "--admin-url", middle, "list"]
    result = await cli(
        [*args, "--admin-url", admin],
        {"PROMPTPROXY_ADMIN_TOKEN": TOKEN},
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where", ["main", "group", "command"])
async def test_token_anywhere_authorises_a_write(admin: str, where: str) -> None:
    option = ["--token", TOKEN]
    command = ["promote", "summarize", "1", "--reason", "global options"]
    args = {
        "main": [*option, "prompts", *command],
        "group": ["prompts", *option, *command],
        "command": ["prompts", *command, *option],
    }[where]
    result = await cli(args, {"PROMPTPROXY_ADMIN_URL": admin, "PROMPTPROXY_ADMIN_TOKEN": "wrong"})
    assert result.exit_code == 0, result.output


async def test_a_wrong_token_after_the_command_is_used_not_ignored(admin: str) -> None:
    result = await cli(
        ["prompts", "rollback", "summarize", "--token", "wrong"],
        {"PROMPTPROXY_ADMIN_URL": admin, "PROMPTPROXY_ADMIN_TOKEN": TOKEN},
    )
    assert result.exit_code == 1
    assert "error:" in result.output
