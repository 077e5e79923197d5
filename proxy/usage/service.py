"""``UsageService``: the per-tenant usage of this replica, flushed to the store's ledger,
and the query every face (admin API, CLI) asks.

Each replica's ``UsageRecorder`` is drained every ``usage.flush_seconds`` into the ledger;
a failed flush keeps the rows for the next one (bounded, ``UsageRecorder.restore``). A query
first flushes this replica, so an operator asking the replica that served a request sees
it at once; the other replicas' last ``flush_seconds`` may be missing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import UsageConfig
from proxy.errors import Conflict, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.registry.models import RegistrySnapshot
from proxy.tasks import BackgroundTasks
from proxy.usage.counts import MINUTE, UsageCounts
from proxy.usage.ledger import DAY_MINUTES, Added, UsageLedger
from proxy.usage.recorder import UsageRecorder

_log = logging.getLogger(APP_LOGGER)

#: A query without ``since`` covers this much.
DEFAULT_SPAN_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class PromptUsage:
    slug: str
    variant: str | None  # None: the default variant
    counts: UsageCounts


@dataclass(frozen=True, slots=True)
class UsageReport:
    tenant: str
    #: Whether the registry knows the tenant now (a deleted tenant's minutes stay until
    #: they expire), and its tier.
    known: bool
    tier: str | None
    #: The minutes summed, ``[since, until)`` in unix seconds, whole minutes.
    since: float
    until: float
    slug: str | None
    total: UsageCounts
    prompts: list[PromptUsage] = field(default_factory=list)


class UsageService:
    def __init__(
        self,
        config: UsageConfig,
        recorder: UsageRecorder,
        ledger: UsageLedger,
        snapshot: Callable[[], RegistrySnapshot],
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.recorder = recorder
        self._ledger = ledger
        self._snapshot = snapshot
        self._metrics = metrics
        self._clock = clock
        self._dropped_counted = 0
        # One flush at a time: a query's flush and the loop's must not write a row twice
        # nor restore rows out of order.
        self._flushing = asyncio.Lock()
        self._tasks = BackgroundTasks()
        metrics.usage_pending.set_function(lambda: float(recorder.pending))

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="usage-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.flush_seconds)
            await self.flush()

    async def flush(self) -> bool:
        """Write what this replica counted; False when the store refused some of it (kept
        for the next flush)."""
        async with self._flushing:
            rows = self.recorder.drain()
            if not rows:
                return True
            try:
                added = await self._ledger.add(rows)
            except Exception as exc:
                _log.warning("tenant usage not flushed (kept for the next try): %s", exc)
                added = Added(unwritten=rows)
            if added.lost:
                self._metrics.usage_dropped.inc(added.lost)
            if not added.unwritten:
                return True
            self._metrics.redis_errors.labels("usage_flush").inc()
            oldest = int(self._clock()) // MINUTE - self._config.keep_days * DAY_MINUTES
            self.recorder.restore(added.unwritten, oldest)
            dropped = self.recorder.dropped
            if dropped > self._dropped_counted:
                self._metrics.usage_dropped.inc(dropped - self._dropped_counted)
                self._dropped_counted = dropped
            return False

    async def _flush_now(self) -> None:
        """A flush a caller waits for, run as a task of its own: a caller that goes away
        (an admin client hanging up) must not cancel it between the drain and the write,
        which would lose the rows drained."""
        await asyncio.shield(self._tasks.spawn(self.flush(), name="usage-flush"))

    async def close(self) -> None:
        """Stop the loop and flush a last time (after the data plane drained). The loop is
        stopped only between flushes: cancelled inside a write, it would lose the rows it
        drained."""
        async with self._flushing:
            await self._tasks.close()
        await self.flush()

    async def report(
        self, tenant: str, since: float | None, until: float | None, slug: str | None
    ) -> UsageReport:
        if not self._config.enabled:
            raise Conflict(
                "Tenant usage is not counted on this proxy (usage.enabled: false).",
                code="usage_disabled",
            )
        now = self._clock()
        end = until if until is not None else now
        start = since if since is not None else end - DEFAULT_SPAN_SECONDS
        # Whole minutes: the one ``since`` falls in, up to the one ``until`` ends in.
        first = math.floor(start / MINUTE)
        oldest = int(now) // MINUTE - self._config.keep_days * DAY_MINUTES
        first = max(first, oldest)  # older minutes are gone: say what was summed
        # Without ``until``, up to now: the minute under way is counted so far.
        last = int(end) // MINUTE + 1 if until is None else math.ceil(end / MINUTE)
        last = max(last, first)
        await self._flush_now()
        try:
            totals = await self._ledger.read(tenant, first, last, slug)
        except Exception as exc:
            _log.warning("tenant usage cannot be read: %s", exc)
            raise ServiceUnavailable(
                f"Tenant usage cannot be read from the store now ({type(exc).__name__}); "
                "retry when the store is back.",
                code="usage_unavailable",
            ) from None
        record = self._snapshot().tenants.get(tenant)
        total = UsageCounts()
        prompts = []
        for (row_slug, variant), counts in sorted(totals.items()):
            total.merge(counts)
            prompts.append(PromptUsage(row_slug, variant or None, counts))
        return UsageReport(
            tenant=tenant,
            known=record is not None,
            tier=None if record is None else record.tier,
            since=float(first * MINUTE),
            until=float(last * MINUTE),
            slug=slug,
            total=total,
            prompts=prompts,
        )
