"""Deadlines for client connections that are not inside a request: slowloris protection.

aiohttp's server has one timer, ``keepalive_timeout``, and no deadline for reading a
request's head: a client that trickles header bytes, or opens a socket and sends nothing,
holds a file descriptor for as long as that timer (3,630 s by default). Here each connection
is in one of three phases:

- waiting for a request head (from accept, or from the first byte of the next request on a
  kept-alive connection): closed ``header_timeout`` later unless the head is complete. The
  deadline is not moved by further bytes, so trickling does not help;
- in a request (the app's handler runs: body, upstream call, streaming answer): only the
  body has a deadline, ``body_timeout`` after the head; when it passes with the body still
  incomplete, the body stream fails with ``RequestBodyTimeout`` (408, connection closed).
  The upstream call and the answer have the request's own timeouts;
- idle between two requests: closed ``keepalive_timeout`` after the last answer.

"In a request" is reported by the app's middleware (``request_started`` /
``request_finished``), the first code that runs once aiohttp has parsed a head, whichever
parser (C llhttp or Python) is in use. aiohttp's own keep-alive timer stays as a backstop,
set past both deadlines so it never fires first.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import StreamReader, web
from yarl import URL

from proxy.errors import RequestBodyTimeout

HEADER_TIMEOUT: Final = "header_timeout"
IDLE: Final = "idle"
BODY_TIMEOUT: Final = "body_timeout"
REASONS: Final = (HEADER_TIMEOUT, IDLE, BODY_TIMEOUT)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float = 60.0


#: Called with the reason (`header_timeout`, `idle` or `body_timeout`) each time a
#: connection is closed for one.
OnClose = Callable[[str], None]

#: After an answer that ends the connection while the client may still be sending its body
#: (413, 408), what arrives is read and dropped for this long, or up to LINGER_MAX_BYTES,
#: before the socket closes. Closing a socket with unread data makes the kernel answer with
#: a reset, which can overtake the answer and turn a clear 413 or 408 into "connection reset
#: by peer" at the client; the answer needs one round trip, so a short bound is enough, and
#: a refused multi-GiB upload still costs at most this much reading.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 1024 * 1024


def close_after_answer(protocol: web.RequestHandler | None) -> None:
    """End the connection once the answer written so far has gone out, without a reset."""
    if isinstance(protocol, GuardedRequestHandler):
        protocol.close_lingering()
    elif protocol is not None:
        protocol.force_close()


class GuardedRequestHandler(web.RequestHandler):
    __slots__ = (
        "_body",
        "_busy",
        "_deadline",
        "_due",
        "_limits",
        "_linger",
        "_lingered",
        "_on_close",
        "_phase",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: ConnectionLimits,
        on_close: OnClose,
        **kwargs: Any,
    ) -> None:
        backstop = max(limits.header_timeout, limits.keepalive_timeout) + 1.0
        super().__init__(manager, loop=loop, keepalive_timeout=backstop, **kwargs)
        self._limits = limits
        self._on_close = on_close
        self._busy = 0
        #: The one pending timer, due at or before ``_due`` (see ``_arm``).
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._due = 0.0
        self._body: StreamReader | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._lingered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(HEADER_TIMEOUT, self._limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self.force_close()
            return
        if self._phase == IDLE and not self._busy and data:
            # The first byte of the next request starts its header deadline.
            self._arm(HEADER_TIMEOUT, self._limits.header_timeout)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def close_lingering(self) -> None:
        """Send FIN after the answer, drop what the client still sends for
        ``LINGER_SECONDS`` or ``LINGER_MAX_BYTES`` (or until it closes), then close: its
        answer is not overtaken by a reset. Nothing more is parsed or served."""
        transport = self.transport
        if transport is None or self._linger is not None:
            return
        self._disarm()
        # aiohttp's own flag: its handler loop ends without closing the transport, and its
        # data_received drops every byte from now on.
        self._force_close = True
        if isinstance(transport, asyncio.WriteTransport) and transport.can_write_eof():
            transport.write_eof()
        self._linger = self._loop.call_later(LINGER_SECONDS, self.force_close)

    def request_started(self, body: StreamReader | None) -> None:
        """``body``: the request's body stream, if it has one still to arrive."""
        self._busy += 1
        self._disarm()
        if body is not None and not body.is_eof():
            self._body = body
            self._arm(BODY_TIMEOUT, self._limits.body_timeout)

    def request_finished(self) -> None:
        self._busy -= 1
        self._body = None
        if not self._busy and self.transport is not None:
            self._arm(IDLE, self._limits.keepalive_timeout)

    def _arm(self, phase: str, delay: float) -> None:
        # Lazy: a phase change on a busy keep-alive connection (idle, head, request, idle,
        # ... several times per request) only moves ``_due``. The pending timer stays
        # unless it would fire too late; when it fires early it is set again for what is
        # left. Cancelling and making a timer at each change cost ~14 k of the ~190 k
        # instructions the proxy added to a request (callgrind).
        self._phase = phase
        now = self._loop.time()
        due = self._due = now + delay
        deadline = self._deadline
        if deadline is None or deadline.when() > due:
            if deadline is not None:
                deadline.cancel()
            # No later than a request head would be due: a kept-alive connection's next
            # request then finds a timer early enough for its head.
            cap = now + self._limits.header_timeout
            self._deadline = self._loop.call_at(due if due < cap else cap, self._expire)

    def _disarm(self) -> None:
        # The pending timer, if any, finds no phase and lapses.
        self._phase = None

    def _expire(self) -> None:
        self._deadline = None
        if self._phase is None:
            return
        now = self._loop.time()
        if now < self._due:
            self._deadline = self._loop.call_at(self._due, self._expire)
            return
        transport = self.transport
        if self._phase == BODY_TIMEOUT:
            self._expire_body()
            return
        if self._busy or transport is None or self._phase is None:
            return
        if transport.get_write_buffer_size():
            # The last answer is still going out to a slow reader: not idle yet.
            self._arm(self._phase, self._limits.keepalive_timeout)
            return
        self._on_close(self._phase)
        self._phase = None
        self.force_close()

    def _expire_body(self) -> None:
        body, self._body, self._phase = self._body, None, None
        if body is None or body.is_eof() or self.transport is None:
            return
        self._on_close(BODY_TIMEOUT)
        # The handler reading the body gets the error and answers 408; the middleware then
        # closes the connection rather than read the rest.
        body.set_exception(
            RequestBodyTimeout(
                f"The request body did not arrive within {self._limits.body_timeout:g}s."
            )
        )


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are ``GuardedRequestHandler``s: bound here to
    ``host:port``, or, with ``sock``, on a socket bound and listening already (the one the
    workers of ``serve --workers N`` share; closing the site closes this process's copy)."""

    __slots__ = ("_bound_port", "_host", "_limits", "_on_close", "_port", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: ConnectionLimits,
        on_close: OnClose,
        backlog: int = 1024,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._on_close = on_close
        self._sock = sock
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0), once started."""
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self.port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()

        def handler() -> GuardedRequestHandler:
            # access_log=None: request lines are logged by the pipeline, not by aiohttp.
            return GuardedRequestHandler(
                server, loop=loop, limits=self._limits, on_close=self._on_close, access_log=None
            )

        if self._sock is not None:
            listener = await loop.create_server(handler, sock=self._sock, backlog=self._backlog)
        else:
            listener = await loop.create_server(
                handler, self._host, self._port, backlog=self._backlog
            )
        self._server = listener
        if listener.sockets:
            self._bound_port = int(listener.sockets[0].getsockname()[1])


def request_started(request: web.BaseRequest) -> GuardedRequestHandler | None:
    """Tell the request's connection that a request is running; returns it, so the caller
    can call ``request_finished`` on it afterwards (None on a plain aiohttp connection)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol.request_started(request.content if request.body_exists else None)
        return protocol
    return None
