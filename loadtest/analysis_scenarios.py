"""Automated canary analysis against the fake provider: does a bad candidate get aborted,
how fast, and does a candidate that differs only by sampling noise stay untouched?

Each run pushes a stable and a candidate version of a fresh slug, starts a canary (10 %
unless the scenario says otherwise) with an analysis policy, and drives sticky traffic until
the analyser aborts the rollout or the time runs out. The simulator degrades answers on
purpose when the rendered system prompt carries a ``[[sim ...]]`` directive, so the *prompt
version* is what makes the candidate worse, as in production. A scenario with tiers also
gives the base versions blocks, pushes each tier's override, and sends its traffic as
tenants of those tiers.

    python -m loadtest.analysis_scenarios --runs 10

writes ``loadtest/results/analysis-scenarios.json``: per scenario, the time from the start
of the canary to the abort, and the false alarms (failed verdicts, aborts) of the
noise-only candidate. ``tests/integration/test_analysis_scenarios.py`` runs one of each.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

RESULTS = Path(__file__).resolve().parent / "results" / "analysis-scenarios.json"

_BASE = "You are the support assistant of Acme. Answer the customer's question kindly."
#: Both arms sample (noise=0.2): a real model never answers twice the same way, and the
#: analysis must not mistake that for a regression.
_NOISE = "noise=0.2"


CANARY_PERCENT = 10
#: The Claude model a candidate may pin: answered through the Messages API translation.
CLAUDE = "claude-sonnet-4-5-20250929"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    stable: str
    candidate: str
    expect_abort: bool
    mode: str = "canary"
    percent: float = CANARY_PERCENT
    #: Blocks both base versions declare, with their default text.
    blocks: Mapping[str, str] = field(default_factory=dict)
    #: Each tier's override: its fills, by tier.
    fills: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: The share of the traffic each tier's tenants send; the rest names no tenant.
    traffic: Mapping[str, float] = field(default_factory=dict)
    #: The model each version pins (None: the request's, gpt-4o-mini): a candidate pinned
    #: to Claude is answered by the `anthropic` provider, through the translation.
    stable_model: str | None = None
    candidate_model: str | None = None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "truncates-20pct",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Be brief. [[sim {_NOISE} truncate=0.2]]",
            True,
        ),
        Scenario(
            "errors-10pct",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Be brief. [[sim {_NOISE} error=0.1]]",
            True,
        ),
        Scenario(
            "noise-only",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Please. [[sim {_NOISE}]]",
            False,
        ),
        # Shadow: nobody is served the candidate; the noise-calibrated divergence decides.
        Scenario(
            "shadow-rambles",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Explain at length. [[sim {_NOISE} longer=2]]",
            True,
            mode="shadow",
        ),
        Scenario(
            "shadow-noise-only",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Please. [[sim {_NOISE}]]",
            False,
            mode="shadow",
        ),
        # Better on the whole, worse for one tier. The enterprise override's fill carries a
        # directive of its own; when several set a key the last wins. Stable puts the block
        # before its own directive, which wins: everyone is cut 20 % of the time. The
        # candidate drops the cut and moves the block after its directive: nobody is cut
        # but enterprise, whose fill now wins, 60 % of the time. Enterprise sends 20 % of
        # the requests, so the candidate cuts 12 % of all answers against stable's 20 %.
        # At 50 % (not 10) so the enterprise tier gets as many candidate requests per
        # window as the other scenarios' whole canary.
        Scenario(
            "one-tier-regresses",
            f"{_BASE} {{{{ block.tone }}}} [[sim {_NOISE} truncate=0.2]]",
            f"{_BASE} [[sim {_NOISE}]] {{{{ block.tone }}}}",
            True,
            percent=50,
            blocks={"tone": "Be warm."},
            fills={"enterprise": {"tone": "Be formal and precise. [[sim truncate=0.6]]"}},
            traffic={"enterprise": 0.2, "pro": 0.4},
        ),
        # From GPT to Claude: the candidate pins a Claude model, so its canary share is
        # answered by another provider through the Messages API translation, and the
        # analysis compares the two like any two versions.
        Scenario(
            "claude-truncates",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Be brief. [[sim {_NOISE} truncate=0.2]]",
            True,
            stable_model="gpt-4o-mini",
            candidate_model=CLAUDE,
        ),
        Scenario(
            "claude-noise-only",
            f"{_BASE} [[sim {_NOISE}]]",
            f"{_BASE} Please. [[sim {_NOISE}]]",
            False,
            stable_model="gpt-4o-mini",
            candidate_model=CLAUDE,
        ),
    )
}


def proxy_config(sim_url: str) -> str:
    """The proxy's config for these runs: GPT models to the simulator's OpenAI face, Claude
    models to its Messages API face (the simulator's root), the analysis flushed often."""
    return (
        "analysis:\n  flush_seconds: 0.5\n"
        "logging:\n  level: WARNING\n"
        f"metrics:\n  models: [gpt-4o-mini, {CLAUDE}]\n"
        "providers:\n"
        f"  - {{name: openai, kind: openai, base_url: '{sim_url}', models: ['gpt-*']}}\n"
        f"  - {{name: anthropic, kind: anthropic, base_url: '{sim_url.removesuffix('/v1')}',"
        " models: ['claude-*']}\n"
    )


#: A compressed policy: the production default judges every 60 s on 100 requests per arm.
#: Here 3 s windows and 30 requests keep a run under ten seconds; the checks, limits and
#: significance levels are the defaults.
TEST_POLICY: dict[str, Any] = {"interval": 3, "min_samples": 30, "failure_limit": 0}


@dataclass(slots=True)
class RunResult:
    scenario: str
    slug: str
    aborted: bool
    #: Canary start to the abort's audit entry, seconds (None when not aborted).
    time_to_abort: float | None
    seconds: float
    verdicts: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    abort_reason: str | None = None


class Client:
    def __init__(self, session: aiohttp.ClientSession, data_url: str, admin_url: str, token: str):
        self.session = session
        self.data_url = data_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, f"{self.admin_url}/admin/v1{path}", json=body, headers=self.headers
        ) as resp:
            return resp.status, await resp.json()

    async def chat(self, slug: str, user: str, tenant: str | None = None) -> str | None:
        """One sticky request; the arm that answered, or None on an error status."""
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Where is my parcel? It is late."}],
            "user": user,
        }
        headers = {} if tenant is None else {"x-tenant-id": tenant}
        async with self.session.post(
            f"{self.data_url}/p/{slug}/v1/chat/completions", json=body, headers=headers
        ) as resp:
            await resp.read()
            return resp.headers.get("x-prompt-arm") if resp.status == 200 else None


async def _seed(client: Client, slug: str, scenario: Scenario) -> None:
    blocks = {name: {"default": text} for name, text in scenario.blocks.items()}
    versions = (
        (scenario.stable, scenario.stable_model),
        (scenario.candidate, scenario.candidate_model),
    )
    for template, model in versions:
        version: dict[str, Any] = {"template": template}
        if model is not None:
            version["model"] = model
        if blocks:
            version["blocks"] = blocks
        status, body = await client.admin("POST", f"/prompts/{slug}/versions", version)
        if status != 201:
            raise RuntimeError(f"push failed: {status} {body}")
    status, body = await client.admin("POST", f"/prompts/{slug}/promote", {"version": 1})
    if status != 200:
        raise RuntimeError(f"promote failed: {status} {body}")
    for tier, fills in scenario.fills.items():
        layer = f"/prompts/{slug}/versions?tier={tier}"
        status, body = await client.admin("POST", layer, {"fills": dict(fills)})
        if status != 201:
            raise RuntimeError(f"override push failed: {status} {body}")
        promote = f"/prompts/{slug}/promote?tier={tier}"
        status, body = await client.admin("POST", promote, {"version": body["version"]["version"]})
        if status != 200:
            raise RuntimeError(f"override promote failed: {status} {body}")
    for tier in scenario.traffic:
        status, body = await client.admin("PUT", f"/tenants/{_tenant(tier)}", {"tier": tier})
        if status not in (200, 201):
            raise RuntimeError(f"tenant failed: {status} {body}")
    # The data plane serves the new slug once its snapshot refreshes; start the clock after.
    deadline = time.monotonic() + 10
    while await client.chat(slug, "warm-up") is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy never served {slug}")
        await asyncio.sleep(0.05)


async def run_once(
    client: Client,
    scenario: Scenario,
    *,
    policy: dict[str, Any] | None = None,
    run_seconds: float = 15.0,
    concurrency: int = 12,
) -> RunResult:
    slug = f"{scenario.name}-{uuid.uuid4().hex[:8]}"
    await _seed(client, slug, scenario)
    rollout = {
        "candidate": 2,
        "mode": scenario.mode,
        "percent": scenario.percent,
        "sticky": "user",
        "analysis": policy or TEST_POLICY,
    }
    status, started = await client.admin("PUT", f"/prompts/{slug}/rollout", rollout)
    if status != 201:
        raise RuntimeError(f"rollout failed: {status} {started}")
    t0 = time.monotonic()
    arms: dict[str, int] = {}
    users = itertools.count()
    done = asyncio.Event()

    tenants = _tenants(scenario.traffic)

    async def drive() -> None:
        while not done.is_set():
            n = next(users)
            arm = await client.chat(slug, f"customer-{n}", tenants[n % len(tenants)])
            key = arm or "error"
            arms[key] = arms.get(key, 0) + 1

    workers = [asyncio.create_task(drive()) for _ in range(concurrency)]
    last_state: dict[str, Any] | None = None
    try:
        while time.monotonic() - t0 < run_seconds:
            await asyncio.sleep(0.2)
            status, body = await client.admin("GET", f"/prompts/{slug}/rollout")
            if status == 404:
                break
            last_state = body.get("analysis_state") or last_state
    finally:
        done.set()
        await asyncio.gather(*workers, return_exceptions=True)
    seconds = time.monotonic() - t0
    _, history = await client.admin("GET", f"/prompts/{slug}/history")
    abort = next(
        (e for e in _entries(history) if e.get("action") == "rollout_abort"),
        None,
    )
    # Every verdict of the run, also the one that ended it (GET .../analysis outlives it).
    analysed, last = await client.admin("GET", f"/prompts/{slug}/analysis")
    if analysed == 200:
        last_state = last
    verdicts: dict[str, int] = {}
    for verdict in (last_state or {}).get("verdicts", []):
        verdicts[verdict["verdict"]] = verdicts.get(verdict["verdict"], 0) + 1
    if abort is None and status != 404:
        # Still running: end the rollout so the next run starts clean.
        await client.admin("DELETE", f"/prompts/{slug}/rollout")
    return RunResult(
        scenario=scenario.name,
        slug=slug,
        aborted=abort is not None,
        time_to_abort=None if abort is None else round(abort["at"] - started["started_at"], 2),
        seconds=round(seconds, 2),
        verdicts=verdicts,
        requests=arms,
        abort_reason=None if abort is None else abort.get("reason"),
    )


def _tenant(tier: str) -> str:
    return f"scenario-{tier}"


def _tenants(traffic: Mapping[str, float]) -> list[str | None]:
    """One tenant per request in turn, each tier's in its share (in twentieths), the rest
    none."""
    out: list[str | None] = []
    for tier, share in traffic.items():
        out += [_tenant(tier)] * round(share * 20)
    return out + [None] * (20 - len(out))


def _entries(history: Any) -> list[dict[str, Any]]:
    if isinstance(history, dict):
        for key in ("audit", "data", "history", "entries"):
            if isinstance(history.get(key), list):
                return list(history[key])
    return list(history) if isinstance(history, list) else []


def summarize(results: list[RunResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SCENARIOS:
        runs = [r for r in results if r.scenario == name]
        if not runs:
            continue
        times = [r.time_to_abort for r in runs if r.time_to_abort is not None]
        out[name] = {
            "percent": SCENARIOS[name].percent,
            "runs": len(runs),
            "aborted": sum(r.aborted for r in runs),
            "failed_verdicts": sum(r.verdicts.get("fail", 0) for r in runs),
            "verdicts": sum(sum(r.verdicts.values()) for r in runs),
            "time_to_abort_s": {
                "min": min(times),
                "median": statistics.median(times),
                "max": max(times),
            }
            if times
            else None,
        }
    return out


async def _main(args: argparse.Namespace) -> None:
    # Run from the repository root (`python -m loadtest...`): the process helpers are the
    # test suite's own.
    from tests.processes import proxy, simulator

    results: list[RunResult] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator(Path(tmp)) as (sim_url, _),
        proxy(
            Path(tmp), None, proxy_config(sim_url), env={"PROMPTPROXY_ADMIN_TOKEN": "bench"}
        ) as proc,
    ):
        async with aiohttp.ClientSession() as session:
            client = Client(session, proc.url[: -len("/v1")], proc.admin_url, "bench")
            for run in range(args.runs):
                for name in args.scenario or list(SCENARIOS):
                    result = await run_once(client, SCENARIOS[name], run_seconds=args.seconds)
                    results.append(result)
                    print(f"run {run + 1} {name}: {asdict(result)}", flush=True)
    summary = {
        "policy": TEST_POLICY,
        "canary_percent": CANARY_PERCENT,
        "summary": summarize(results),
        "runs": [asdict(r) for r in results],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary["summary"], option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15.0, help="longest run")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
