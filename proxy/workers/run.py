"""``serve --workers N``: bind the data port once, start the admin front and the workers,
and stop them all on SIGTERM (docs/workers.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import ServerConfig, Settings
from proxy.log import APP_LOGGER, setup_logging
from proxy.preflight import StartupError, listen_error, warn_weak_tokens
from proxy.web.listen import listen
from proxy.workers.front import build_front_app
from proxy.workers.supervisor import Supervisor, SupervisorMetrics, worker_command

_log = logging.getLogger(APP_LOGGER)
#: The accept queue every worker takes connections from: long, because it is also where
#: connections wait while a worker is replaced.
BACKLOG = 1024


def bind_data_socket(host: str, port: int) -> socket.socket:
    """The data plane's listening socket, bound once for every worker; a port it cannot
    take is one clear line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ][0]
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise listen_error("data plane", "server.port", host, port, exc) from None
    return sock


def run_supervisor(settings: Settings, serve_args: Sequence[str]) -> int:
    """Run N workers until SIGTERM or SIGINT; the exit status. ``serve_args``: the
    `serve` options a worker needs to load the same configuration."""
    sink = setup_logging(settings.config.logging.level)
    try:
        if sys.platform != "win32":
            import uvloop

            status = uvloop.run(_main(settings, serve_args))
        else:
            status = asyncio.run(_main(settings, serve_args))
        return status
    finally:
        sink.stop()


async def _main(settings: Settings, serve_args: Sequence[str]) -> int:
    server = settings.config.server
    count = server.worker_count()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    data = bind_data_socket(server.host, server.port)
    try:
        runtime = Path(tempfile.mkdtemp(prefix="promptproxy-workers-"))
    except OSError as exc:
        data.close()
        raise StartupError(
            f"cannot create the workers' private directory in {tempfile.gettempdir()}: "
            f"{exc.strerror or exc}; set TMPDIR to a writable directory"
        ) from None
    warn_weak_tokens(settings.admin_tokens)  # here once, not by each worker
    metrics = SupervisorMetrics(CollectorRegistry(auto_describe=True))
    supervisor = Supervisor(
        command=worker_command(serve_args),
        count=count,
        data=data,
        runtime_dir=runtime,
        metrics=metrics,
        stop=stop,
        grace=server.shutdown_grace_seconds,
    )
    runner = web.AppRunner(build_front_app(supervisor, metrics), access_log=None)
    try:
        admin_name = await _start_admin(runner, server, metrics)
        host, port = data.getsockname()[:2]
        _log.info(
            "promptproxy supervisor serving data plane on http://%s:%d with %d workers, admin "
            "on %s (workers' admin endpoints in %s)",
            host,
            port,
            count,
            admin_name,
            runtime,
        )
        status = await supervisor.run()
    finally:
        await runner.cleanup()
        await supervisor.close()
        data.close()
        shutil.rmtree(runtime, ignore_errors=True)
    _log.info("promptproxy supervisor exiting with %d", status)
    return status


async def _start_admin(
    runner: web.AppRunner, server: ServerConfig, metrics: SupervisorMetrics
) -> str:
    site = await listen(
        runner,
        server.admin_host,
        server.admin_port,
        label="admin",
        what="admin endpoints",
        setting="server.admin_port",
        server=server,
        metrics=metrics,
    )
    return site.name
