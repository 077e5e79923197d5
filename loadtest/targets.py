"""How to start each process of the benchmark: the simulated provider and the two proxies."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.procs import Fleet, ManagedProcess, free_ports, http_ok, listening

DIRECT = "direct"
PROMPTPROXY = "promptproxy"
#: promptproxy with prompt swap-in on every request (base URL /p/bench/v1): resolve the prompt
#: from the snapshot, render its template, replace the system message, re-encode the body.
PROMPTPROXY_SWAP = "promptproxy_swap"
MINIMAL = "minimal"
TARGETS = (DIRECT, PROMPTPROXY, PROMPTPROXY_SWAP, MINIMAL)
OURS = frozenset({PROMPTPROXY, PROMPTPROXY_SWAP})

# Renders to the same system prompt the load generator sends, so both proxies forward bodies
# of the same size; the variables take their defaults, the request body stays identical.
_BENCH_PROMPT = """---
variables:
  - {name: shop, type: string, default: an online bookshop}
  - {name: sentences, type: string, default: three}
---
You are a concise assistant for {{ shop }}. Answer in at most {{ sentences }} sentences and \
never invent titles."""

_MINIMAL_SCRIPT = Path(__file__).resolve().parent / "minimal_proxy.py"
# Python import and aiohttp setup take about a second; a slow CI box gets plenty of slack.
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Running:
    """A process that serves ``{base_url}/chat/completions``."""

    name: str
    base_url: str
    proc: ManagedProcess


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus promptproxy's own settings (config file, store, keys).

    The benchmark measures the default configuration; a ``PROMPTPROXY_CONFIG`` or a
    simulator API key left in a shell would silently change what is measured.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env.update(extra)
    return env


def start_simulator(fleet: Fleet, cores: set[int] | None) -> Running:
    (port,) = free_ports(1)
    proc = fleet.start(
        "simulator",
        [sys.executable, "-m", "proxy", "simulate", "--host", "127.0.0.1", "--port", str(port)],
        cores,
        _clean_env(),
    )
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
) -> Running:
    port, admin = free_ports(2)
    command = [
        sys.executable, "-m", "proxy", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
        "--upstream", upstream, "--log-level", "INFO",
    ]  # fmt: skip
    # Left alone, the embedded prompt registry would be created inside the repository and
    # shared by every proxy of the run; each one gets its own in the scratch directory.
    store = f"embedded:{fleet.log_dir / label}-registry.db"
    if swap:
        prompts = fleet.log_dir / f"{label}-prompts"
        prompts.mkdir(exist_ok=True)
        (prompts / "bench.md").write_text(_BENCH_PROMPT)
        config = fleet.log_dir / f"{label}.yaml"
        config.write_text(f"registry:\n  bootstrap_dir: {prompts}\n")
        command += ["--config", str(config)]
    proc = fleet.start(label, command, cores, _clean_env(PROMPTPROXY_STORE=store), wrapper)
    proc.wait_ready(http_ok(admin, "/readyz"), READY_TIMEOUT_S)
    if swap:
        return Running(PROMPTPROXY_SWAP, f"http://127.0.0.1:{port}/p/bench/v1", proc)
    return Running(PROMPTPROXY, f"http://127.0.0.1:{port}/v1", proc)


def start_minimal(
    fleet: Fleet,
    upstream: str,
    cores: set[int] | None,
    label: str = MINIMAL,
    wrapper: Sequence[str] = (),
) -> Running:
    (port,) = free_ports(1)
    command = [sys.executable, str(_MINIMAL_SCRIPT), "--port", str(port), "--upstream", upstream]
    proc = fleet.start(label, command, cores, _clean_env(), wrapper)
    # A pass-through has no health route of its own: its listening socket means it serves.
    proc.wait_ready(listening(proc, port), READY_TIMEOUT_S)
    return Running(MINIMAL, f"http://127.0.0.1:{port}/v1", proc)
