"""Process lifecycle: uvloop, the two listeners, SIGTERM -> drain -> exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.backends.embedded_lock import serving_lock
from proxy.config import Settings
from proxy.exchange.upstream import PoolUsage
from proxy.fd_limit import raise_soft_limit
from proxy.log import APP_LOGGER, LineSink, setup_logging
from proxy.metrics import ProxyMetrics
from proxy.preflight import check_upstream, listen_error, warn_weak_tokens
from proxy.services import open_services
from proxy.web.app import build_admin_app, build_data_app
from proxy.web.listen import listen
from proxy.workers.spec import WorkerSpec

_log = logging.getLogger(APP_LOGGER)


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    log_sink: LineSink | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """Run until ``stop`` is set, then drain open requests within the grace period.

    As one of the workers of ``serve --workers N`` (``worker``), the data plane is the
    socket the supervisor bound, and the admin app listens on a private unix socket the
    supervisor's admin port forwards to (docs/workers.md)."""
    config = settings.config
    raise_soft_limit(config)
    async with AsyncExitStack() as stack:
        if not config.registry.backend.shared:
            # Before anything opens the store's files: a second server on them fails here.
            stack.enter_context(serving_lock(config.registry.store))
        if config.simulator.enabled:
            # Only now: a production server never loads the simulated provider.
            from proxy.simulator import SimulatorSettings, start_simulator

            sim = config.simulator
            try:
                sim_runner, sim_port = await start_simulator(
                    sim.host,
                    sim.port,
                    SimulatorSettings(
                        first_byte_ms=sim.first_byte_ms,
                        chunk_delay_ms=sim.chunk_delay_ms,
                        chunks=sim.chunks,
                    ),
                )
            except OSError as exc:
                raise listen_error(
                    "simulated provider", "simulator.port", sim.host, sim.port, exc
                ) from None
            stack.push_async_callback(sim_runner.cleanup)
            _log.info("simulated provider listening on http://%s:%d/v1", sim.host, sim_port)

        await check_upstream(config)
        if worker is None:  # the supervisor said it already, once for all its workers
            warn_weak_tokens(settings.admin_tokens)
        services = await stack.enter_async_context(open_services(settings))
        if log_sink is not None:
            services.metrics.log_lines_dropped.set_function(lambda: log_sink.dropped)
        _watch_upstream_pool(services.upstream.pool, services.metrics)
        grace = config.server.shutdown_grace_seconds
        data_runner = web.AppRunner(
            build_data_app(services),
            # Cancel the handler when the client disconnects, so the upstream request is
            # closed at once instead of when the next chunk fails to write.
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=grace,
        )
        admin_runner = web.AppRunner(build_admin_app(services), access_log=None)
        stack.push_async_callback(admin_runner.cleanup)
        data_site = await listen(
            data_runner,
            config.server.host,
            config.server.port,
            label="data",
            what="data plane",
            setting="server.port",
            server=config.server,
            metrics=services.metrics,
            sock=None if worker is None else _inherited_socket(worker.data_fd),
        )
        data_name = data_site.name
        if worker is None:
            own_url = loopback_url(data_runner.addresses)
        else:
            # Eval calls carry this process's eval key (random per process): on the shared
            # port the kernel would hand them to any worker, and the others refuse the key
            # (403). A listener of this worker's own, on loopback, takes them instead.
            own = await listen(
                data_runner,
                "127.0.0.1",
                0,
                label="data",
                what="worker's own loopback listener (eval calls)",
                setting="server.workers",
                server=config.server,
                metrics=services.metrics,
            )
            own_url = f"http://127.0.0.1:{own.port}"
        services.evals.listening(
            own_url,
            services.pipeline.eval_key,
            settings.eval_api_key,
        )
        try:
            if worker is None:
                admin_site = await listen(
                    admin_runner,
                    config.server.admin_host,
                    config.server.admin_port,
                    label="admin",
                    what="admin endpoints",
                    setting="server.admin_port",
                    server=config.server,
                    metrics=services.metrics,
                )
                admin_name = admin_site.name
            else:
                admin_name = await _start_private_admin(admin_runner, worker.admin_path)
            _freeze_startup_heap()
            _log.info(
                "promptproxy %sserving data plane on %s, admin on %s, %s",
                "" if worker is None else f"worker {worker.index} ",
                data_name,
                admin_name,
                ", ".join(
                    f"provider {p.name} {p.base_url} ({', '.join(p.models)})"
                    for p in config.provider_list()
                )
                if config.providers
                else f"upstream {config.upstream.base_url}",
            )
            await stop.wait()
            _log.info("shutting down: readiness is now 503, draining for up to %.0fs", grace)
            services.lifecycle.start_draining()
            # Before the data plane closes under them: a run cut short is not stored (its
            # calls failing to connect would store a failed run the gates then read).
            await services.evals.close()
        finally:
            await data_runner.cleanup()


def _inherited_socket(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def _start_private_admin(runner: web.AppRunner, path: str) -> str:
    """A worker's admin app, for the supervisor only: a unix socket in its private runtime
    directory. No deadlines here: the supervisor's own admin port has them."""
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return f"unix:{path}"


def loopback_url(addresses: list[Any]) -> str:
    """This process's way to its own data plane (eval runs call it): the first bound
    address, a wildcard one reached on loopback."""
    host, port = addresses[0][0], addresses[0][1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _watch_upstream_pool(pool: PoolUsage | None, metrics: ProxyMetrics) -> None:
    """The pool gauges are read on scrape, so the request path pays nothing for them."""
    if pool is None:
        return
    metrics.upstream_pool_in_use.set_function(pool.in_use)
    metrics.upstream_pool_waiting.set_function(pool.waiting)
    metrics.upstream_pool_limit.set(pool.limit)


def _freeze_startup_heap() -> None:
    """Move everything built at startup (modules, config, templates, metric families) out of
    the collector's reach. A full collection otherwise walks that whole heap, tens of ms
    with the loop stopped: measured as 13-35 ms pauses, enough to move the p99 of every
    request in flight. Request garbage is still collected as usual.

    Full collections stay short only while serving keeps no GC-tracked object per request:
    each one walks all of them again (tests/component/test_serving_heap.py). The thresholds
    stay CPython's on purpose: a young threshold of 5,000 cut the collector's CPU per
    swap-in request from 7 to 1 us, but where requests do leave cycles (refused shadow
    connects, ~55 cyclic objects each) it saved nothing and made every young collection
    3-6 ms instead of 0.2-0.4."""
    gc.collect()
    gc.freeze()


async def _main(settings: Settings, log_sink: LineSink, worker: WorkerSpec | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if worker is None:
        await serve(settings, stop, log_sink, worker)
        return
    orphaned = _watch_lifeline(loop, worker.lifeline_fd, stop)
    try:
        await serve(settings, stop, log_sink, worker)
    finally:
        if orphaned.is_set():
            _leave_private_dir(Path(worker.admin_path))


def _watch_lifeline(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> asyncio.Event:
    """The supervisor writes nothing to the pipe: it becomes readable (end of file) only
    when the supervisor exits, killed or not. The worker then drains as on SIGTERM; the
    event returned is set then."""
    orphaned = asyncio.Event()

    def gone() -> None:
        loop.remove_reader(fd)
        _log.warning("the supervisor is gone: draining")
        orphaned.set()
        stop.set()

    loop.add_reader(fd, gone)
    return orphaned


def _leave_private_dir(admin_path: Path) -> None:
    """A supervisor gone without cleaning up (SIGKILL) leaves its private directory to the
    workers: each removes its socket, and the last one out the directory (``rmdir`` fails
    while another's socket is there). Only then: while the supervisor lives, a worker
    started in an empty directory must still find it."""
    with contextlib.suppress(FileNotFoundError):
        admin_path.unlink()
    with contextlib.suppress(OSError):
        admin_path.parent.rmdir()


def run(settings: Settings, worker: WorkerSpec | None = None) -> None:
    sink = setup_logging(settings.config.logging.level)
    try:
        if sys.platform != "win32":
            import uvloop

            uvloop.run(_main(settings, sink, worker))
        else:
            asyncio.run(_main(settings, sink, worker))
    finally:
        sink.stop()
