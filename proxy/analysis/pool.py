"""The pool: every replica's per-arm counts, added up, so a verdict covers all the traffic.

Each replica's ``WindowRecorder`` is drained every ``analysis.flush_seconds`` into the pool;
the analyser reads a window (a range of one-second slots) back as one ``ArmStats`` per arm,
and the admin API's series route (``proxy.analysis.series``) reads them added up per step
of a chart (``read_buckets``).

- ``MemoryStatsPool``: one process (the embedded store): the pool is a dict.
- ``RedisStatsPool``: one hash per (prompt key, rollout, slot) that replicas add to with
  ``HINCRBY``/``HINCRBYFLOAT`` (commutative, so no replica ever reads before writing), plus
  one hash per rollout with the shadow pairs' divergence counts, cumulative. Keys expire,
  so a finished rollout leaves nothing behind. Hash names hold the key's text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from proxy.analysis.window import (
    SLOT_SECONDS,
    ArmStats,
    RolloutBatch,
    RolloutKey,
    merge_arms,
)
from proxy.prompt_key import PromptKey
from proxy.shadow.compare import DivergenceCounts

if TYPE_CHECKING:  # redis is imported only when a Redis store is configured
    from redis.asyncio import Redis

#: Slots are kept this long past the longest window that may read them.
_SLOT_GRACE_SECONDS = 120
#: Divergence counts outlive the rollout by a day, for a late `rollout status`.
_DIVERGENCE_TTL_SECONDS = 86_400


@dataclass(slots=True)
class PooledWindow:
    """What the analyser judges: per-arm counts over a window, divergence since the start."""

    arms: dict[str, ArmStats] = field(default_factory=dict)
    noise: DivergenceCounts = field(default_factory=DivergenceCounts)
    candidate: DivergenceCounts = field(default_factory=DivergenceCounts)

    def arm(self, name: str) -> ArmStats:
        return self.arms.get(name) or ArmStats()


class StatsPool(Protocol):
    async def add(self, batches: Mapping[RolloutKey, RolloutBatch], keep_seconds: float) -> None:
        """Add what replicas counted. ``keep_seconds``: the longest window that will read
        these slots. Raises on failure (the caller keeps the batch for the next flush)."""
        ...

    async def read(self, key: PromptKey, rollout_id: str, start: float, end: float) -> PooledWindow:
        """Counts of the slots in ``[start, end)`` (unix seconds), and divergence so far."""
        ...

    async def read_buckets(
        self,
        key: PromptKey,
        rollout_id: str,
        start: int,
        end: int,
        step: int = 1,
        arms: Collection[str] | None = None,
    ) -> dict[int, dict[str, ArmStats]]:
        """The slots of ``[start, end)`` added up per ``step`` seconds from ``start``: each
        bucket's first second -> arm -> counts, for the buckets that hold any (``step`` 1:
        slot by slot). ``arms``: only these (None: every arm, tier arms too). One store
        read, or a few, whatever the range: never one per bucket."""
        ...

    def forget(self, keep: set[RolloutKey]) -> None:
        """Drop what belongs to rollouts not in ``keep`` (they ended), where nothing expires
        by itself."""
        ...

    async def close(self) -> None: ...


def _slots(start: float, end: float) -> range:
    return range(int(start) // SLOT_SECONDS, int(end) // SLOT_SECONDS)


class MemoryStatsPool:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock``: unix seconds, as the recorder's slots (tests pass their own)."""
        self._clock = clock
        self._slots: dict[RolloutKey, dict[int, dict[str, ArmStats]]] = {}
        self._noise: dict[RolloutKey, DivergenceCounts] = {}
        self._candidate: dict[RolloutKey, DivergenceCounts] = {}
        self._keep: dict[RolloutKey, float] = {}

    async def add(self, batches: Mapping[RolloutKey, RolloutBatch], keep_seconds: float) -> None:
        for key, batch in batches.items():
            slots = self._slots.setdefault(key, {})
            for slot, arms in batch.slots.items():
                held = slots.setdefault(slot, {})
                for arm, stats in arms.items():
                    held.setdefault(arm, ArmStats()).merge(stats)
            self._noise.setdefault(key, DivergenceCounts()).merge(batch.noise)
            self._candidate.setdefault(key, DivergenceCounts()).merge(batch.candidate)
            self._keep[key] = max(self._keep.get(key, 0.0), keep_seconds)
            newest = max(slots, default=0)
            horizon = newest - int(self._keep[key] + _SLOT_GRACE_SECONDS) // SLOT_SECONDS
            for slot in [s for s in slots if s < horizon]:
                del slots[slot]

    async def read(self, key: PromptKey, rollout_id: str, start: float, end: float) -> PooledWindow:
        rollout = (key, rollout_id)
        slots = self._slots.get(rollout, {})
        window = PooledWindow(arms=merge_arms(slots[s] for s in _slots(start, end) if s in slots))
        window.noise.merge(self._noise.get(rollout, DivergenceCounts()))
        window.candidate.merge(self._candidate.get(rollout, DivergenceCounts()))
        return window

    async def read_buckets(
        self,
        key: PromptKey,
        rollout_id: str,
        start: int,
        end: int,
        step: int = 1,
        arms: Collection[str] | None = None,
    ) -> dict[int, dict[str, ArmStats]]:
        slots = self._slots.get((key, rollout_id), {})
        buckets = _Buckets(start, step, arms)
        for slot in _slots(start, end):
            held = slots.get(slot)
            if held:
                buckets.add(slot, held)
        return buckets.totals

    def forget(self, keep: set[RolloutKey]) -> None:
        """Drop the counts of rollouts that ended (there is no expiry in memory) once their
        newest slot is as old as Redis or PostgreSQL would let it be: the charts of a
        rollout that just ended (an abort) still show what happened."""
        now = self._clock()
        ended = {k for k in (*self._slots, *self._noise, *self._candidate) if k not in keep}
        for key in ended:
            newest = max(self._slots.get(key, {}), default=0)
            if newest < now - self._keep.get(key, 0.0) - _SLOT_GRACE_SECONDS:
                self._slots.pop(key, None)
                self._noise.pop(key, None)
                self._candidate.pop(key, None)
                self._keep.pop(key, None)

    async def close(self) -> None:
        return None


class _Buckets:
    """Slots added up into buckets of ``step`` seconds from ``start`` (``read_buckets``)."""

    __slots__ = ("_arms", "_start", "_step", "totals")

    def __init__(self, start: int, step: int, arms: Collection[str] | None) -> None:
        self._start, self._step, self._arms = start, step, arms
        self.totals: dict[int, dict[str, ArmStats]] = {}

    def _bucket(self, slot: int) -> dict[str, ArmStats]:
        first = self._start + (slot - self._start) // self._step * self._step
        bucket = self.totals.get(first)
        if bucket is None:
            bucket = self.totals[first] = {}
        return bucket

    def add(self, slot: int, arms: Mapping[str, ArmStats]) -> None:
        bucket = None
        for arm, stats in arms.items():
            if self._arms is None or arm in self._arms:
                bucket = self._bucket(slot) if bucket is None else bucket
                # Into a fresh total: the pool's own counts go on counting.
                bucket.setdefault(arm, ArmStats()).merge(stats)

    def add_fields(self, slot: int, arms: Mapping[str, Mapping[str, float]]) -> None:
        self.add(
            slot,
            {
                arm: ArmStats.from_fields(fields)
                for arm, fields in arms.items()
                if self._arms is None or arm in self._arms
            },
        )


#: Seconds read per Redis pipeline by ``read_buckets``.
_READ_CHUNK = 60
_FLOAT_FIELDS = ("tok:", "fb:")
_NOISE = "noise"
_CANDIDATE = "candidate"


class RedisStatsPool:
    def __init__(self, client: Redis, prefix: str) -> None:
        """``client`` is shared with the lease and the state store; its owner closes it."""
        self._redis = client
        self._prefix = prefix + "{analysis}:"

    def _slot_key(self, key: PromptKey, rollout_id: str, slot: int) -> str:
        return f"{self._prefix}w:{key.text}:{rollout_id}:{slot}"

    def _divergence_key(self, key: PromptKey, rollout_id: str) -> str:
        return f"{self._prefix}div:{key.text}:{rollout_id}"

    async def add(self, batches: Mapping[RolloutKey, RolloutBatch], keep_seconds: float) -> None:
        ttl = int(keep_seconds + _SLOT_GRACE_SECONDS)
        pipe = self._redis.pipeline(transaction=False)
        for (key, rollout_id), batch in batches.items():
            for slot, arms in batch.slots.items():
                name = self._slot_key(key, rollout_id, slot)
                for arm, stats in arms.items():
                    _increments(pipe, name, arm, stats.to_fields())
                pipe.expire(name, ttl)
            div = self._divergence_key(key, rollout_id)
            wrote = False
            for kind, counts in ((_NOISE, batch.noise), (_CANDIDATE, batch.candidate)):
                fields = counts.to_fields()
                if fields:
                    _increments(pipe, div, kind, fields)
                    wrote = True
            if wrote:
                pipe.expire(div, _DIVERGENCE_TTL_SECONDS)
        await pipe.execute()

    async def read(self, key: PromptKey, rollout_id: str, start: float, end: float) -> PooledWindow:
        pipe = self._redis.pipeline(transaction=False)
        for slot in _slots(start, end):
            pipe.hgetall(self._slot_key(key, rollout_id, slot))
        pipe.hgetall(self._divergence_key(key, rollout_id))
        *slot_hashes, divergence = await pipe.execute()
        window = PooledWindow(arms=merge_arms(_split(raw) for raw in slot_hashes if raw))
        by_kind = _split_fields(divergence or {})
        window.noise = DivergenceCounts.from_fields(
            {k: int(float(v)) for k, v in by_kind.get(_NOISE, {}).items()}
        )
        window.candidate = DivergenceCounts.from_fields(
            {k: int(float(v)) for k, v in by_kind.get(_CANDIDATE, {}).items()}
        )
        return window

    async def read_buckets(
        self,
        key: PromptKey,
        rollout_id: str,
        start: int,
        end: int,
        step: int = 1,
        arms: Collection[str] | None = None,
    ) -> dict[int, dict[str, ArmStats]]:
        slots = _slots(start, end)
        buckets = _Buckets(start, step, arms)
        # One pipeline per _READ_CHUNK seconds: redis-py parses answers in Python, and 15
        # minutes of a rollout at 100 requests/s in one answer held the loop (every other
        # request) for 80-120 ms at a time; per chunk, 20-40 ms (measured, no hiredis).
        for first in range(0, len(slots), _READ_CHUNK):
            chunk = slots[first : first + _READ_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            for slot in chunk:
                pipe.hgetall(self._slot_key(key, rollout_id, slot))
            for slot, raw in zip(chunk, await pipe.execute(), strict=True):
                if raw:
                    buckets.add_fields(slot, _split_fields(raw))
        return buckets.totals

    def forget(self, keep: set[RolloutKey]) -> None:
        return None  # Redis keys expire by themselves

    async def close(self) -> None:
        return None


def _increments(pipe: Any, key: str, arm: str, fields: Mapping[str, float]) -> None:
    for name, value in fields.items():
        # Sums may be fractional (feedback values), and HINCRBY refuses a field that ever
        # held a fraction: sums always go through HINCRBYFLOAT, counts through HINCRBY.
        if name.startswith(_FLOAT_FIELDS):
            pipe.hincrbyfloat(key, f"{arm}|{name}", float(value))
        else:
            pipe.hincrby(key, f"{arm}|{name}", int(value))


def _split_fields(raw: Mapping[Any, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        text = key.decode() if isinstance(key, bytes) else str(key)
        arm, sep, name = text.partition("|")
        if sep:
            out.setdefault(arm, {})[name] = float(value)
    return out


def _split(raw: Mapping[Any, Any]) -> dict[str, ArmStats]:
    return {arm: ArmStats.from_fields(fields) for arm, fields in _split_fields(raw).items()}
