"""One cell of the benchmark: a scenario against one target, warmed up, then measured.

CPU time is read from the processes around the measured phase only, with a short settle
on both sides so the proxy's log writer thread has written the lines of the phase it
belongs to. The cores' total busy time is read too: whatever our processes did not use
was someone else's (the machine may be shared), which tells how trustworthy a cell is.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

from loadtest.loadgen import LoadGenerator, PhaseResult, RequestSpec, chat_request, summarize_ms
from loadtest.procs import ManagedProcess
from loadtest.scenarios import Scenario
from loadtest.targets import DIRECT, OURS, Running
from loadtest.wrk import Generator, Wrk

Cell = dict[str, Any]

# Long enough for the proxy's log thread to write the last lines; idle CPU in it is ~0.
SETTLE_S = 0.3
#: A phase cut to a time budget still sends this many, for a CPU reading worth the name.
MIN_BUDGET_REQUESTS = 200


class BenchError(RuntimeError):
    """The run cannot produce meaningful figures (e.g. the warm-up already failed)."""


@dataclass(frozen=True, slots=True)
class CellConfig:
    clients: int
    warmup: int
    requests: int
    max_seconds: float
    target_core: int | None
    load_core: int | None
    #: The wrk binary when wrk generates the load (``--loadgen wrk``); None: loadgen.py.
    wrk: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative CPU seconds (user + system) of our processes and of the two cores."""

    target: float | None
    target_switches: int | None
    simulator: float
    loadgen: float
    target_core_busy: float | None
    load_core_busy: float | None

    @classmethod
    def take(cls, cfg: CellConfig, target: ManagedProcess | None, sim: ManagedProcess) -> Snapshot:
        own = psutil.Process().cpu_times()
        loadgen = float(own.user + own.system)
        if cfg.wrk is not None:
            # wrk is a child: its CPU time joins ours once it has exited and been waited for.
            loadgen += float(own.children_user + own.children_system)
        cores = psutil.cpu_times(percpu=True)

        def busy(core: int | None) -> float | None:
            if core is None:
                return None
            t = cores[core]
            return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)

        return cls(
            target=None if target is None else target.cpu_seconds(),
            target_switches=None if target is None else target.context_switches(),
            simulator=sim.cpu_seconds(),
            loadgen=loadgen,
            target_core_busy=busy(cfg.target_core),
            load_core_busy=busy(cfg.load_core),
        )


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _pct(seconds: float | None, elapsed: float) -> float | None:
    return None if seconds is None or elapsed <= 0 else seconds / elapsed * 100


async def count_events(url: str, scenario: Scenario) -> int | None:
    """How many SSE events the provider sends when asked directly; proxies must match it."""
    if not scenario.stream:
        return None
    spec = chat_request(url, stream=True, extra_headers=scenario.sim_headers)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(url, data=spec.body, headers=spec.headers) as resp,
    ):
        body = await resp.read()
    problem = spec.validate(resp.status, body)
    if problem is not None:
        raise BenchError(f"the simulator answered a probe request wrongly: {problem}")
    return body.count(b"data: ")


def _raise_if_failed(phase: PhaseResult, what: str) -> None:
    if phase.errors or phase.stopped_early:
        samples = "\n  ".join(phase.error_samples) or "(no samples)"
        raise BenchError(
            f"{what}: {phase.errors} of {phase.requested} requests failed"
            f" (stopped early: {phase.stopped_early}).\n  {samples}"
        )


def access_log_lines(proc: ManagedProcess) -> int:
    with proc.stderr_path.open("rb") as f:
        return sum(1 for line in f if b'"event":"request"' in line)


def _generator(spec: RequestSpec, cfg: CellConfig) -> Generator:
    if cfg.wrk is not None:
        return Wrk(spec, clients=cfg.clients, binary=cfg.wrk)
    return LoadGenerator(spec, clients=cfg.clients)


def budget_requests(planned: int, warm_rps: float, budget_s: float) -> int:
    """Measured requests for a slow target: what its warm-up rate does in ``budget_s``,
    at least ``MIN_BUDGET_REQUESTS``, at most ``planned``."""
    if warm_rps <= 0:
        return min(planned, MIN_BUDGET_REQUESTS)
    return min(planned, max(MIN_BUDGET_REQUESTS, math.ceil(warm_rps * budget_s)))


async def measure_cell(
    scenario: Scenario,
    target: Running | None,
    sim: Running,
    cfg: CellConfig,
    expected_events: int | None,
    budget_s: float | None = None,
) -> Cell:
    """Warm up, then send the measured requests; ``target=None`` means straight to ``sim``.

    ``budget_s``: the measured phase is cut to about that long at the warm-up's rate (a
    target 50x slower than the others would otherwise take most of the run)."""
    name = DIRECT if target is None else target.name
    base_url = sim.base_url if target is None else target.base_url
    spec = chat_request(
        base_url + "/chat/completions",
        stream=scenario.stream,
        extra_headers=scenario.sim_headers,
        expected_events=expected_events,
        model=None if target is None else target.model,
    )
    proc = None if target is None else target.proc
    planned = scenario.requests(cfg.requests)
    async with _generator(spec, cfg) as gen:
        warm = await gen.run(cfg.warmup, max_seconds=cfg.max_seconds)
        _raise_if_failed(warm, f"{scenario.name}/{name} warm-up")
        measured = planned if budget_s is None else budget_requests(planned, warm.rps, budget_s)
        await asyncio.sleep(SETTLE_S)
        before = Snapshot.take(cfg, proc, sim.proc)
        phase = await gen.run(measured, max_seconds=cfg.max_seconds)
        await asyncio.sleep(SETTLE_S)
        after = Snapshot.take(cfg, proc, sim.proc)
    sim.proc.check_alive()
    if proc is not None:
        proc.check_alive()

    n, elapsed = max(phase.completed, 1), phase.elapsed_s
    target_s = _delta(after.target, before.target)
    sim_s, own_s = after.simulator - before.simulator, after.loadgen - before.loadgen
    tcore_s = _delta(after.target_core_busy, before.target_core_busy)
    lcore_s = _delta(after.load_core_busy, before.load_core_busy)
    cell: Cell = {
        "scenario": scenario.name,
        "target": name,
        "clients": cfg.clients,
        "requested": phase.requested,
        "ok": phase.ok,
        "errors": phase.errors,
        "error_samples": phase.error_samples,
        "stopped_early": phase.stopped_early,
        "elapsed_s": elapsed,
        "rps": phase.rps,
        "latency_ms": (
            phase.latency_ms if phase.latency_ms is not None else summarize_ms(phase.latencies_s)
        ),
        "ttfb_ms": summarize_ms(phase.ttfbs_s) if scenario.stream else None,
        "cpu_us_per_req": {
            "target": None if target_s is None else target_s / n * 1e6,
            "simulator": sim_s / n * 1e6,
            "loadgen": own_s / n * 1e6,
        },
        "context_switches_per_req": (
            None
            if after.target_switches is None or before.target_switches is None
            else (after.target_switches - before.target_switches) / n
        ),
        "core_busy_pct": {
            "target": _pct(target_s, elapsed),
            "load": _pct(sim_s + own_s, elapsed),
        },
        # Busy time on our cores that none of our processes used (other users, kernel).
        "foreign_pct": {
            "target_core": _pct(_delta(tcore_s, target_s or 0.0), elapsed),
            "load_core": _pct(_delta(lcore_s, sim_s + own_s), elapsed),
        },
        "peak_rss_mib": None if proc is None else proc.peak_rss_mib(),
        "thread_affinity": None if proc is None else proc.thread_affinities(),
    }
    if budget_s is not None:
        cell["request_budget"] = {"seconds": budget_s, "planned": planned, "measured": measured}
    if target is not None and target.name in OURS:
        assert proc is not None
        # One JSON access-log line per request is part of the product; check it happened.
        cell["access_log_lines"] = access_log_lines(proc)
        cell["access_log_expected"] = warm.completed + phase.completed
    return cell
