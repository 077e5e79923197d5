"""The analyser against the fake provider, real processes: a candidate that truncates or
errors is aborted by itself, as is one better on average but worse for one tier; one that
differs only by sampling noise is left alone.

``loadtest/analysis_scenarios.py`` holds the scenarios and repeats them for the figures
(time to abort, false alarms over many runs); this runs each once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.analysis_scenarios import (
    CLAUDE,
    SCENARIOS,
    TEST_POLICY,
    Client,
    proxy_config,
    run_once,
)
from tests.processes import ProxyProc, proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def analysed_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    # GPT models to the simulator's OpenAI face, Claude models to its Messages API face.
    config = proxy_config(sim_url)
    with proxy(procs_dir, None, config, env={"PROMPTPROXY_ADMIN_TOKEN": "scenario"}) as proc:
        yield proc


@pytest.fixture
async def client(analysed_proxy: ProxyProc) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(
            session, analysed_proxy.url[: -len("/v1")], analysed_proxy.admin_url, "scenario"
        )


@pytest.mark.parametrize(
    "name", ["truncates-20pct", "errors-10pct", "shadow-rambles", "claude-truncates"]
)
async def test_a_worse_candidate_is_aborted_by_the_analyser(
    client: Client, sim_url: str, name: str
) -> None:
    result = await run_once(client, SCENARIOS[name], run_seconds=20)
    await _answered_by_its_model(client, name, sim_url)
    assert result.aborted, result
    assert result.abort_reason is not None
    assert result.abort_reason.startswith("analysis failed:")
    # First verdict: one interval plus the flush settle after the canary starts.
    assert result.time_to_abort is not None
    assert result.time_to_abort < 3 * TEST_POLICY["interval"] + 3


@pytest.mark.parametrize("name", ["noise-only", "shadow-noise-only", "claude-noise-only"])
async def test_a_candidate_differing_only_by_noise_is_not_flagged(
    client: Client, sim_url: str, name: str
) -> None:
    # As long as the aborts above take, twice over: at least two verdicts.
    result = await run_once(client, SCENARIOS[name], run_seconds=8)
    await _answered_by_its_model(client, name, sim_url)
    assert not result.aborted, result
    assert result.verdicts.get("fail", 0) == 0, result
    assert result.verdicts.get("pass", 0) >= 1, result


async def test_a_candidate_better_on_average_but_worse_for_one_tier_is_aborted(
    client: Client,
) -> None:
    result = await run_once(client, SCENARIOS["one-tier-regresses"], run_seconds=20)
    assert result.aborted, result
    assert result.abort_reason is not None
    assert result.abort_reason.startswith(
        "analysis failed: tier enterprise: length_finish: truncated "
    ), result
    assert result.time_to_abort is not None
    assert result.time_to_abort < 3 * TEST_POLICY["interval"] + 3

    # The verdict that aborted it: the whole improved, enterprise alone failed.
    status, last = await client.admin("GET", f"/prompts/{result.slug}/analysis")
    assert status == 200, last
    verdict = last["verdicts"][0]
    assert (verdict["verdict"], verdict["action"]) == ("fail", "abort")
    whole = next(c for c in verdict["checks"] if c["name"] == "length_finish")
    assert whole["result"] == "pass"
    assert whole["candidate"] < whole["stable"]
    tiers = {tier: v["verdict"] for tier, v in verdict["tiers"].items()}
    assert tiers["enterprise"] == "fail"
    assert tiers.get("pro") != "fail"


async def _answered_by_its_model(client: Client, name: str, sim_url: str) -> None:
    """A candidate pinned to Claude was answered through the Messages API (translated),
    stable through chat completions: the analysis compared two providers. Read from the
    simulator's own log of what it received (its last 1,000 requests); the metrics' canary
    series end with the rollout."""
    if SCENARIOS[name].candidate_model is None:
        return
    async with client.session.get(f"{sim_url.removesuffix('/v1')}/_sim/requests") as resp:
        seen = await resp.json()
    models = {(entry["path"], entry["body"]["model"]) for entry in seen if entry["body"]}
    assert models == {("/v1/chat/completions", "gpt-4o-mini"), ("/v1/messages", CLAUDE)}, models
