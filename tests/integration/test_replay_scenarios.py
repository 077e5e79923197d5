"""Capture and replay against the fake provider, real processes: the calls of a prompt are
captured, and a replay of them passes a candidate that differs only by sampling noise and
flags one whose answers are three times longer.

``loadtest/replay_scenarios.py`` holds the scenarios and repeats them for the figures
(loadtest/README.md, "Capture and replay"); this runs one run of two of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from loadtest.replay_scenarios import SCENARIOS, Client, proxy_config, run_once
from tests.processes import ProxyProc, proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "replay-scenario"


@pytest.fixture(scope="module")
def capturing_proxy(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    # Every call of a replay-* slug captured, written every 0.2 s.
    config = proxy_config(sim_url)
    with proxy(procs_dir, None, config, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


@pytest.fixture
async def client(capturing_proxy: ProxyProc) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(
            session, capturing_proxy.url.removesuffix("/v1"), capturing_proxy.admin_url, TOKEN
        )


async def test_a_replay_passes_a_noise_only_candidate_and_flags_a_longer_one(
    client: Client,
) -> None:
    """30 captured calls, each replayed on the candidate and on stable: 30 pairs a side.

    Why neither verdict comes out wrong by chance (figures: 181 runs of each at 30 calls,
    loadtest/README.md, "Capture and replay"):

    - Flagging needs a measure's p < 0.01 (``evals.drift_alpha``) *and* its candidate mean
      more than 0.05 (``evals.drift_margin``) above the noise mean. For the noise-only
      candidate p < 0.01 does happen (about once a hundred measures; the runs saw 0.0014),
      but its mean's excess over the noise mean had a standard deviation of 0.011 (text
      distance) and 0.006 (length drift) over the runs, and at most 0.029: the margin is
      4.7 and 8 standard deviations away, a chance of about 1e-6 a run. 0 of 181 failed.
    - ``longer=3`` is not random: every candidate answer is three times as long, so the
      candidate's mean length drift was 0.67 to 0.69 in every run against the noise's 0.02
      to 0.05, and p at most 1e-11; 181 of 181 failed. (Half the answers cut,
      ``truncates-50pct``, also failed 181 of 181, but it rests on how many of 30 are cut,
      at least 6 for p < 0.01: fewer is about 2 in 10,000 by the binomial, too often for a
      test suite.)
    """
    noise_only, longer = SCENARIOS["noise-only"], SCENARIOS["longer-3x"]
    run = await run_once(client, [noise_only, longer], calls=30)
    assert run.answered == 30, run

    same, worse = run.replays
    for replay in (same, worse):
        assert replay.captures == 30, replay
        assert (replay.noise_pairs, replay.candidate_pairs) == (30, 30), replay
        assert replay.failed_calls == {"candidate": 0, "baseline": 0}, replay

    assert same.result == "pass", same
    # The stable version answers differently from itself: the noise the verdict allows for.
    assert same.measures["text_distance"]["noise_mean"] > 0.1, same

    assert worse.result == "fail", worse
    assert "length_drift" in worse.failed, worse
    drift = worse.measures["length_drift"]
    assert drift["candidate_mean"] > 0.5 > drift["noise_mean"], worse
