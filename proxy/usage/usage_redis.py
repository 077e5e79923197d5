"""``RedisUsageLedger``: the usage ledger in the shared Redis, one hash per (tenant, hour)
and one per (tenant, day), both added to by every replica.

Key schema (P = the store's prefix; ``{usage}`` is a hash tag, so a Redis Cluster keeps
every key in one slot and one script may touch them all):

===============================  ======  ================================================
``P{usage}:h:<tenant>:<hour>``   hash    ``<minute of hour>|<slug>|<variant>|<counter>``
                                         -> sum; ``<hour>``: unix hour (minute // 60)
``P{usage}:d:<tenant>:<day>``    hash    ``<hour of day>|<slug>|<variant>|<counter>``
                                         -> sum; ``<day>``: unix day (minute // 1440), UTC
``P{usage}:add:<id>``            string  one add's chunk: ``a`` once applied, ``f`` once
                                         fenced (see below); expires after an hour
===============================  ======  ================================================

Tenants, slugs and variants are made of ``[A-Za-z0-9._-]`` (slug and variant may be
empty), so ``:`` and ``|`` cannot occur in them. ``<counter>`` is a name of
``counts.FIELDS``: the counts go through ``HINCRBY``, ``cost_usd`` through
``HINCRBYFLOAT``. A counter that is zero is not written, nor is a row that is all zeros.

Every row is written twice, to its hourly and to its daily hash, so that a read of any
range stays bounded: whole hours come from the daily hashes (one ``HGETALL`` per day the
range touches, ``keep_days + 1`` at most), the partial hours at either end from two hourly
hashes. A read starts no earlier than ``keep_days`` ago and ends no later than a day ahead
of this replica's clock (a replica whose clock is a day off is broken), so an open range
costs no more than that.

Expiry: each hash expires ``keep_days`` after the end of its hour or day, worked out from
the row's minute, not from now; a row already older than ``keep_days`` is not written at
all. It is set as a TTL (``EXPIRE``: that instant less the ledger's clock) rather than with
``EXPIREAT``, so that the ledger's clock stays its one measure of time (the keep of ``add``
and of ``read`` too) and a Redis clock that differs cannot cut what the ledger keeps. A
daily hash outlives the first hours it holds by up to a day; since a read never reaches
back past ``keep_days``, those hours are not counted.

Adding exactly once. Neither a pipeline nor ``MULTI``/``EXEC`` would do: a pipeline that
fails midway may have applied part of its increments (Redis has no rollback), and both are
sent again whole by the client when their answer is lost (the shared client retries once on
a timeout or a dropped connection), so rows applied once would be applied twice. Rows are
added by a Lua script instead, which Redis runs whole (no other command runs in between),
under a marker key of its own that the script checks and sets first: a second run of the
same call applies nothing. A script is not undone either when it stops on an error, so
each increment goes through ``pcall``: a field that refuses is skipped and logged, and the
script always runs to its end.

A flush is written in chunks of at most ``_CHUNK_INCREMENTS`` increments (whole rows, both
of their hashes in the same chunk), one after the other: a replica back from an outage may
flush 100,000 rows (``usage.max_pending_rows``), and one script that large would hold up
every client of this Redis (the registry's reads among them) for a second or more, longer
than the shared client's socket timeout. A chunk takes a few milliseconds.

Failure. A ``PING`` goes first: a Redis that is down or frozen fails it, nothing has been
sent, and ``add`` raises (the caller keeps the rows). When a chunk fails, its outcome is
settled by a fence, another script that sets the chunk's marker to ``f`` unless the chunk
set it first, so that a copy of the chunk still on its way can no longer apply. Then:

- the chunk was applied (only its answer was lost): the flush goes on;
- it was not: it and the chunks after it are returned as ``unwritten`` (the fence makes
  sure they never apply late), and the caller keeps them for its next flush;
- the fence failed too (the outcome is unknown): that chunk's rows are ``lost`` (never
  sent again, so never counted twice), the chunks after it ``unwritten``.

Chunks are built one at a time, each sent before the next is built: a flush of 100,000
rows never holds the event loop for the whole of its preparation.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from proxy.log import APP_LOGGER
from proxy.usage.counts import MINUTE, Totals, UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES, Added

if TYPE_CHECKING:
    from redis.asyncio import Redis

_log = logging.getLogger(APP_LOGGER)

Clock = Callable[[], float]

_HOUR_MINUTES = 60
_HOURS_PER_DAY = 24
_DAY_SECONDS = DAY_MINUTES * MINUTE
_HOUR_SECONDS = _HOUR_MINUTES * MINUTE
#: Increments (HINCRBY/HINCRBYFLOAT) per script: a few milliseconds of Redis time.
_CHUNK_INCREMENTS = 5_000
#: A marker must outlive every copy of its chunk that may still run: the client's own
#: retry, or a copy still unread on a dead connection. Seconds suffice; an hour is margin.
_MARKER_SECONDS = 3_600
#: Rows stamped further ahead of this replica's clock are not read: a clock a day off is
#: broken, and the bound keeps a read of an open-ended range to the days that can hold rows.
_FUTURE_MINUTES = DAY_MINUTES
_COST = "cost_usd"

#: KEYS[1]: the chunk's marker; KEYS[2..]: its hashes. ARGV[1]: the marker's TTL; then, per
#: hash: its TTL (seconds), its integer and its float increments' numbers, then the
#: (field, increment) pairs, integers first. Returns {marker, increments refused}.
#: Increments go through pcall: Redis does not undo a script's writes when it stops on an
#: error, so a field that refuses (another writer's value) is skipped and counted instead.
_ADD = """
local done = redis.call('GET', KEYS[1])
if done then return {done, 0} end
redis.call('SET', KEYS[1], 'a', 'EX', ARGV[1])
local refused = 0
local a = 2
for k = 2, #KEYS do
  local key = KEYS[k]
  local ttl, ints, floats = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  for i = 1, ints + floats do
    local op = 'HINCRBYFLOAT'
    if i <= ints then op = 'HINCRBY' end
    local r = redis.pcall(op, key, ARGV[a], ARGV[a + 1])
    if type(r) == 'table' and r.err then refused = refused + 1 end
    a = a + 2
  end
  redis.pcall('EXPIRE', key, ttl)
end
return {'a', refused}
"""

#: KEYS[1]: a chunk's marker; ARGV[1]: its TTL. Returns ``a`` when the chunk applied, else
#: ``f``, after which it never will. Running it twice answers the same.
_FENCE = """
local done = redis.call('GET', KEYS[1])
if done then return done end
redis.call('SET', KEYS[1], 'f', 'EX', ARGV[1])
return 'f'
"""


@dataclass(slots=True)
class _Hash:
    ttl: int
    ints: list[tuple[str, int]] = field(default_factory=list)
    floats: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Chunk:
    hashes: dict[str, _Hash] = field(default_factory=dict)
    keys: list[UsageKey] = field(default_factory=list)
    increments: int = 0

    def script_input(self, marker: str) -> tuple[list[str], list[str | int]]:
        keys = [marker]
        args: list[str | int] = [_MARKER_SECONDS]
        for name, held in self.hashes.items():
            keys.append(name)
            args += [held.ttl, len(held.ints), len(held.floats)]
            for item, value in held.ints:
                args += [item, value]
            for item, cost in held.floats:
                args += [item, repr(cost)]
        return keys, args


class RedisUsageLedger:
    def __init__(
        self, client: Redis, prefix: str, *, keep_days: int, clock: Clock = time.time
    ) -> None:
        """``client`` is shared with the other Redis parts; its owner closes it."""
        self._redis = client
        self._prefix = prefix + "{usage}:"
        self._keep_minutes = keep_days * DAY_MINUTES
        self._keep_seconds = keep_days * _DAY_SECONDS
        self._clock = clock
        self._add_script = client.register_script(_ADD)
        self._fence_script = client.register_script(_FENCE)

    def _hourly(self, tenant: str, hour: int) -> str:
        return f"{self._prefix}h:{tenant}:{hour}"

    def _daily(self, tenant: str, day: int) -> str:
        return f"{self._prefix}d:{tenant}:{day}"

    async def add(self, rows: Mapping[UsageKey, UsageCounts]) -> Added:
        # Rows of one tenant and hour together: a chunk touches few hashes.
        ordered = sorted(rows, key=lambda k: (k.tenant, k.minute, k.slug, k.variant))
        if not ordered:
            return Added()
        # Before anything is sent: a Redis that is down or frozen fails here, where
        # nothing can have been added, rather than in a script whose outcome is unknown.
        await self._redis.ping()
        sent = 0  # rows of ``ordered`` in the chunks that were applied
        for chunk, end in self._chunks(rows, ordered):
            marker = f"{self._prefix}add:{uuid.uuid4().hex}"
            keys, args = chunk.script_input(marker)
            try:
                reply = await self._add_script(keys=keys, args=args)
            except RedisError as error:
                applied = await self._settle(marker)
                if applied:
                    sent = end
                    continue
                later = {key: rows[key] for key in ordered[end:]}
                if applied is None:
                    _log.warning(
                        "usage: %d rows given up: Redis failed in a flush (%s), and whether "
                        "they were added is unknown",
                        len(chunk.keys),
                        error,
                    )
                    return Added(unwritten=later, lost=len(chunk.keys))
                _log.warning("usage: Redis failed in a flush (%s); the rest is kept", error)
                return Added(unwritten={key: rows[key] for key in ordered[sent:]})
            sent = end
            refused = int(reply[1])
            if refused:
                _log.warning("usage: Redis refused %d increments of a flush", refused)
        return Added()

    async def _settle(self, marker: str) -> bool | None:
        """Whether a failed chunk was applied; None when that cannot be known."""
        try:
            state = await self._fence_script(keys=[marker], args=[_MARKER_SECONDS])
        except RedisError:
            return None
        return _text(state) == "a"

    def _chunks(
        self, rows: Mapping[UsageKey, UsageCounts], ordered: list[UsageKey]
    ) -> Iterator[tuple[_Chunk, int]]:
        """Each chunk, and the index in ``ordered`` its last row ends at."""
        now = int(self._clock())
        oldest = now // MINUTE - self._keep_minutes
        chunk = _Chunk()
        for index, key in enumerate(ordered):
            if key.minute < oldest:
                continue  # its hashes would expire at once
            ints, cost = _increments(rows[key])
            increments = 2 * (len(ints) + (cost is not None))
            if not increments:
                continue
            if chunk.increments and chunk.increments + increments > _CHUNK_INCREMENTS:
                yield chunk, index
                chunk = _Chunk()
            hour, day = key.minute // _HOUR_MINUTES, key.minute // DAY_MINUTES
            row = f"{key.slug}|{key.variant}"
            for name, position, expiry in (
                (
                    self._hourly(key.tenant, hour),
                    key.minute % _HOUR_MINUTES,
                    (hour + 1) * _HOUR_SECONDS + self._keep_seconds,
                ),
                (
                    self._daily(key.tenant, day),
                    hour % _HOURS_PER_DAY,
                    (day + 1) * _DAY_SECONDS + self._keep_seconds,
                ),
            ):
                held = chunk.hashes.get(name)
                if held is None:
                    # At least a second: the row is younger than the keep, see above.
                    held = chunk.hashes[name] = _Hash(max(expiry - now, 1))
                held.ints += [(f"{position}|{row}|{counter}", value) for counter, value in ints]
                if cost is not None:
                    held.floats.append((f"{position}|{row}|{_COST}", cost))
            chunk.keys.append(key)
            chunk.increments += increments
        if chunk.keys:
            yield chunk, len(ordered)

    async def read(self, tenant: str, start: int, end: int, slug: str | None = None) -> Totals:
        now = int(self._clock()) // MINUTE
        start = max(start, now - self._keep_minutes)
        end = min(end, now + _FUTURE_MINUTES)
        if start >= end:
            return {}
        #: day -> the hours of that day read whole from its daily hash.
        whole: dict[int, set[int]] = {}
        #: (hour, first minute, end minute): the partial hours, read from hourly hashes.
        edges: list[tuple[int, int, int]] = []
        for hour in range(start // _HOUR_MINUTES, (end - 1) // _HOUR_MINUTES + 1):
            first = max(start - hour * _HOUR_MINUTES, 0)
            stop = min(end - hour * _HOUR_MINUTES, _HOUR_MINUTES)
            if first == 0 and stop == _HOUR_MINUTES:
                whole.setdefault(hour // _HOURS_PER_DAY, set()).add(hour % _HOURS_PER_DAY)
            else:
                edges.append((hour, first, stop))
        pipe = self._redis.pipeline(transaction=False)
        for day in whole:
            pipe.hgetall(self._daily(tenant, day))
        for hour, _, _ in edges:
            pipe.hgetall(self._hourly(tenant, hour))
        replies = await pipe.execute()
        sums: dict[tuple[str, str], dict[str, float]] = {}
        for hours, raw in zip(whole.values(), replies[: len(whole)], strict=True):
            _sum_into(sums, raw, hours, slug)
        for (_, first, stop), raw in zip(edges, replies[len(whole) :], strict=True):
            _sum_into(sums, raw, range(first, stop), slug)
        totals = {pair: UsageCounts.from_fields(fields) for pair, fields in sums.items()}
        return {pair: counts for pair, counts in totals.items() if counts.requests}

    async def close(self) -> None:
        return None  # the client is its owner's to close


def _increments(counts: UsageCounts) -> tuple[list[tuple[str, int]], float | None]:
    """The counters that are not zero, and the cost unless zero (or not finite, which
    HINCRBYFLOAT would refuse)."""
    ints: list[tuple[str, int]] = []
    cost: float | None = None
    for name, value in counts.to_fields().items():
        if name == _COST:
            cost = value if math.isfinite(value) else None
        else:
            ints.append((name, int(value)))
    return ints, cost


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sum_into(
    sums: dict[tuple[str, str], dict[str, float]],
    raw: Mapping[Any, Any],
    wanted: Container[int],
    slug: str | None,
) -> None:
    """Add a hash's fields to ``sums`` by (slug, variant), those whose first part (minute
    of the hour, or hour of the day) is ``wanted`` and, when given, of ``slug`` only."""
    for key, value in raw.items():
        parts = _text(key).split("|")
        if len(parts) != 4 or (slug is not None and parts[1] != slug):
            continue
        position, row_slug, variant, counter = parts
        try:
            if int(position) not in wanted:
                continue
            number = float(value)
        except ValueError:
            continue  # not a field this ledger wrote
        held = sums.setdefault((row_slug, variant), {})
        held[counter] = held.get(counter, 0.0) + number
