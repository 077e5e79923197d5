"""Background tasks the process owns: held by strong reference, cancelled and awaited on close.

asyncio keeps only weak references to tasks, so an untracked `create_task` can vanish
mid-flight, and nothing would drain it on shutdown.

Cancelling is not always enough on Python 3.11: ``asyncio.wait_for`` there runs its awaitable
as a separate task and, when a cancel lands just after that task finished, returns its result
and drops the cancel (CPython gh-86296, fixed in 3.12 by building wait_for on
``asyncio.timeout``). redis-py sends every command through ``wait_for`` (its socket-timeout
write in ``Connection.send_packed_command``), so a task cancelled mid-command can simply carry
on. ``interruptible`` keeps such I/O out of reach of the caller's cancel, and ``close`` cancels
again a task that is still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from proxy.log import APP_LOGGER

_log = logging.getLogger(APP_LOGGER)

T = TypeVar("T")

#: How long ``close`` waits for a task to end after cancelling it before cancelling again: a
#: task that swallowed the cancel is back in its loop by then.
_RECANCEL_SECONDS = 0.2
#: Past this, ``close`` gives up on a task (logged) rather than hold the shutdown forever.
CLOSE_SECONDS = 10.0


async def interruptible(io: Awaitable[T], *, grace: float) -> T:
    """Await ``io`` (a coroutine, or a task already made) in a task of its own, so that
    cancelling the caller always raises CancelledError in the caller, even where the library
    under ``io`` swallows cancels. On cancel, ``io`` is cancelled too and given ``grace``
    seconds to unwind (close its connection), then left behind with a warning."""
    task = asyncio.ensure_future(io)
    try:
        # ``shield``: the caller waits on a plain future, which a cancel always wakes.
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await cancel_and_wait(task, grace)
        raise


async def cancel_and_wait(task: asyncio.Future[Any], grace: float) -> None:
    """Cancel ``task`` and wait until it ends, cancelling again while it runs on; after
    ``grace`` seconds leave it behind with a warning, never wait forever."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    task.cancel()
    while not task.done() and (left := deadline - loop.time()) > 0:
        await asyncio.wait({task}, timeout=min(left, _RECANCEL_SECONDS))
        task.cancel()  # a no-op once it is done
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: the caller is cancelled, its outcome is moot
    else:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        _log.warning("%s did not stop within %.1fs of being cancelled", name, grace)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


class BackgroundTasks:
    def __init__(self, close_seconds: float = CLOSE_SECONDS) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_seconds = close_seconds

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task and wait until each has ended. A task still running after a
        moment swallowed its cancel (see the module doc) and gets another one; one that is
        still running after ``close_seconds`` is left behind, logged, so the shutdown ends."""
        tasks = list(self._tasks)
        stops = [asyncio.ensure_future(cancel_and_wait(t, self._close_seconds)) for t in tasks]
        if stops:
            await asyncio.gather(*stops)
