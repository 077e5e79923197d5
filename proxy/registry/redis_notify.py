"""Change hints for ``RedisStore.wait_for_change``: one long-lived pub/sub subscription.

Only a hint: redis-py pub/sub does not reliably come back after a dropped connection, and a
message published while it is down is lost. So ``wait`` never raises; on any error it drops
the subscription, sleeps out its time, and the next call subscribes again. The caller always
confirms by reading the revision key.

The subscription outlives single ``wait`` calls (the snapshot refresher calls
``wait_for_change`` about once a second): a fresh subscription per call would open and
close a TCP connection each time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from proxy.tasks import cancel_and_wait, interruptible

T = TypeVar("T")


class _Stopped(Exception):
    """``close`` stopped the pub/sub I/O this waiter was doing."""


class ChangeHints:
    def __init__(self, client: Redis, channel: str, op_timeout: float) -> None:
        self._client = client
        self._channel = channel
        self._op_timeout = op_timeout
        self._pubsub: PubSub | None = None
        self._suspect = False  # I/O was cut short mid-read: do not trust the connection
        self._lock = asyncio.Lock()  # one user at a time on the subscription
        # The pub/sub I/O in flight, as its own task so ``close`` can stop it *before*
        # closing the connection: closing under a live read makes redis-py reconnect
        # (its retry handler) into a pool that is being shut down, leaking a connection.
        self._io: asyncio.Task[Any] | None = None
        self._closed = False

    async def wait(self, seconds: float) -> None:
        """Return after ``seconds``, or early when a message arrives or the
        subscription was just (re)made: either way the caller re-reads the revision."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self._closed or self._lock.locked():
            # Closed, or another waiter holds the subscription: this one just polls.
            await asyncio.sleep(seconds)
            return
        async with self._lock:
            try:
                if self._suspect:
                    await self._drop()
                if self._pubsub is None:
                    self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    await self._guarded(self._pubsub.subscribe(self._channel), 0.0)
                    return  # subscribed: re-read now, a write may have slipped in before
                if await self._guarded(self._next_message(self._pubsub, deadline), seconds):
                    return
            except _Stopped:
                pass
            except Exception:
                # Any failure, including a client-library bug on a cut connection, only
                # costs the hint: drop the subscription and poll.
                await self._drop()
        # Quiet, broken or unsubscribable: never let the caller poll faster than asked.
        idle = deadline - loop.time()
        if idle > 0:
            await asyncio.sleep(idle)

    async def _guarded(self, io: Coroutine[Any, Any, T], seconds: float) -> T:
        """Run pub/sub ``io`` as a task ``close`` can stop, bounded by ``seconds`` plus
        ``op_timeout``; a cancelled caller cancels it too (and marks the connection).

        The caller never awaits the I/O task itself: redis-py can swallow a cancel (see
        ``proxy.tasks``), and a caller awaiting the task directly would then get its result
        instead of its cancel and go on waiting and subscribing after shutdown."""
        task = asyncio.ensure_future(io)
        self._io, self._suspect = task, True
        try:
            async with asyncio.timeout(seconds + self._op_timeout):
                result = await interruptible(task, grace=self._op_timeout)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled, not just the I/O
            raise _Stopped from None
        finally:
            self._io = None
        self._suspect = False
        return result

    @staticmethod
    async def _next_message(pubsub: PubSub, deadline: float) -> bool:
        """True on a published message before ``deadline``. Frames that are not messages
        (subscribe confirmations, health-check pongs) come back as None early: keep
        listening rather than sleep through the rest of the wait."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None:
                return True
            await asyncio.sleep(0.001)  # no busy loop should a None ever come back at once
        return False

    async def _drop(self) -> None:
        pubsub, self._pubsub, self._suspect = self._pubsub, None, False
        if pubsub is not None:
            # ``PubSub.aclose`` finishes its teardown even when cancelled (it waits on a
            # future that ignores cancel): only a task of its own can be given up on.
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._op_timeout):
                    await interruptible(pubsub.aclose(), grace=0.0)

    async def close(self) -> None:
        self._closed = True
        io = self._io
        if io is not None:
            await cancel_and_wait(io, self._op_timeout)
        await self._drop()
