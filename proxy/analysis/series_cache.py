"""Settled buckets of the series route, kept in the process: a chart's refresh reads only
its tail from the pool.

The console refreshes each open rollout page's charts every few seconds, and each refresh
reads the last 15 minutes: on Redis 900 ``HGETALL``s parsed in Python, a few hundred ms of
the proxy's CPU. But a bucket ``[at, at + step)`` stops changing once every replica has
flushed its seconds into the pool: it is *settled* when ``at + step <= now - settle``. A
settled bucket is kept here, keyed by (prompt key, rollout, step, at), so a read fetches
only what is not: the buckets still filling, and any settled one not kept yet, in one
``read_buckets`` call over the range from the first of them to the last.

Bounded whatever callers ask: only buckets the route can still show (the pool's retention,
``series.SERIES_SECONDS``), and at most ``max_buckets`` in all, the least recently read
series (a rollout at one step) dropped first. A rollout that ended is charted until its
buckets are that old, then dropped, as the pools drop its counts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from proxy.analysis.pool import StatsPool
from proxy.analysis.series import KNOWN_ARMS, SERIES_SECONDS, Span
from proxy.analysis.window import ArmStats
from proxy.prompt_key import PromptKey

#: Buckets kept in all, by default: 68 charts of 15 minutes at the default 60 points, or 4
#: at one point per second. A bucket of two arms at 100 requests/s holds 2.3-3.2 KiB
#: (measured: the latency bins fill up), so ~13 MiB at most, ~20 with a shadow's three arms.
DEFAULT_MAX_BUCKETS = 4096

_Series = tuple[PromptKey, str, int]  # prompt key, rollout id, step
_Bucket = Mapping[str, ArmStats]


def settle_seconds(flush_seconds: float) -> float:
    """How long after a second ends until every replica has flushed it into the pool.

    A replica flushes its counts every ``flush_seconds``, so a second is in the pool at
    most one period, plus the flush's own write, after it ends. Twice the period allows a
    flush that was slow or overran into the next one; two seconds more, for replicas' clocks
    that disagree (each counts by its own) and the write itself. A replica whose flush
    *fails* keeps its counts and writes them on a later flush: those may land after this;
    see ``docs/rollouts.md`` (a store outage)."""
    return 2 * flush_seconds + 2.0


class SeriesCache:
    """Settled buckets per series, least recently read first. One per process
    (``Services.series``); not thread-safe (the event loop's)."""

    def __init__(self, settle: float, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        """``settle``: ``settle_seconds(analysis.flush_seconds)``."""
        self._settle = settle
        self._max = max_buckets
        self._series: OrderedDict[_Series, dict[int, _Bucket]] = OrderedDict()
        self._count = 0
        #: Each series' newest bucket: drop a whole series without looking at its buckets.
        self._newest: dict[_Series, int] = {}
        #: A pool read failed (the store is down, for other replicas' flushes too), and
        #: until when, after the store is back, nothing is kept.
        self._failed = False
        self._hold_until = 0.0

    @property
    def buckets(self) -> int:
        """Buckets kept, in all series."""
        return self._count

    async def read(
        self, pool: StatsPool, key: PromptKey, rollout_id: str, cut: Span, now: float
    ) -> dict[int, dict[str, ArmStats]]:
        """What ``pool.read_buckets(key, rollout_id, cut.start, cut.end, cut.step,
        KNOWN_ARMS)`` answers (each bucket's first second -> arm -> counts), from the kept
        buckets and one pool read of the rest. ``now``: the time ``cut`` was taken at. The
        counts are shared with the cache: read them, never change them."""
        name = (key, rollout_id, cut.step)
        self._expire(name, cut.end - SERIES_SECONDS)
        kept = self._series.get(name, {})
        missing = [at for at in cut.points if at not in kept]
        out: dict[int, dict[str, ArmStats]] = {}
        if missing:
            # One read from the first bucket missing to the last: a gap inside is rare (a
            # longer `since` than before), and one read costs less than two.
            first, last = missing[0], missing[-1]
            try:
                read = await pool.read_buckets(
                    key, rollout_id, first, min(last + cut.step, cut.end), cut.step, KNOWN_ARMS
                )
            except Exception:
                self._failed = True
                raise
            if self._failed:
                # The store is back: replicas whose flushes failed meanwhile write what they
                # kept on their next flush, into seconds that look settled. Keep nothing
                # until they have.
                self._failed, self._hold_until = False, now + self._settle
            if now >= self._hold_until:
                self._keep(name, read, range(first, last + 1, cut.step), now)
            kept = self._series.get(name, {})
            out.update(read)
        for at in cut.points:
            if at not in out and kept.get(at):
                out[at] = dict(kept[at])
        if name in self._series:
            self._series.move_to_end(name)
        return out

    def _keep(
        self, name: _Series, read: Mapping[int, dict[str, ArmStats]], ats: range, now: float
    ) -> None:
        """Keep the buckets of ``ats`` that were settled at ``now`` (the read came after:
        nothing it holds can be missing from them), empty ones too."""
        settled = now - self._settle
        fresh = [at for at in ats if at + ats.step <= settled]
        if not fresh:
            return
        kept = self._series.setdefault(name, {})
        for at in fresh:
            if at not in kept:
                self._count += 1
            kept[at] = read.get(at, {})
        self._newest[name] = max(self._newest.get(name, fresh[-1]), fresh[-1])
        self._series.move_to_end(name)
        self._bound(name)

    def _bound(self, name: _Series) -> None:
        """Least recently read series first (``name``, just read, is the newest); then, if
        ``name`` alone is too many, its oldest buckets (a later read fetches them again:
        slower, never wrong)."""
        while self._count > self._max and len(self._series) > 1:
            self._drop(next(iter(self._series)))
        kept = self._series.get(name)
        if kept is not None and self._count > self._max:
            for at in sorted(kept)[: self._count - self._max]:
                del kept[at]
            self._count = len(kept)

    def _expire(self, name: _Series, horizon: int) -> None:
        """Drop the buckets no read can show any more (``horizon``: the oldest second a
        series reaches back to, as the pool's retention): those of ``name``, and every
        series whose newest bucket is older (a rollout no longer charted, or ended)."""
        for stale in [n for n, newest in self._newest.items() if newest < horizon]:
            self._drop(stale)
        kept = self._series.get(name)
        if kept:
            old = [at for at in kept if at < horizon]
            for at in old:
                del kept[at]
            self._count -= len(old)

    def _drop(self, name: _Series) -> None:
        self._count -= len(self._series.pop(name, {}))
        self._newest.pop(name, None)
