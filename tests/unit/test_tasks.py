"""Shutdown stops work even when a library swallows a cancel, as Python 3.11's
``asyncio.wait_for`` does (and redis-py writes every command through it)."""

from __future__ import annotations

import asyncio
import contextlib

from proxy.tasks import BackgroundTasks, interruptible


class _SwallowsOneCancel:
    """Like a Redis command whose cancel landed inside ``wait_for``: the first cancel is
    lost and the call returns normally; later cancels go through (the window is tiny)."""

    def __init__(self) -> None:
        self.swallowed = asyncio.Event()

    async def __call__(self) -> str:
        if self.swallowed.is_set():
            await asyncio.sleep(3600)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        self.swallowed.set()
        return "finished anyway"


async def _beats_forever(io: _SwallowsOneCancel, beats: list[int]) -> None:
    """A loop like the fleet heartbeat: it goes on beating after a swallowed cancel."""
    while True:
        await io()
        beats.append(1)


async def test_a_cancelled_caller_is_cancelled_even_when_the_io_swallows_it() -> None:
    io = _SwallowsOneCancel()
    caller = asyncio.create_task(interruptible(io(), grace=1.0))
    await asyncio.sleep(0.01)
    caller.cancel()
    outcome = await asyncio.gather(caller, return_exceptions=True)
    assert isinstance(outcome[0], asyncio.CancelledError)
    assert io.swallowed.is_set()  # the I/O was cancelled and awaited, not left running


async def test_close_ends_a_loop_that_swallowed_its_cancel() -> None:
    tasks = BackgroundTasks()
    beats: list[int] = []
    task = tasks.spawn(_beats_forever(_SwallowsOneCancel(), beats), name="beats")
    await asyncio.sleep(0.01)
    bound = asyncio.timeout(5)
    async with bound:
        await tasks.close()
    # Not ``bound`` that stopped it: a close that only awaits would have its own cancel
    # from the bound suppressed and return as if it had worked.
    assert not bound.expired()
    assert task.done()
    assert beats == [1]  # it did carry on after the first cancel: the case being tested
    assert len(tasks) == 0


async def test_close_gives_up_on_a_task_that_never_stops() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if release.is_set():
                    raise

    tasks = BackgroundTasks(close_seconds=0.3)
    task = tasks.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await tasks.close()
    assert not task.done()  # left behind (logged), the shutdown went on
    release.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
