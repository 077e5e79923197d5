"""Event-loop lag: how late the loop wakes a timer. Every request on this process waits that
long too, so a rising lag (a blocking call, a GC pause, a saturated core) shows up here
before it shows up as a vague latency increase."""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

#: Short enough to catch stalls of a few tens of milliseconds, long enough to cost nothing.
PERIOD_SECONDS = 0.25


async def watch_loop_lag(histogram: Histogram, period: float = PERIOD_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(period)
        histogram.observe(max(0.0, loop.time() - start - period))
