"""The write queue of the shared pair sinks (Redis, PostgreSQL): pairs are handed over
without waiting, written in batches by one background task, and what cannot be queued or
written before ``close`` is counted as dropped.

The request path only calls ``add``, which never blocks: a slow or absent store costs
dropped pairs, never latency. A batch that fails is retried after a growing pause (capped),
so an outage is not a busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pairs import Pair

BATCH = 200
_BACKOFF = (0.1, 2.0)
#: ``close`` waits this long for queued pairs to be written, then counts the rest dropped.
CLOSE_TIMEOUT = 5.0

#: Writes one batch; False when it could not (the queue pauses, then goes on).
WriteBatch = Callable[[Sequence[Pair]], Awaitable[bool]]


class PairWriteQueue:
    def __init__(
        self, write: WriteBatch, *, limit: int, metrics: ShadowMetrics, task_name: str
    ) -> None:
        self._write = write
        self._limit = limit
        self._metrics = metrics
        self._task_name = task_name
        # Unbounded underneath so `close` can always queue its end marker; `limit` is
        # enforced by `add`.
        self._queue: asyncio.Queue[Pair | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def add(self, pair: Pair) -> None:
        if self.closed or self._queue.qsize() >= self._limit:
            self._metrics.pair("sink_dropped")
            return
        self._queue.put_nowait(pair)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._task_name)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        failures = 0
        while True:
            batch: list[Pair] = []
            item = await self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                if await self._write(batch):
                    failures = 0
                else:
                    failures += 1
                    if not self.closed:
                        low, high = _BACKOFF
                        await asyncio.sleep(min(high, low * 2 ** (failures - 1)))
            if item is None:
                return

    async def close(self) -> None:
        """Write what is queued (bounded by ``CLOSE_TIMEOUT``); count the rest dropped.
        Idempotent: the shadow runner closes the sink, then the backend does."""
        if self.closed:
            return
        self.closed = True
        task = self._task
        if task is None:
            return
        self._queue.put_nowait(None)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lost = 0
        while not self._queue.empty():
            lost += self._queue.get_nowait() is not None
        if lost:
            self._metrics.pair("sink_dropped", lost)
