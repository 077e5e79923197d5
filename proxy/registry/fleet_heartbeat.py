"""This replica's heartbeat: what it serves, written to the fleet board every
``heartbeat_seconds`` and at once after it applies a new snapshot, so a waiting admin write
learns within milliseconds, not a tick later."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from proxy import __version__
from proxy.log import APP_LOGGER
from proxy.registry.fleet import FleetBoard, FleetError, ReplicaBeat
from proxy.registry.snapshot import SnapshotHolder

_log = logging.getLogger(APP_LOGGER)


class AppliedSignal:
    """Set by the snapshot holder when it applies a new revision; wakes the heartbeat."""

    __slots__ = ("_clock", "at", "changed", "revision")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.revision: int | None = None
        #: wall time ``revision`` started being served
        self.at: float | None = None
        self.changed = asyncio.Event()

    def applied(self, revision: int) -> None:
        if revision != self.revision:
            self.revision = revision
            self.at = self._clock()
            self.changed.set()


class Heartbeat:
    def __init__(
        self,
        board: FleetBoard,
        replica: str,
        holder: SnapshotHolder,
        signal: AppliedSignal,
        interval: float,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._board = board
        self.replica = replica
        self._holder = holder
        self._signal = signal
        self._interval = interval
        self._on_error = on_error
        self._failing = False

    def beat(self) -> ReplicaBeat:
        holder = self._holder
        served = holder.current
        state = "replaced" if holder.replaced is not None else "empty" if served.empty else "ok"
        return ReplicaBeat(
            replica=self.replica,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            revision=holder.current.revision,
            served_at=self._signal.at,
            staleness=round(holder.staleness, 3),
            # The refresher clears ``last_error`` when a lost store answers: lost is not
            # healthy.
            healthy=holder.healthy and holder.replaced is None,
            generation=served.generation,
            state=state,
            prompts=len(served.versions),
        )

    async def run(self) -> None:
        while True:
            self._signal.changed.clear()
            await self.publish()
            # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` drops a
            # cancel that lands as the event is set, and shutdown then waits on this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._signal.changed.wait()

    async def publish(self) -> bool:
        try:
            await self._board.publish(self.beat())
        except FleetError as exc:
            if not self._failing:
                _log.warning("fleet heartbeat failed (retrying every beat): %s", exc)
            self._failing = True
            if self._on_error is not None:
                self._on_error()
            return False
        if self._failing:
            _log.info("fleet heartbeat works again")
        self._failing = False
        return True

    async def leave(self) -> None:
        """Off the board on a clean shutdown, so nobody waits for a replica that is gone."""
        with contextlib.suppress(FleetError):
            await self._board.remove(self.replica)
