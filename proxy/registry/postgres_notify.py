"""Change hints for ``PostgresStore.wait_for_change``: one LISTEN connection, kept up.

Every registry write NOTIFYs the schema's channel in its own transaction, so PostgreSQL
delivers it, at commit, to every session listening then. A session that was not listening
(its connection killed, the server restarting) misses it; so ``ChangeListener`` fires
waiters not only on each notification but also each time it has (re)subscribed, and
they re-read the revision: a change made while the listener was down is seen then.

Only a hint: waiters always confirm by reading the revision, and while the listener is down
they poll it (``connected`` tells them which). The connection is outside the pool (a
listening session is held for the process's life) and is made again, with a backoff, after
any failure. A quiet connection is checked with ``SELECT 1`` every ``ping_seconds``, so a
connection that died without a word (a half-open TCP connection) is replaced too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import AsyncConnection, sql

from proxy.log import APP_LOGGER
from proxy.pg.connect import open_connection
from proxy.tasks import cancel_and_wait, interruptible

_log = logging.getLogger(APP_LOGGER)

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0
#: How long ``close`` waits for the listening task to end.
_CLOSE_GRACE = 2.0


class ChangeListener:
    def __init__(
        self,
        url: str,
        *,
        schema: str,
        channel: str,
        ping_seconds: float = 10.0,
        op_timeout: float = 2.0,
        application: str = "promptproxy-registry-listen",
    ) -> None:
        self._url = url
        self._schema = schema
        self._channel = channel
        self._ping_seconds = ping_seconds
        self._op_timeout = op_timeout
        self._application = application
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: True while a LISTEN is in place: waiters then trust notifications.
        self.connected = False
        #: How many times the listener has (re)subscribed: tests and logs read it.
        self.subscriptions = 0
        self._closed = False

    def ensure_started(self) -> None:
        """Start listening (once; the first ``wait_for_change`` does)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"listen {self._channel}")

    def mark(self) -> asyncio.Event:
        """Take this before reading the revision, then ``wait`` on it: a notification that
        arrives in between is not lost (the event is set already)."""
        return self._event

    @staticmethod
    async def wait(mark: asyncio.Event, seconds: float) -> None:
        """Until a notification or (re)subscription after ``mark``, or ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await mark.wait()

    def _fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await open_connection(
                    self._url, schema=self._schema, application=self._application
                )
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.connected = True
                self.subscriptions += 1
                backoff = _BACKOFF_FIRST
                self._fire()  # re-read now: a change may have been made while down
                await self._listen(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.connected:
                    _log.info("registry change listener lost its connection: %s", exc)
            finally:
                was_connected, self.connected = self.connected, False
                if conn is not None:
                    await _close_quietly(conn)
                if was_connected:
                    self._fire()  # waiters switch to polling now, not at their timeout
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _listen(self, conn: AsyncConnection) -> None:
        """Fire on each notification until the connection fails (raises)."""
        while True:
            async for _ in conn.notifies(timeout=self._ping_seconds):
                self._fire()
            # Quiet for a while: make sure the connection still answers.
            async with asyncio.timeout(self._op_timeout):
                await interruptible(conn.execute("SELECT 1"), grace=self._op_timeout)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, _CLOSE_GRACE)
        self.connected = False
        self._fire()


async def _close_quietly(conn: AsyncConnection) -> None:
    with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await interruptible(conn.close(), grace=0.0)
