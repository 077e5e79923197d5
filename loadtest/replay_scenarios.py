"""Capture and replay against the fake provider: does a replay of captured traffic flag a
degraded candidate, and pass one that differs from the captured version only by sampling
noise?

Each run pushes a fresh slug's versions (stable, promoted, then one candidate per
scenario), sends ``--calls`` chat completions to the data plane (varied questions and
``prompt_variables``), every one captured (``capture.slugs`` share 1.0), waits until the
proxy has written them, then replays the captured calls on each candidate through the
admin API (``POST /admin/v1/prompts/{slug}/replays``) and keeps the verdict, the failing
measures, each measure's noise and candidate means and p-value, the pairs and the wall
time. Every version samples (``[[sim noise=0.2]]``): a real model never answers twice the
same way, and the replay must not mistake that for a regression. The simulator reads the
``[[sim ...]]`` directives from the rendered system prompt, so the *prompt version* is what
makes a candidate worse, as in production.

    python -m loadtest.replay_scenarios --runs 10

writes ``loadtest/results/replay-scenarios.json``: per scenario the runs, how many were
flagged (fail), passed or inconclusive, and the median replay time.
``tests/integration/test_replay_scenarios.py`` runs one noise-only and one degraded replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

RESULTS = Path(__file__).resolve().parent / "results" / "replay-scenarios.json"

#: The Claude model a candidate may pin: answered through the Messages API translation.
CLAUDE = "claude-sonnet-4-5-20250929"
#: The model the callers name (and stable answers with).
GPT = "gpt-4o-mini"

_BASE = (
    "You answer {{ customer_name }}'s questions about their {{ product }} for Acme support, "
    "kindly and to the point."
)
_NOISE = "noise=0.2"
_VARIABLES = [
    {"name": "customer_name", "type": "string"},
    {"name": "product", "type": "string"},
]
#: The slugs the proxy captures all calls of; each run's slug starts with this.
SLUG_PREFIX = "replay-"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    #: The candidate's template (stable's is ``STABLE``).
    template: str
    #: The verdict a replay should give: ``pass`` or ``fail``.
    expect: str
    #: What a user would notice, for the tables.
    what: str
    #: The model the candidate pins (None: the caller's, gpt-4o-mini).
    model: str | None = None


#: Stable: the prompt every call is captured on.
STABLE = f"{_BASE} [[sim {_NOISE}]]"

SCENARIOS = {
    s.name: s
    for s in (
        # "Please" and "kindly" are words the simulator ignores (as a model would mostly
        # ignore them): the answers differ from stable's by sampling noise only.
        Scenario(
            "noise-only",
            f"Please: {_BASE} [[sim {_NOISE}]]",
            "pass",
            "a cosmetic edit, the same noise",
        ),
        Scenario(
            "longer-3x",
            f"{_BASE} [[sim {_NOISE} longer=3]]",
            "fail",
            "answers three times longer",
        ),
        Scenario(
            "truncates-50pct",
            f"{_BASE} [[sim {_NOISE} truncate=0.5]]",
            "fail",
            "half the answers cut short (finish_reason length)",
        ),
        Scenario(
            "truncates-10pct",
            f"{_BASE} [[sim {_NOISE} truncate=0.1]]",
            "fail",
            "a tenth of the answers cut short: near what the test can see",
        ),
        # From GPT to Claude with the same prompt: answered by the `anthropic` provider
        # through the Messages API translation, compared with the GPT answers captured.
        Scenario(
            "claude-noise-only",
            f"Please: {_BASE} [[sim {_NOISE}]]",
            "pass",
            "the same prompt pinned to Claude, through the translation",
            model=CLAUDE,
        ),
    )
}

_QUESTIONS = (
    "Where is my parcel? It is late.",
    "My router reboots every night, what can I do?",
    "How do I change the password of my account?",
    "Can I get a refund for a device that arrived broken?",
    "The screen flickers when the battery is low.",
    "Is there a discount for a second unit?",
    "I moved house: how do I update my delivery address?",
    "The app says my warranty expired but I bought it in March.",
    "Which cable do I need to connect it to my television?",
    "It makes a buzzing noise after an hour of use.",
    "Can I pay in three instalments?",
    "How long does a repair usually take?",
)
_NAMES = ("Ana", "Bruno", "Chen", "Dara", "Emeka", "Fatima", "Gustav")
_PRODUCTS = ("Acme Router X2", "Acme Phone 5", "Acme Kettle", "Acme Watch", "Acme Drone Mini")


def call_body(n: int) -> dict[str, Any]:
    """The ``n``-th caller's chat completion: questions, names and products vary with
    different periods (12, 7, 5), so 60 calls have 60 distinct (question, name, product)."""
    return {
        "model": GPT,
        "messages": [{"role": "user", "content": _QUESTIONS[n % len(_QUESTIONS)]}],
        "prompt_variables": {
            "customer_name": _NAMES[n % len(_NAMES)],
            "product": _PRODUCTS[n % len(_PRODUCTS)],
        },
        "user": f"customer-{n}",
    }


def proxy_config(sim_url: str, flush_seconds: float = 0.2) -> str:
    """The proxy's config for these runs: GPT models to the simulator's OpenAI face, Claude
    models to its Messages API face (the simulator's root), every call of a ``replay-*``
    slug captured and written often."""
    return (
        "capture:\n"
        f"  slugs: [{{match: '{SLUG_PREFIX}*', share: 1.0}}]\n"
        f"  flush_seconds: {flush_seconds}\n"
        "logging:\n  level: WARNING\n"
        f"metrics:\n  models: [{GPT}, {CLAUDE}]\n"
        "providers:\n"
        f"  - {{name: openai, kind: openai, base_url: '{sim_url}', models: ['gpt-*']}}\n"
        f"  - {{name: anthropic, kind: anthropic, base_url: '{sim_url.removesuffix('/v1')}',"
        " models: ['claude-*']}\n"
    )


@dataclass(slots=True)
class ReplayResult:
    scenario: str
    run: int
    #: Captured calls in the run (each replayed twice: on the candidate and on stable).
    calls: int
    slug: str
    candidate: int
    #: The replay's verdict: pass, fail or inconclusive (``summary.replay.result``).
    result: str
    #: The measures that failed.
    failed: list[str]
    #: Per measure: result, noise_mean, candidate_mean, p_value, effect, pairs a side.
    measures: dict[str, dict[str, Any]]
    captures: int
    skipped: dict[str, int]
    noise_pairs: int
    candidate_pairs: int
    failed_calls: dict[str, int]
    #: The replay request to its `finished` line, seconds.
    seconds: float


@dataclass(slots=True)
class Run:
    run: int
    slug: str
    calls: int
    #: The calls answered 200 (each of them captured).
    answered: int
    #: The first call to the last capture written, seconds.
    capture_seconds: float
    replays: list[ReplayResult] = field(default_factory=list)


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

    async def chat(self, slug: str, body: dict[str, Any]) -> int:
        async with self.session.post(
            f"{self.data_url}/p/{slug}/v1/chat/completions", json=body
        ) as resp:
            await resp.read()
            return resp.status

    async def captures_written(self) -> int:
        """Captures this proxy has written to its store since it started (its metrics)."""
        async with self.session.get(f"{self.admin_url}/metrics") as resp:
            text = await resp.text()
        return written_of(text)

    async def replay(self, slug: str, candidate: int, limit: int, concurrency: int) -> Any:
        """The replay's ``finished`` line's run; raises on anything else."""
        body = {"candidate": candidate, "since": "1h", "limit": limit, "concurrency": concurrency}
        timeout = aiohttp.ClientTimeout(total=600)
        async with self.session.post(
            f"{self.admin_url}/admin/v1/prompts/{slug}/replays",
            json=body,
            headers=self.headers,
            timeout=timeout,
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"replay refused: {resp.status} {raw[:500]!r}")
        lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        last = lines[-1] if lines else {}
        if last.get("event") != "finished":
            raise RuntimeError(f"replay did not finish: {last}")
        return last["run"]


_WRITTEN = re.compile(r'^promptproxy_captures_total\{result="written"\} (\S+)$', re.MULTILINE)


def written_of(metrics_text: str) -> int:
    """``promptproxy_captures_total{result="written"}`` in a Prometheus exposition."""
    match = _WRITTEN.search(metrics_text)
    return int(float(match.group(1))) if match else 0


async def seed(client: Client, slug: str, scenarios: Sequence[Scenario]) -> dict[str, int]:
    """Stable as v1, promoted, then each scenario's candidate; the versions by scenario."""
    versions: dict[str, int] = {}
    for name, template, model in (
        ("stable", STABLE, None),
        *((s.name, s.template, s.model) for s in scenarios),
    ):
        version: dict[str, Any] = {"template": template, "variables": _VARIABLES}
        if model is not None:
            version["model"] = model
        status, body = await client.admin("POST", f"/prompts/{slug}/versions", version)
        if status != 201:
            raise RuntimeError(f"push failed: {status} {body}")
        versions[name] = int(body["version"]["version"])
    status, body = await client.admin("POST", f"/prompts/{slug}/promote", {"version": 1})
    if status != 200:
        raise RuntimeError(f"promote failed: {status} {body}")
    return versions


async def drive(client: Client, slug: str, calls: int, concurrency: int) -> int:
    """``calls`` captured calls, ``concurrency`` at a time; how many were answered 200.

    The data plane serves a new slug once its registry snapshot refreshes: the first call
    is sent again until it is answered (a call of an unknown slug is not captured)."""
    deadline = time.monotonic() + 10
    while (status := await client.chat(slug, call_body(0))) != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy never served {slug}: {status}")
        await asyncio.sleep(0.05)
    todo = iter(range(1, calls))
    answered = 1

    async def worker() -> None:
        nonlocal answered
        for n in todo:
            status = await client.chat(slug, call_body(n))
            answered += status == 200  # after the await: += would read it before

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


async def wait_written(client: Client, target: int) -> None:
    """Until the proxy has written ``target`` captures since it started (30 s at most)."""
    try:
        async with asyncio.timeout(30):
            # Another process's counter: nothing here to wait on but its metrics.
            while await client.captures_written() < target:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        written = await client.captures_written()
        raise RuntimeError(f"{written} captures written after 30 s, {target} expected") from None


def replay_result(
    scenario: str, run: int, calls: int, slug: str, candidate: int, finished: Any
) -> ReplayResult:
    """What a replay's finished run says, the measures that never applied left out."""
    replay = finished["summary"]["replay"]
    measures = {
        m["measure"]: {
            "result": m["result"],
            "noise_mean": _round(m["noise_mean"]),
            "candidate_mean": _round(m["candidate_mean"]),
            "p_value": None if m["p_value"] is None else float(f"{m['p_value']:.3g}"),
            "effect": _round(m["effect"]),
            "noise_n": m["noise_n"],
            "candidate_n": m["candidate_n"],
        }
        for m in replay["measures"]
        if m["noise_n"] or m["candidate_n"]
    }
    return ReplayResult(
        scenario=scenario,
        run=run,
        calls=calls,
        slug=slug,
        candidate=candidate,
        result=replay["result"],
        failed=[name for name, m in measures.items() if m["result"] == "fail"],
        measures=measures,
        captures=replay["captures"],
        skipped=dict(replay["skipped"]),
        noise_pairs=replay["noise_pairs"],
        candidate_pairs=replay["candidate_pairs"],
        failed_calls=dict(replay.get("failed_calls") or {}),
        seconds=0.0,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def run_once(
    client: Client,
    scenarios: Sequence[Scenario],
    *,
    run: int = 1,
    calls: int = 60,
    concurrency: int = 8,
) -> Run:
    """One run: a fresh slug, ``calls`` captured calls, a replay per scenario in turn."""
    slug = f"{SLUG_PREFIX}{uuid.uuid4().hex[:8]}"
    versions = await seed(client, slug, scenarios)
    before = await client.captures_written()
    t0 = time.monotonic()
    answered = await drive(client, slug, calls, concurrency)
    await wait_written(client, before + answered)
    out = Run(run, slug, calls, answered, round(time.monotonic() - t0, 2))
    for scenario in scenarios:
        started = time.monotonic()
        finished = await client.replay(slug, versions[scenario.name], calls, concurrency)
        version = versions[scenario.name]
        result = replay_result(scenario.name, run, calls, slug, version, finished)
        result.seconds = round(time.monotonic() - started, 2)
        out.replays.append(result)
    return out


def summarize(results: Sequence[ReplayResult]) -> dict[str, Any]:
    """Per scenario (in ``SCENARIOS`` order, then any other): runs, verdicts, the measures
    that failed and how often, the median replay time, and per measure the noise and
    candidate means and the p-values ([min, median, max] over runs) and the candidate's
    excess over the noise (``candidate_mean - noise_mean``: mean, standard deviation, max),
    which is what the margin is compared with."""
    names = [*SCENARIOS, *sorted({r.scenario for r in results} - set(SCENARIOS))]
    out: dict[str, Any] = {}
    for name in names:
        runs = [r for r in results if r.scenario == name]
        if not runs:
            continue
        failing: dict[str, int] = {}
        for r in runs:
            for measure in r.failed:
                failing[measure] = failing.get(measure, 0) + 1
        scenario = SCENARIOS.get(name)
        out[name] = {
            "what": None if scenario is None else scenario.what,
            "expect": None if scenario is None else scenario.expect,
            "runs": len(runs),
            "flagged": sum(r.result == "fail" for r in runs),
            "passed": sum(r.result == "pass" for r in runs),
            "inconclusive": sum(r.result == "inconclusive" for r in runs),
            "failing_measures": failing,
            # The fewest pairs of a replay: every captured call is replayed on both sides.
            "min_pairs": min(min(r.noise_pairs, r.candidate_pairs) for r in runs),
            "median_seconds": round(statistics.median(r.seconds for r in runs), 3),
            "measures": measure_stats(runs),
        }
    return out


def measure_stats(runs: Sequence[ReplayResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for measure in sorted({m for r in runs for m in r.measures}):
        entry: dict[str, Any] = {}
        for key in ("noise_mean", "candidate_mean", "p_value"):
            present = [v for r in runs if (v := r.measures.get(measure, {}).get(key)) is not None]
            if present:
                entry[key] = [min(present), statistics.median(present), max(present)]
        excess = [
            m["candidate_mean"] - m["noise_mean"]
            for r in runs
            if (m := r.measures.get(measure))
            and m["candidate_mean"] is not None
            and m["noise_mean"] is not None
        ]
        if excess:
            entry["excess"] = {
                "mean": round(statistics.fmean(excess), 4),
                "sd": round(statistics.stdev(excess), 4) if len(excess) > 1 else None,
                "max": round(max(excess), 4),
            }
        out[measure] = entry
    return out


def row(result: ReplayResult) -> dict[str, Any]:
    """One replay on one line of the results file: per measure that applied, [result,
    noise mean, candidate mean, p-value]."""
    return {
        "run": result.run,
        "calls": result.calls,
        "scenario": result.scenario,
        "result": result.result,
        "failed": result.failed,
        "pairs": [result.noise_pairs, result.candidate_pairs],
        "failed_calls": result.failed_calls,
        "seconds": result.seconds,
        "measures": {
            name: [m["result"], m["noise_mean"], m["candidate_mean"], m["p_value"]]
            for name, m in result.measures.items()
        },
    }


def results_json(head: dict[str, Any], rows: Sequence[dict[str, Any]]) -> bytes:
    """``head`` indented, then ``rows`` one per line: a thousand replays stay readable and
    small."""
    text = orjson.dumps(head, option=orjson.OPT_INDENT_2).decode().rstrip()
    assert text.endswith("}")
    lines = ",\n".join("    " + orjson.dumps(r).decode() for r in rows)
    rows_text = f'"rows": [\n{lines}\n  ]' if rows else '"rows": []'
    sep = ",\n  " if head else "\n  "
    return (text[:-1].rstrip() + sep + rows_text + "\n}\n").encode()


async def _main(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # Run from the repository root (`python -m loadtest...`): the process helpers are the
    # test suite's own.
    from tests.processes import proxy, simulator

    scenarios = [SCENARIOS[name] for name in args.scenario or SCENARIOS]
    calls = args.calls or [60]
    runs: list[Run] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator(Path(tmp), "--first-byte-ms", str(args.first_byte_ms)) as (sim_url, _),
        proxy(
            Path(tmp), None, proxy_config(sim_url), env={"PROMPTPROXY_ADMIN_TOKEN": "bench"}
        ) as proc,
    ):
        async with aiohttp.ClientSession() as session:
            client = Client(session, proc.url[: -len("/v1")], proc.admin_url, "bench")
            for n in range(1, args.runs + 1):
                for count in calls:
                    run = await run_once(client, scenarios, run=n, calls=count)
                    runs.append(run)
                    for r in run.replays:
                        print(
                            f"run {n} ({count} calls) {r.scenario}: {r.result} "
                            f"failed={r.failed} {r.seconds} s",
                            flush=True,
                        )
                if args.budget and time.monotonic() - started > args.budget:
                    print(f"stopping after {n} runs: past the {args.budget} s budget", flush=True)
                    break
    replays = [r for run in runs for r in run.replays]
    head = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "runs": max((run.run for run in runs), default=0),
        "simulator_first_byte_ms": args.first_byte_ms,
        "rows": f"the replays of the first {args.rows} runs",
        "wall_seconds": round(time.monotonic() - started, 1),
        "stable": STABLE,
        "candidates": {s.name: {"template": s.template, "model": s.model} for s in scenarios},
        "capture_seconds": {
            str(count): statistics.median(r.capture_seconds for r in runs if r.calls == count)
            for count in calls
        },
        "summary": {
            str(count): summarize([r for r in replays if r.calls == count]) for count in calls
        },
    }
    return head, [row(r) for r in replays if r.run <= args.rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--calls",
        type=int,
        action="append",
        help="captured calls per run (default 60); repeat for several counts, each run once",
    )
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--budget", type=float, default=0, help="stop after the run that passes this many s"
    )
    parser.add_argument(
        "--first-byte-ms", type=float, default=0.0, help="the simulator's delay per answer"
    )
    parser.add_argument(
        "--rows", type=int, default=10, help="runs whose replays are listed one by one"
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    head, rows = asyncio.run(_main(args))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(results_json(head, rows))
    print(orjson.dumps(head["summary"], option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
