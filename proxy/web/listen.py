"""A listener with the connection deadlines (conn_guard.py) and its connection metrics,
for a server's ports and the supervisor's admin port alike."""

from __future__ import annotations

import socket
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter, Gauge

from proxy.config import ServerConfig
from proxy.preflight import listen_error
from proxy.web.conn_guard import REASONS, ConnectionLimits, GuardedSite


class ListenerMetrics(Protocol):
    """The connection families a listener reports to (a server's, or the supervisor's
    for its admin port)."""

    connections_open: Gauge
    connections_closed: Counter


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    *,
    label: str,
    what: str,
    setting: str,
    server: ServerConfig,
    metrics: ListenerMetrics,
    sock: socket.socket | None = None,
) -> GuardedSite:
    """One listener of ``runner`` (set up on its first) whose connections get the header
    and keep-alive deadlines; a port it cannot take is one clear line (``listen_error``),
    not a traceback. With ``sock``, the listener is that socket, bound already (a worker's
    share of the data port)."""
    if runner.server is None:
        await runner.setup()
        _count_open(runner, metrics, label)
    closed = {reason: metrics.connections_closed.labels(label, reason) for reason in REASONS}
    site = GuardedSite(
        runner,
        host,
        port,
        limits=ConnectionLimits(
            header_timeout=server.header_timeout_seconds,
            keepalive_timeout=server.keepalive_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
        ),
        on_close=lambda reason: closed[reason].inc(),
        backlog=1024,
        sock=sock,
    )
    try:
        await site.start()
    except OSError as exc:
        raise listen_error(what, setting, host, port, exc) from None
    return site


def _count_open(runner: web.AppRunner, metrics: ListenerMetrics, label: str) -> None:
    """Read on scrape: the request path pays nothing for it."""
    handlers = runner.server
    if handlers is not None:
        metrics.connections_open.labels(label).set_function(lambda: len(handlers.connections))
