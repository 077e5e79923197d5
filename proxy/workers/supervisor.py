"""The parent of ``serve --workers N``: starts the workers, watches them, restarts a dead one.

Each worker is ``python -m proxy serve ... --worker SPEC``: a fresh interpreter, never a fork
of this process (nothing here has to be safe to fork). It inherits, by ``pass_fds``:

- the data plane's listening socket, bound once here: every worker accepts from the one
  accept queue, so connections a dead worker had not accepted yet wait there for the
  others (with SO_REUSEPORT each worker would have its own queue, lost with it);
- the read end of the lifeline pipe, whose write end only this process holds: when this
  process ends, however it ends, the workers see end of file and drain.

A worker that exits while the supervisor is not stopping is started again in its slot:
at once when it had been ready, else after a backoff (0.5 s doubling, at most
``MAX_BACKOFF``). A ready worker whose /healthz goes unanswered for ``LIVENESS_LIMIT`` is
killed, then started again as a dead one is. A worker of the first start that exits
before it was ever ready ends the whole thing with its exit status (its error line is on
stderr already: a store that does not answer, a bad key, the same for every worker), and
so does a slot whose restarts fail ``MAX_FAILED_STARTS`` times in a row before being
ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy.log import APP_LOGGER
from proxy.tasks import cancel_and_wait
from proxy.workers.merge import Families, lasting, merge, parse
from proxy.workers.spec import WorkerSpec

_log = logging.getLogger(APP_LOGGER)

MAX_FAILED_STARTS: Final = 3
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 10.0
#: How often a starting worker's /readyz is asked until it first answers 200.
READY_POLL: Final = 0.1
#: A worker's admin call (readiness, metrics) that takes longer counts as failed.
CALL_TIMEOUT: Final = 5.0
#: After the workers' own grace period, how long they get to exit before SIGKILL.
EXIT_MARGIN: Final = 10.0
#: A ready worker's /healthz is asked this often...
LIVENESS_POLL: Final = 2.0
#: ... and a worker that has not answered it for this long is killed and started again.
LIVENESS_LIMIT: Final = 30.0

STARTING, READY, DOWN = "starting", "ready", "down"


class SupervisorMetrics:
    """The supervisor's own families, merged with the workers' on the admin port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.workers = Gauge(
            "promptproxy_workers",
            "Worker processes of `serve --workers N` by state: ready (answered /readyz 200 "
            "once since it started), starting, down (exited; waiting to be started again).",
            ("state",),
            registry=registry,
        )
        self.restarts = Counter(
            "promptproxy_worker_restarts",
            "Workers started again after they exited while the supervisor was not stopping "
            "(killed ones included: a worker whose /healthz stopped answering).",
            registry=registry,
        )
        # The admin port is the supervisor's: its connections are counted here, under the
        # workers' own families (the workers' admin endpoints are private and uncounted).
        self.connections_open = Gauge(
            "promptproxy_connections_open",
            "Client connections open now, by port (data, admin).",
            ("port",),
            registry=registry,
        )
        self.connections_closed = Counter(
            "promptproxy_connections_closed",
            "Client connections the proxy closed on a deadline, by port and reason.",
            ("port", "reason"),
            registry=registry,
        )


@dataclass(slots=True, eq=False)
class Slot:
    """One worker's place: its index and admin endpoint stay, its process changes."""

    index: int
    admin_path: Path
    session: aiohttp.ClientSession
    process: asyncio.subprocess.Process | None = None
    state: str = DOWN
    #: Exits before ready, in a row.
    failures: int = 0
    #: The last good /metrics of each process this slot ran, until it is retired.
    scraped: dict[int, Families] = field(default_factory=dict)
    #: How the process this slot ran when stopping began ended (None: there was none).
    stopped_with: int | None = None

    @property
    def pid(self) -> int | None:
        process = self.process
        return None if process is None or process.returncode is not None else process.pid

    async def call(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` of this worker's admin app: (status, body). Raises ``OSError``,
        ``aiohttp.ClientError`` or ``TimeoutError``."""
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        async with self.session.get(f"http://worker{path}", timeout=timeout) as resp:
            return resp.status, await resp.read()


class WorkerFailed(Exception):
    """The workers cannot serve: ``status`` is the exit status to end with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def private_session(path: Path) -> aiohttp.ClientSession:
    """A client of one worker's admin socket. A new connection per call (``force_close``):
    a pooled one would outlive a restarted worker. Bodies pass as they are (no
    decompression), for the forwarded admin calls. No cookie jar: the session is shared by
    every caller the front forwards, so a jar would keep the console cookie of one
    operator's login and send it with everyone's later calls."""
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(path), force_close=True),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Supervisor:
    def __init__(
        self,
        *,
        command: Sequence[str],
        count: int,
        data: socket.socket,
        runtime_dir: Path,
        metrics: SupervisorMetrics,
        stop: asyncio.Event,
        grace: float,
        liveness_limit: float = LIVENESS_LIMIT,
    ) -> None:
        """``command``: the worker's argv up to its ``--worker SPEC``; ``data``: the data
        plane's listening socket, closed here once stopping begins."""
        self._command = tuple(command)
        self._data = data
        self._data_fd = data.fileno()
        self._stop = stop
        self._grace = grace
        self._liveness_limit = liveness_limit
        self._metrics = metrics
        paths = [runtime_dir / f"worker-{i}.sock" for i in range(count)]
        self.slots = [Slot(i, path, private_session(path)) for i, path in enumerate(paths)]
        for state in (READY, STARTING, DOWN):
            metrics.workers.labels(state).set_function(self._counter_of(state))
        self._retired: Families = {}
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._failure: WorkerFailed | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _counter_of(self, state: str) -> Callable[[], float]:
        return lambda: float(sum(1 for slot in self.slots if slot.state == state))

    async def run(self) -> int:
        """Start every worker and keep them running until ``stop`` is set (a signal, or a
        worker that cannot start); then stop them. The exit status: 0 when every worker
        drained and exited 0."""
        keepers = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")
            for slot in self.slots
        ]
        try:
            await self._stop.wait()
        finally:
            self._stop.set()
            # From now on only the workers hold the port, and no worker is started again:
            # the listening socket closes when the last of them stops accepting, so a new
            # connection is refused at once, as by one process, rather than queued where
            # no one accepts it for the whole drain and then reset.
            self._data.close()
            statuses = await self._stop_all(keepers)
        if self._failure is not None:
            _log.error("%s", self._failure)
            return self._failure.status
        bad = [s for s in statuses if s != 0]
        if bad:
            _log.error("workers exited with %s while stopping", ", ".join(map(str, bad)))
            return 1
        return 0

    async def close(self) -> None:
        """Release what ``__init__`` made (the sessions, the lifeline pipe), whether ``run``
        ran or not (a start that failed on the admin port): after the admin port closed,
        since its handlers use the sessions. Idempotent."""
        for slot in self.slots:
            await slot.session.close()
        if self._lifeline_w >= 0:
            os.close(self._lifeline_w)
            os.close(self._lifeline_r)
            self._lifeline_r = self._lifeline_w = -1  # a number that may be reused by now

    def answering(self) -> Slot | None:
        """The worker admin calls go to: the first ready one, so that one client's write
        and the read after it meet the same process while it lives."""
        for slot in self.slots:
            if slot.state == READY and slot.pid is not None:
                return slot
        return None

    async def scrape(self) -> Families:
        """Every worker's /metrics merged, with what exited workers counted."""
        live = [slot for slot in self.slots if slot.pid is not None]
        await asyncio.gather(*(self._scrape(slot) for slot in live))
        parts = [families for slot in self.slots for families in slot.scraped.values()]
        return merge([*parts, self._retired])

    async def _scrape(self, slot: Slot) -> None:
        pid = slot.pid
        try:
            status, body = await slot.call("/metrics")
            if status != 200:
                raise ValueError(f"status {status}")
            families = parse(body.decode())
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Its previous scrape stands in: a merged counter never goes down for a miss.
            _log.warning("worker %d: /metrics failed (%s)", slot.index, exc)
            return
        if pid is not None and pid == slot.pid:
            slot.scraped[pid] = families

    def _retire(self, slot: Slot, pid: int) -> None:
        families = slot.scraped.pop(pid, None)
        if families is not None:
            self._retired = merge([self._retired, lasting(families)])

    async def _keep(self, slot: Slot) -> None:
        try:
            await self._run_slot(slot)
        except Exception as exc:
            # Not a worker's failure but this process's (no fork possible, say): say it.
            self._failure = WorkerFailed(f"worker {slot.index} cannot be started: {exc}", 1)
            self._stop.set()

    async def _run_slot(self, slot: Slot) -> None:
        first = True
        while not self._stop.is_set():
            process = await self._spawn(slot)
            if self._stop.is_set():
                _signal(slot, signal.SIGTERM)  # started while the others were told to stop
            ready = await self._until_ready(slot, process)
            if ready:
                await self._watch(slot, process)
            status = await process.wait()
            slot.state = DOWN
            self._retire(slot, process.pid)
            if self._stop.is_set():
                slot.stopped_with = _stopped_status(status, ready)
                return
            if ready:
                slot.failures = 0
                _log.error(
                    "worker %d (pid %d) exited with %d: starting it again",
                    slot.index,
                    process.pid,
                    status,
                )
            else:
                slot.failures += 1
                if first or slot.failures >= MAX_FAILED_STARTS:
                    self._fail(slot, status, first)
                    return
                delay = min(FIRST_BACKOFF * 2 ** (slot.failures - 1), MAX_BACKOFF)
                _log.error(
                    "worker %d (pid %d) exited with %d before it was ready (%d in a row): "
                    "starting it again in %.1fs",
                    slot.index,
                    process.pid,
                    status,
                    slot.failures,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                if self._stop.is_set():
                    return
            first = False
            self._metrics.restarts.inc()

    def _fail(self, slot: Slot, status: int, first: bool) -> None:
        when = "at start" if first else f"{slot.failures} times in a row before it was ready"
        self._failure = WorkerFailed(
            f"worker {slot.index} exited with {status} {when} (its error is above): stopping",
            status or 1,
        )
        self._stop.set()

    async def _spawn(self, slot: Slot) -> asyncio.subprocess.Process:
        with contextlib.suppress(FileNotFoundError):
            slot.admin_path.unlink()  # a dead worker's socket file
        spec = WorkerSpec(slot.index, self._data_fd, self._lifeline_r, str(slot.admin_path))
        process = await asyncio.create_subprocess_exec(
            *self._command,
            "--worker",
            spec.encode(),
            pass_fds=(self._data_fd, self._lifeline_r),
            stdin=asyncio.subprocess.DEVNULL,
        )
        slot.process = process
        slot.state = STARTING
        _log.info("worker %d started (pid %d)", slot.index, process.pid)
        return process

    async def _until_ready(self, slot: Slot, process: asyncio.subprocess.Process) -> bool:
        """True once the worker answered /readyz 200; False if it exited first."""
        while process.returncode is None and not self.stopping:
            with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
                status, _ = await slot.call("/readyz")
                if status == 200:
                    slot.state = READY
                    slot.failures = 0
                    return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_POLL):
                    await asyncio.shield(process.wait())
        return False

    async def _watch(self, slot: Slot, process: asyncio.subprocess.Process) -> None:
        """Until the worker exits or stopping begins, ask its /healthz; kill a worker that
        has not answered for ``liveness_limit`` (a wedged loop: a handler that never
        yields, a stopped process), to be started again. An orchestrator's liveness probe
        would restart one process so; here it asks the supervisor's /healthz, which a
        wedged worker does not change."""
        exited = asyncio.ensure_future(process.wait())
        answered = time.monotonic()
        try:
            while not self.stopping:
                await asyncio.wait({exited}, timeout=LIVENESS_POLL)
                if exited.done() or self.stopping:
                    return
                with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
                    status, _ = await slot.call("/healthz")
                    if status == 200:
                        answered = time.monotonic()
                        continue
                silent = time.monotonic() - answered
                if silent >= self._liveness_limit and not self.stopping:
                    _log.error(
                        "worker %d (pid %d): /healthz unanswered for %.0fs: killing it",
                        slot.index,
                        process.pid,
                        silent,
                    )
                    _signal(slot, signal.SIGKILL)
                    return
        finally:
            exited.cancel()

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> list[int]:
        """SIGTERM to every worker (each drains within its grace period), SIGKILL to any
        still running after ``grace + EXIT_MARGIN``; the exit statuses of the workers that
        were running when stopping began. Each keeper ends once its worker has exited,
        including one it had just started, which it signals itself."""
        for slot in self.slots:
            _signal(slot, signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=self._grace + EXIT_MARGIN)
        if pending:
            _log.error("%d workers did not exit in time: killing them", len(pending))
            for slot in self.slots:
                _signal(slot, signal.SIGKILL)
            await asyncio.wait(pending, timeout=EXIT_MARGIN)
        for keeper in keepers:
            await cancel_and_wait(keeper, 1.0)
        statuses = []
        for slot in self.slots:
            if slot.pid is not None:  # alive even after SIGKILL (stuck in the kernel)
                statuses.append(-signal.SIGKILL)
            elif slot.stopped_with is not None:
                statuses.append(slot.stopped_with)
        return statuses


def _stopped_status(status: int, ready: bool) -> int:
    """A worker's exit status as stopping counts it. Killed by the SIGTERM (or the
    terminal's SIGINT) before it was ever ready, it had not installed its handler yet and
    had served nothing: a clean stop, not a failure."""
    if not ready and status in (-signal.SIGTERM, -signal.SIGINT):
        return 0
    return status


def _signal(slot: Slot, sig: int) -> None:
    if slot.pid is not None and slot.process is not None:
        with contextlib.suppress(ProcessLookupError):
            slot.process.send_signal(sig)


def worker_command(serve_args: Sequence[str]) -> list[str]:
    """The argv of a worker: this interpreter running the CLI's ``serve`` with the
    options the supervisor got (the worker loads the same config from them)."""
    return [sys.executable, "-m", "proxy", "serve", *serve_args]
