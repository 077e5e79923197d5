"""`promptproxy shadow tail/export` against the admin app in-process.

The CLI is synchronous (urllib), so it runs in a worker thread while the test's event loop
serves the admin API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.cli import shadow as cli_shadow
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.services import Services
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta
from tests.processes import free_port
from tests.support import READ_TOKEN, Clients, run_cli


def pair(n: int, ts: float, primary_text: str = "stable", finish: str = "stop") -> Pair:
    meta = PairMeta(
        f"p{n}",
        PromptKey("support"),
        "ro",
        ShadowKind.CANDIDATE.value,
        f"r{n}",
        Route.CHAT.value,
        False,
    )
    return Pair.build(
        meta,
        ArmResult(version=1, status=200, text=primary_text, finish_reason=finish, latency=0.8124),
        ArmResult(version=2, status=200, text="candidate", finish_reason="length", latency=0.64),
        ts,
    )


async def cli(admin: TestClient[Any, Any], *args: str, token: str | None = READ_TOKEN) -> Result:
    return await run_cli(admin, "shadow", *args, token=token)


async def stored(services: Services, count: int) -> None:
    for _ in range(1000):
        if len(await services.shadow.sink.read(PromptKey("support"), None, 10_000)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("pairs not written")


async def test_export_writes_json_lines_since_a_duration(clients: Clients) -> None:
    _, admin, services = clients
    now = time.time()
    services.shadow.sink.add(pair(0, now - 7200))  # two hours ago: outside the default hour
    for n in range(1, 5):
        services.shadow.sink.add(pair(n, now - 100 + n))
    await stored(services, 5)

    result = await cli(admin, "export", "support", "--rollout", "ro", "--since", "10m")
    assert result.exit_code == 0, result.output
    exported = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [p["pair_id"] for p in exported] == ["p1", "p2", "p3", "p4"]
    assert exported[0]["primary"]["text"] == "stable"
    assert exported[0]["shadow"]["text"] == "candidate"

    default = await cli(admin, "export", "support", "--rollout", "ro")
    assert [orjson.loads(line)["pair_id"] for line in default.stdout.splitlines()] == [
        "p1",
        "p2",
        "p3",
        "p4",
    ]
    limited = await cli(
        admin, "export", "support", "--rollout", "ro", "--since", "3h", "--limit", "2"
    )
    assert [orjson.loads(line)["pair_id"] for line in limited.stdout.splitlines()] == ["p0", "p1"]


async def test_export_pages_through_pairs_recorded_at_the_same_instant(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_shadow, "EXPORT_PAGE", 2)
    _, admin, services = clients
    now = time.time()
    stamps = [now - 50, now - 40, now - 30, now - 30, now - 30, now - 20, now - 10]
    for n, ts in enumerate(stamps):
        services.shadow.sink.add(pair(n, ts))
    await stored(services, len(stamps))
    result = await cli(admin, "export", "support", "--rollout", "ro", "--since", "1m")
    assert result.exit_code == 0, result.output
    ids = [orjson.loads(line)["pair_id"] for line in result.stdout.splitlines()]
    assert ids == [f"p{n}" for n in range(len(stamps))]  # each once, in order


async def test_tail_prints_one_line_per_pair_and_follows(clients: Clients) -> None:
    _, admin, services = clients
    services.shadow.sink.add(
        pair(1, time.time() - 5, primary_text="Hello there, how can I help you with the order?")
    )
    await stored(services, 1)
    running = asyncio.ensure_future(cli(admin, "tail", "support", "--since", "1m", "--count", "2"))
    await asyncio.sleep(0.3)
    assert not running.done()  # following: waits for more
    services.shadow.sink.add(pair(2, time.time(), finish="tool_calls"))
    async with asyncio.timeout(10):
        result = await running
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert "p1" in first
    assert "v1 200 812ms stop 'Hello there, how can I help you with th…'" in first
    assert "v2 200 640ms length 'candidate'" in first
    assert "tool_calls" in second


async def test_tail_json_prints_raw_pairs(clients: Clients) -> None:
    _, admin, services = clients
    services.shadow.sink.add(pair(1, time.time() - 5))
    await stored(services, 1)
    result = await cli(admin, "-o", "json", "tail", "support", "--since", "1m", "--count", "1")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["shadow"]["version"] == 2


async def test_errors_exit_non_zero_with_a_message(clients: Clients) -> None:
    _, admin, _ = clients
    no_token = await cli(admin, "export", "support", "--rollout", "ro", token=None)
    assert no_token.exit_code == 1
    assert "token" in no_token.output.lower()
    bad_since = await cli(admin, "export", "support", "--rollout", "ro", "--since", "last tuesday")
    assert bad_since.exit_code == 1
    assert "param: since" in bad_since.output
    env = {"PROMPTPROXY_ADMIN_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = await asyncio.to_thread(
        CliRunner().invoke, main, ["shadow", "tail", "support"], env=env
    )
    assert unreachable.exit_code == 1
    assert "cannot reach" in unreachable.output
