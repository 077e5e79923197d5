"""How to start each process of the benchmark: the simulated provider and the two proxies."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.loadgen import SDK_HEADERS, chat_body
from loadtest.procs import Fleet, ManagedProcess, StartError, free_ports, http_ok, listening

DIRECT = "direct"
PROMPTPROXY = "promptproxy"
#: promptproxy with one ``kind: anthropic`` provider in front of the same simulator, called
#: with a Claude model: every chat completions request is translated to the Messages API
#: (``/v1/messages``) and its answer, JSON or SSE, back into a chat completion. The
#: difference from promptproxy is what the translation costs.
PROMPTPROXY_CLAUDE = "promptproxy_claude"
#: The model the load generator names when it calls promptproxy_claude.
CLAUDE_MODEL = "claude-sonnet-4-5-20250929"
#: promptproxy with prompt swap-in on every request (base URL /p/bench/v1): resolve the prompt
#: from the snapshot, render its template, replace the system message, re-encode the body.
PROMPTPROXY_SWAP = "promptproxy_swap"
#: promptproxy_swap on a registry of 200 tenants x 15 slugs with tier and tenant overrides
#: (``loadtest.fleet_image``), each request a tenant's: the prompt is composed with its
#: tier's and its own override. The difference from promptproxy_swap is what composing costs.
PROMPTPROXY_TENANTS = "promptproxy_tenants"
#: The tenant the load generator calls as (header ``x-tenant-id``).
BENCH_TENANT_HEADERS = {"x-tenant-id": "t007"}
#: promptproxy_swap with a 10 % canary rollout (sticky per request): a tenth of the requests
#: render the candidate version instead.
PROMPTPROXY_CANARY = "promptproxy_canary"
#: promptproxy_swap with a 25 % shadow rollout: a quarter of the requests are also sent, in
#: the background, to the candidate (same simulator), captured, paired and written to the
#: pairs file. The difference from promptproxy_swap is what shadowing costs.
PROMPTPROXY_SHADOW = "promptproxy_shadow"
MINIMAL = "minimal"
TARGETS = (
    DIRECT,
    PROMPTPROXY,
    PROMPTPROXY_CLAUDE,
    PROMPTPROXY_SWAP,
    PROMPTPROXY_CANARY,
    PROMPTPROXY_SHADOW,
    MINIMAL,
)
#: With ``--baseline REV``: promptproxy and promptproxy_swap as they were at REV, run from a
#: checkout of REV in the same run, so a change is measured against its parent on equal terms.
BASELINE = "baseline"
BASELINE_SWAP = "baseline_swap"
#: Baseline target -> the target of this tree it is compared with.
BASELINES = {BASELINE: PROMPTPROXY, BASELINE_SWAP: PROMPTPROXY_SWAP}
#: Peers, in the same rounds when asked for (``loadtest/peers.py``): nginx as a reverse proxy
#: (C, one worker) and LiteLLM's proxy (Python, one worker), both in front of the simulator.
NGINX = "nginx"
LITELLM = "litellm"
PEERS = (NGINX, LITELLM)
ALL_TARGETS = (*TARGETS, NGINX, LITELLM, BASELINE, BASELINE_SWAP)
OURS = frozenset(
    {PROMPTPROXY, PROMPTPROXY_CLAUDE, PROMPTPROXY_SWAP, PROMPTPROXY_CANARY, PROMPTPROXY_SHADOW}
)
#: Target -> (mode, percent) of the rollout it runs.
ROLLOUTS = {PROMPTPROXY_CANARY: ("canary", 10.0), PROMPTPROXY_SHADOW: ("shadow", 25.0)}

# Renders to the same system prompt the load generator sends, so both proxies forward bodies
# of the same size; the variables take their defaults, the request body stays identical.
_BENCH_PROMPT = """---
variables:
  - {name: shop, type: string, default: an online bookshop}
  - {name: sentences, type: string, default: three}
---
You are a concise assistant for {{ shop }}. Answer in at most {{ sentences }} sentences and \
never invent titles."""

# Same length and shape as the stable prompt, so the two arms cost the provider the same.
_CANDIDATE_TEMPLATE = (
    "You are a concise assistant for {{ shop }}. Reply in at most {{ sentences }} sentences "
    "and never invent titles."
)
_ADMIN_TOKEN = "bench-admin-token"
# The online judge of `--online-judging`: the simulator's `sim-judge` behind the same proxy.
_JUDGE_PROMPT = """---
model: sim-judge
variables:
  - {name: rubric, type: string}
---
You grade an answer against this rubric: {{ rubric }}
Reply with JSON only: {"score": <0 to 1>, "reason": "<one sentence>"}."""

_MINIMAL_SCRIPT = Path(__file__).resolve().parent / "minimal_proxy.py"
# Python import and aiohttp setup take about a second; a slow CI box gets plenty of slack.
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Running:
    """A process that serves ``{base_url}/chat/completions``."""

    name: str
    base_url: str
    proc: ManagedProcess
    #: The model the load generator must name (None: its default, ``gpt-4o-mini``).
    model: str | None = None
    #: promptproxy's admin port (its /metrics), where known.
    admin_port: int | None = None


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus promptproxy's own settings (config file, store, keys).

    The benchmark measures the default configuration; a ``PROMPTPROXY_CONFIG`` or a
    simulator API key left in a shell would silently change what is measured.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env.update(extra)
    return env


def start_simulator(
    fleet: Fleet, cores: set[int] | None, *extra: str, label: str = "simulator"
) -> Running:
    (port,) = free_ports(1)
    proc = fleet.start(
        label,
        [
            sys.executable, "-m", "proxy", "simulate",
            "--host", "127.0.0.1", "--port", str(port), *extra,
        ],
        cores,
        _clean_env(),
    )  # fmt: skip
    proc.wait_ready(http_ok(port, "/_sim/health"), READY_TIMEOUT_S)
    return Running("simulator", f"http://127.0.0.1:{port}/v1", proc)


def start_promptproxy(
    fleet: Fleet,
    upstream: str,
    cores: set[int] | None,
    label: str = PROMPTPROXY,
    wrapper: Sequence[str] = (),
    *,
    swap: bool = False,
    rollout: tuple[str, float] | None = None,
    shadow_url: str | None = None,
    candidate_model: str | None = None,
    source: Path | None = None,
    name: str | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    tenants: bool = False,
    anthropic: bool = False,
    online_judging: float | None = None,
) -> Running:
    """``source``: a checkout to run instead of this tree (``name`` then names the target).
    ``anthropic``: ``upstream`` becomes a ``kind: anthropic`` provider serving ``claude-*``
    (promptproxy_claude). ``online_judging``: the share of the bench prompt's answers judged
    online (``evals.online``) by ``judge.bench``, which pins the simulator's ``sim-judge``."""
    port, admin = free_ports(2)
    command = [
        sys.executable, "-m", "proxy", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
        "--log-level", "INFO",
    ]  # fmt: skip
    # Left alone, the embedded prompt registry would be created inside the repository and
    # shared by every proxy of the run; each one gets its own in the scratch directory.
    store = f"embedded:{fleet.log_dir / label}-registry.db"
    swap = swap or rollout is not None or tenants or online_judging is not None
    if anthropic and swap:
        raise ValueError("promptproxy_claude has no prompt swap-in configured")
    if anthropic:
        # With `providers:` the proxy refuses --upstream; the provider's URL is the
        # simulator's root (the proxy adds /v1/messages). No api_key_env: the client's
        # key is forwarded, as x-api-key.
        config = fleet.log_dir / f"{label}.yaml"
        config.write_text(
            "providers:\n"
            "  - name: anthropic\n"
            "    kind: anthropic\n"
            f"    base_url: {_root_url(upstream)}\n"
            '    models: ["claude-*"]\n'
        )
        command += ["--config", str(config)]
    else:
        command += ["--upstream", upstream]
    if tenants:
        config = fleet.log_dir / f"{label}.yaml"
        config.write_text(f"shadow:\n  sink:\n    dir: {fleet.log_dir / label}-pairs\n")
        command += ["--config", str(config)]
    elif swap:
        prompts = fleet.log_dir / f"{label}-prompts"
        prompts.mkdir(exist_ok=True)
        (prompts / "bench.md").write_text(_BENCH_PROMPT)
        judging = ""
        if online_judging is not None:
            (prompts / "judge.bench.md").write_text(_JUDGE_PROMPT)
            judging = (
                "evals:\n  online:\n"
                f"    - {{match: bench, share: {online_judging}, judge: judge.bench, "
                "rubric: Concise and never invents titles}\n"
            )
        config = fleet.log_dir / f"{label}.yaml"
        config.write_text(
            f"registry:\n  bootstrap_dir: {prompts}\n"
            f"shadow:\n  sink:\n    dir: {fleet.log_dir / label}-pairs\n"
            + (f"  base_url: {shadow_url}\n" if shadow_url else "")
            + judging
        )
        command += ["--config", str(config)]
    env = _clean_env(PROMPTPROXY_STORE=store, PROMPTPROXY_ADMIN_TOKEN=_ADMIN_TOKEN)
    proc = fleet.start(label, command, cores, env, wrapper, cwd=source)
    proc.wait_ready(http_ok(admin, "/readyz"), ready_timeout)
    if name is not None:
        path = "/p/bench/v1" if swap else "/v1"
        return Running(name, f"http://127.0.0.1:{port}{path}", proc)
    if tenants:
        _import_fleet(admin)
        return Running(PROMPTPROXY_TENANTS, f"http://127.0.0.1:{port}/p/bench/v1", proc)
    if rollout is not None:
        _start_rollout(admin, *rollout, model=candidate_model)
        name = next((t for t, r in ROLLOUTS.items() if r == rollout), label)
        return Running(name, f"http://127.0.0.1:{port}/p/bench/v1", proc)
    if swap:
        return Running(
            PROMPTPROXY_SWAP, f"http://127.0.0.1:{port}/p/bench/v1", proc, admin_port=admin
        )
    if anthropic:
        _check_translated(port)
        return Running(PROMPTPROXY_CLAUDE, f"http://127.0.0.1:{port}/v1", proc, CLAUDE_MODEL)
    return Running(PROMPTPROXY, f"http://127.0.0.1:{port}/v1", proc)


def _check_translated(port: int) -> None:
    """One JSON and one streamed request with the Claude model: both must come back as
    chat completions built from a Messages answer (its ``msg_`` id), the stream as SSE
    ending in ``data: [DONE]``, so a config that quietly passed the request through
    (or a provider that was not asked over /v1/messages) fails before anything is measured.
    """
    for stream in (False, True):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=chat_body(stream=stream, model=CLAUDE_MODEL),
            method="POST",
            headers=dict(SDK_HEADERS),
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            kind, body = resp.headers.get("Content-Type", ""), resp.read()
        if stream:
            first = body.split(b"\n\n", 1)[0].removeprefix(b"data: ")
            ok = kind.startswith("text/event-stream") and body.endswith(b"data: [DONE]\n\n")
        else:
            first, ok = body, kind.startswith("application/json")
        answer = json.loads(first)
        if not ok or not str(answer.get("id", "")).startswith("msg_"):
            raise StartError(
                f"promptproxy_claude did not translate (stream={stream}): {kind}, {body[:160]!r}"
            )


def _root_url(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port`` (a kind anthropic provider's URL)."""
    return base_url.removesuffix("/").removesuffix("/v1")


def _admin(admin_port: int, method: str, path: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/admin/v1{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {_ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def _import_fleet(admin_port: int) -> None:
    """Load the 200 x 15 registry in one import (3,060 versions: pushing them one by one
    would measure the admin path, not serving)."""
    from loadtest.fleet_image import fleet_image

    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/admin/v1/registry/import?overwrite=true",
        data=fleet_image().to_json(),
        method="POST",
        headers={"Authorization": f"Bearer {_ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()


def _start_rollout(admin_port: int, mode: str, percent: float, model: str | None) -> None:
    """Push a candidate version of the bench prompt and roll it out; wait until served."""
    _admin(admin_port, "POST", "/prompts/bench/versions", {
        "template": _CANDIDATE_TEMPLATE,
        "model": model,
        "variables": [
            {"name": "shop", "type": "string", "default": "an online bookshop"},
            {"name": "sentences", "type": "string", "default": "three"},
        ],
    })  # fmt: skip
    _admin(admin_port, "PUT", "/prompts/bench/rollout", {
        "candidate": 2, "mode": mode, "percent": percent, "sticky": "none",
    })  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as resp:
            if json.loads(resp.read())["registry"]["revision"] >= 4:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the rollout never reached the proxy's snapshot")
        time.sleep(0.05)


def start_minimal(
    fleet: Fleet,
    upstream: str,
    cores: set[int] | None,
    label: str = MINIMAL,
    wrapper: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_S,
) -> Running:
    (port,) = free_ports(1)
    command = [sys.executable, str(_MINIMAL_SCRIPT), "--port", str(port), "--upstream", upstream]
    proc = fleet.start(label, command, cores, _clean_env(), wrapper)
    # A pass-through has no health route of its own: its listening socket means it serves.
    proc.wait_ready(listening(proc, port), ready_timeout)
    return Running(MINIMAL, f"http://127.0.0.1:{port}/v1", proc)
