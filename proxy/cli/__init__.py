"""The `promptproxy` command. `python -m proxy` is the same.

Serving imports the server only when `serve` runs, and the simulated provider only when
`simulate` runs; the admin commands (prompts, rollout, shadow, fleet, registry, tenants) talk to the
admin API through ``proxy.cli.client``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from proxy import __version__

# The groups under other names: `proxy.cli.shadow` must stay the module (tests patch it).
from proxy.cli.context import admin_options
from proxy.cli.evals import eval_command, replay_command
from proxy.cli.fleet import fleet as fleet_command
from proxy.cli.prompts import prompts as prompts_group
from proxy.cli.registry import registry as registry_group
from proxy.cli.rollout import rollout as rollout_group
from proxy.cli.shadow import shadow as shadow_group
from proxy.cli.tenants import tenants as tenants_group
from proxy.config import ConfigError, Settings, load_config


def _load(config: Path | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_config(config, overrides=overrides)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="promptproxy")
@admin_options()
def main() -> None:
    """promptproxy: a release lifecycle for LLM prompts, at the network layer."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="PROMPTPROXY_CONFIG",
    help="YAML config file (see config/).",
)
@click.option("--host", help="Data-plane listen address (default 0.0.0.0).")
@click.option("--port", type=int, help="Data-plane port (default 8080).")
@click.option("--admin-host", help="Admin listen address (default 127.0.0.1).")
@click.option("--admin-port", type=int, help="Admin port: /metrics, /healthz, /readyz (8081).")
@click.option(
    "--upstream", help="Base URL of the OpenAI-compatible provider, e.g. https://api.openai.com/v1."
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--store",
    envvar="PROMPTPROXY_STORE",
    help="Where shared state lives: embedded:PATH (default), redis://host:port/db or "
    "postgresql://user@host/db.",
)
@click.option(
    "--workers",
    help="Processes serving the data port, each a replica (default 1; `auto`: one per "
    "core). More than one needs a redis:// or postgresql:// store.",
)
# A worker of `serve --workers N`, started by the supervisor (proxy/workers/).
@click.option("--worker", "worker_spec", hidden=True)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    admin_host: str | None,
    admin_port: int | None,
    upstream: str | None,
    log_level: str | None,
    store: str | None,
    workers: str | None,
    worker_spec: str | None,
) -> None:
    """Run the proxy. Exits 2 on a bad config, 1 when it cannot start (a busy port, an
    upstream on this machine that does not answer), with one line on stderr."""
    from proxy.preflight import StartupError
    from proxy.server import run
    from proxy.workers.spec import WorkerSpec

    given = {
        "--config": config_path,
        "--host": host,
        "--port": port,
        "--admin-host": admin_host,
        "--admin-port": admin_port,
        "--upstream": upstream,
        "--log-level": log_level,
        "--store": store,
    }
    settings = _load(
        config_path,
        {
            "server.host": host,
            "server.port": port,
            "server.admin_host": admin_host,
            "server.admin_port": admin_port,
            "upstream.base_url": upstream,
            "logging.level": log_level,
            "registry.store": store,
            "server.workers": int(workers) if workers and workers.isdigit() else workers,
        },
    )
    try:
        if worker_spec is not None:
            run(settings, WorkerSpec.decode(worker_spec))
        elif settings.config.server.worker_count() > 1:
            from proxy.workers.run import run_supervisor

            # A worker loads the config from the same options (and the same environment).
            args = [part for flag, v in given.items() if v is not None for part in (flag, str(v))]
            sys.exit(run_supervisor(settings, args))
        else:
            run(settings)
    except StartupError as exc:
        click.echo(f"promptproxy: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option(
    "--first-byte-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Delay before the response headers.",
)
@click.option(
    "--chunk-delay-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Delay between streamed events.",
)
@click.option(
    "--chunks", default=8, show_default=True, type=int, help="Content chunks per streamed answer."
)
@click.option(
    "--api-key", envvar="PROMPTPROXY_SIM_API_KEY", help="Require this bearer key (401 otherwise)."
)
def simulate(
    host: str,
    port: int,
    first_byte_ms: float,
    chunk_delay_ms: float,
    chunks: int,
    api_key: str | None,
) -> None:
    """Run the simulated OpenAI-compatible provider (for tests, demos and benchmarks)."""
    import asyncio
    import signal

    from proxy.simulator import SimulatorSettings, serve_simulator

    settings = SimulatorSettings(
        first_byte_ms=first_byte_ms, chunk_delay_ms=chunk_delay_ms, chunks=chunks, api_key=api_key
    )

    def announce(bound_port: int) -> None:
        # The port the system chose with --port 0; scripts and tests read it from here.
        click.echo(f"simulated provider listening on http://{host}:{bound_port}/v1")
        sys.stdout.flush()

    async def until_stopped() -> None:
        # SIGTERM as well as Ctrl-C: as a container's PID 1 a process ignores a signal it
        # has no handler for, so `docker stop` would wait its whole timeout, then SIGKILL.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(serve_simulator(host, port, settings, on_listening=announce))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (serving, stopping):
            task.cancel()
        await asyncio.gather(serving, stopping, return_exceptions=True)
        if serving in done:
            serving.result()  # it ended by itself: a failed start (a busy port) is an error

    import uvloop

    uvloop.run(until_stopped())


main.add_command(prompts_group)
main.add_command(rollout_group)
main.add_command(shadow_group)
main.add_command(fleet_command)
main.add_command(registry_group)
main.add_command(tenants_group)
main.add_command(eval_command)
main.add_command(replay_command)


@main.group("config")
def config_group() -> None:
    """Configuration tools."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def config_check(path: Path) -> None:
    """Validate a config file; exit 2 listing every problem by field path. Says which
    backend the store names and whether replicas share it."""
    from proxy.backends.kinds import describe_store

    settings = _load(path, {})
    config = settings.config
    backend = config.registry.backend
    scope = "shared by replicas" if backend.shared else "one process"
    where = (
        "providers " + ", ".join(p.name for p in config.providers)
        if config.providers
        else f"upstream {config.upstream.base_url}"
    )
    store = describe_store(config.registry.store)
    click.echo(f"{path}: OK ({where}; store {store}: {backend.label}, {scope})")
