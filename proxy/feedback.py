"""Downstream outcomes (a thumbs down, an escalated ticket) attached to the answer they judge.

Every answer to a request that named a prompt is remembered by its request id (the
``x-promptproxy-request-id`` header the caller got) with the prompt key, version, arm and
rollout that produced it. ``POST /v1/feedback`` looks the id up and counts the value for that
version and arm: in ``promptproxy_feedback_value`` and, under a rollout, in the pooled
counts the analyser's feedback check reads.

- ``MemoryRequestIndex``: the embedded store's single process; the newest
  ``feedback.max_local_entries`` answers younger than ``feedback.ttl_seconds``, about 165
  bytes each (docs/operations.md, "Memory").
- ``RedisRequestIndex``: one key per answer with ``feedback.ttl_seconds`` as its expiry, so
  feedback may reach any replica. The request path only appends to a list; a background
  task writes the batch in one pipeline, so no request ever waits on Redis.

Feedback is idempotent per (request id, name): a retried POST is not counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from proxy.analysis.window import SERVED_ARMS, WindowRecorder
from proxy.config import FeedbackConfig
from proxy.errors import InvalidRequest, NotFound, ServiceUnavailable
from proxy.exchange.outcome import Exchange
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.prompt_key import Layer, PromptKey
from proxy.tasks import cancel_and_wait, interruptible

if TYPE_CHECKING:  # redis is imported only when a Redis store is configured
    from redis.asyncio import Redis

_log = logging.getLogger(APP_LOGGER)

#: The proxy's request ids are 24 hex characters; anything much longer is not one.
_MAX_ID_LENGTH = 128
_FLUSH_SECONDS = 0.5
#: Answers waiting to be written to Redis; beyond this the oldest are dropped (their
#: feedback will get a 404), never the request path's memory.
_MAX_PENDING = 100_000
#: How long closing waits for the flush loop to stop and for the last flush.
_CLOSE_GRACE = 1.0


# Immutable and built per request: a NamedTuple is made in C, where a frozen dataclass's
# __init__ sets each field through object.__setattr__ (0.24-0.45 against 0.58 us).
class Answered(NamedTuple):
    """Who answered a request: what feedback on it is attributed to. Stored as a JSON array
    whose first item is the prompt key's text (a plain key's is its slug, so entries written
    before keys existed read as before)."""

    key: PromptKey
    version: str
    arm: str
    rollout_id: str | None
    at: float

    def to_json(self) -> bytes:
        return orjson.dumps([self.key.text, self.version, self.arm, self.rollout_id, self.at])

    @classmethod
    def from_json(cls, raw: bytes | str) -> Answered:
        key, version, arm, rollout_id, at = orjson.loads(raw)
        return cls(PromptKey.parse(str(key)), str(version), str(arm), rollout_id, float(at))


class RequestIndex(Protocol):
    def remember(self, request_id: str, answered: Answered) -> None:
        """Never blocks, never raises: called on the request path."""
        ...

    async def lookup(self, request_id: str) -> Answered | None: ...

    async def first_feedback(self, request_id: str, name: str) -> bool:
        """True the first time (request id, name) is seen, False on a repeat."""
        ...

    async def close(self) -> None: ...


#: The table of answerers is swept when it reaches twice its live size after the last sweep
#: plus this: each sweep (a pass over the entries) is paid for by as many new answerers.
_SWEEP_SLACK = 16

#: (prompt key, version, arm, rollout id): what many answers share.
_Who = tuple[PromptKey, str, str, str | None]
#: The same, by the key's fields: a new key object arrives with each request, and a
#: dataclass's hash is Python code.
_WhoFields = tuple[str, Layer | None, str | None, str, str, str | None]


class MemoryRequestIndex:
    """The embedded store's index: the newest ``max_entries`` answers younger than ``ttl``.

    Built to cost little per answer (docs/operations.md, "Memory"): each is one dict entry
    from its id to a complex number, ``at`` (exact) in its real part and the index of its
    answerer in a small shared table in its imaginary part, plus the id's place in the
    arrival order. A complex is the smallest object holding two exact numbers (32 bytes, a
    tuple of them is 80), and neither it nor its id is tracked by the garbage collector.
    """

    __slots__ = (
        "_answers",
        "_clock",
        "_expires",
        "_max",
        "_order",
        "_seen",
        "_sweep_at",
        "_ttl",
        "_who_index",
        "_whos",
    )

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._clear()

    def _clear(self) -> None:
        #: id -> complex(at, answerer)
        self._answers: dict[str, complex] = {}
        #: Ids, oldest first: what the count bound and the expiry drop from.
        self._order: deque[str] = deque()
        #: When the oldest answer expires, or earlier: an early value only costs a look.
        self._expires = math.inf
        #: Names already counted per id, for ids with feedback only.
        self._seen: dict[str, str | tuple[str, ...]] = {}
        self._whos: list[_Who] = []
        self._who_index: dict[_WhoFields, int] = {}
        self._sweep_at = _SWEEP_SLACK

    def __len__(self) -> int:
        return len(self._answers)

    def remember(self, request_id: str, answered: Answered) -> None:
        # The answer's time is the present (``FeedbackService`` stamps it): no clock call.
        if answered.at > self._expires:
            self._forget_expired(answered.at)
        key = answered.key
        fields = (
            key.slug,
            key.layer,
            key.variant,
            answered.version,
            answered.arm,
            answered.rollout_id,
        )
        who = self._who_index.get(fields)
        if who is None:
            who = self._add_who(fields, answered)
        order, answers = self._order, self._answers
        if request_id in answers:
            # A repeated id keeps its place in the order, as in an OrderedDict.
            answers[request_id] = complex(answered.at, who)
            return
        if len(order) >= self._max:
            # The next oldest keeps the expiry of this one, which is no later (answers
            # arrive in time order): one look later, not one per request.
            self._forget(order.popleft())
        answers[request_id] = complex(answered.at, who)
        order.append(request_id)
        if len(order) == 1:
            self._expires = answered.at + self._ttl

    async def lookup(self, request_id: str) -> Answered | None:
        now = self._clock()
        if now > self._expires:
            self._forget_expired(now)
        entry = self._answers.get(request_id)
        if entry is None:
            return None
        at = entry.real
        if at + self._ttl < now:
            return None
        return Answered(*self._whos[int(entry.imag)], at)

    async def first_feedback(self, request_id: str, name: str) -> bool:
        """Only ids the index holds are remembered (``FeedbackService`` looks the answer up
        first): any other is a first, and costs nothing."""
        if request_id not in self._answers:
            return True
        seen = self._seen.get(request_id)
        if seen is None:
            self._seen[request_id] = sys.intern(name)
        elif seen == name or (isinstance(seen, tuple) and name in seen):
            return False
        else:
            previous = (seen,) if isinstance(seen, str) else seen
            self._seen[request_id] = (*previous, sys.intern(name))
        return True

    async def close(self) -> None:
        return None

    def _forget_expired(self, now: float) -> None:
        order, answers = self._order, self._answers
        while order:
            expires = answers[order[0]].real + self._ttl
            if expires >= now:
                self._expires = expires
                return
            self._forget(order.popleft())
        # A dict keeps the table of its largest size: a fresh one gives it back.
        self._clear()

    def _forget(self, request_id: str) -> None:
        del self._answers[request_id]
        if self._seen:
            self._seen.pop(request_id, None)

    def _add_who(self, fields: _WhoFields, answered: Answered) -> int:
        if len(self._whos) >= self._sweep_at:
            self._sweep()
        index = len(self._whos)
        self._whos.append((answered.key, answered.version, answered.arm, answered.rollout_id))
        self._who_index[fields] = index
        return index

    def _sweep(self) -> None:
        """Drop the answerers no live answer names (versions and rollouts come and go),
        renumbering the rest in place."""
        live = sorted({int(entry.imag) for entry in self._answers.values()})
        if len(live) < len(self._whos):
            renumber = {old: new for new, old in enumerate(live)}
            answers = self._answers
            for request_id, entry in answers.items():
                answers[request_id] = complex(entry.real, renumber[int(entry.imag)])
            self._whos = [self._whos[old] for old in live]
            self._who_index = {
                (key.slug, key.layer, key.variant, version, arm, rollout): index
                for index, (key, version, arm, rollout) in enumerate(self._whos)
            }
        self._sweep_at = 2 * len(self._whos) + _SWEEP_SLACK


class RedisRequestIndex:
    def __init__(
        self, client: Redis, prefix: str, ttl: float, on_error: Callable[[str], None]
    ) -> None:
        self._redis = client
        self._prefix = prefix + "answer:"
        self._ttl = max(1, int(ttl))
        self._on_error = on_error
        self._pending: OrderedDict[str, Answered] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feedback-index")

    def remember(self, request_id: str, answered: Answered) -> None:
        self._pending[request_id] = answered
        if len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, OrderedDict()
        pipe = self._redis.pipeline(transaction=False)
        for request_id, answered in batch.items():
            pipe.set(self._prefix + request_id, answered.to_json(), ex=self._ttl)
        try:
            # In a task of its own: a cancel lost inside redis-py must not keep the flush
            # loop (and so shutdown) running.
            await interruptible(pipe.execute(), grace=_CLOSE_GRACE)
        except Exception as exc:
            self._on_error("request_index")
            _log.warning("feedback index: %d answers not written: %s", len(batch), exc)
            # Keep them for the next try, newest last, within the bound.
            batch.update(self._pending)
            self._pending = batch
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)

    async def lookup(self, request_id: str) -> Answered | None:
        pending = self._pending.get(request_id)
        if pending is not None:
            return pending
        raw = await self._redis.get(self._prefix + request_id)
        return None if raw is None else Answered.from_json(raw)

    async def first_feedback(self, request_id: str, name: str) -> bool:
        key = f"{self._prefix}{request_id}:fb:{name}"
        return bool(await self._redis.set(key, b"1", nx=True, ex=self._ttl))

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, _CLOSE_GRACE)
        # The last answers get one bounded try: a frozen Redis must not hold up shutdown.
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self.flush()
        except TimeoutError:
            _log.warning("feedback index: %d answers not written at shutdown", len(self._pending))


class FeedbackService:
    def __init__(
        self,
        config: FeedbackConfig,
        index: RequestIndex,
        metrics: ProxyMetrics,
        window: WindowRecorder | None,
    ) -> None:
        self._names = frozenset(config.names)
        self._ttl = config.ttl_seconds
        self.index = index
        self._metrics = metrics
        self._window = window

    def remember(self, exchange: Exchange) -> None:
        """Called for every finished exchange; only answers a prompt gave a caller are kept
        (a shadow copy shares its primary's request id but reached no one)."""
        if exchange.key is None or exchange.version is None or exchange.arm is None:
            return
        if exchange.is_shadow:
            return
        self.index.remember(
            exchange.request_id,
            Answered(
                exchange.key, exchange.version, exchange.arm, exchange.rollout_id, time.time()
            ),
        )

    async def record(self, request_id: Any, name: Any, value: Any) -> dict[str, Any]:
        if not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_ID_LENGTH:
            raise InvalidRequest(
                "`request_id` must be the x-promptproxy-request-id of an answer.",
                param="request_id",
            )
        if name not in self._names:
            known = ", ".join(sorted(self._names))
            raise InvalidRequest(
                f"Unknown feedback name {name!r}; this proxy takes: {known} "
                "(configure feedback.names).",
                param="name",
                code="unknown_feedback_name",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidRequest("`value` must be a finite number.", param="value")
        try:
            answered = await self.index.lookup(request_id)
            if answered is None:
                raise NotFound(
                    f"No answer with request id {request_id!r} is known: it never named a "
                    f"prompt, or it is older than {self._ttl:g} seconds.",
                    param="request_id",
                    code="request_not_found",
                )
            first = await self.index.first_feedback(request_id, name)
        except (NotFound, InvalidRequest):
            raise
        except Exception as exc:
            self._metrics.redis_errors.labels("feedback").inc()
            raise ServiceUnavailable(
                "Feedback cannot be recorded right now (the shared store is unreachable)."
            ) from exc
        if first:
            self._count(answered, name, float(value))
        return {
            "request_id": request_id,
            "name": name,
            "value": value,
            "slug": answered.key.slug,
            "version": int(answered.version),
            "arm": answered.arm,
            "recorded": first,
        }

    def _count(self, answered: Answered, name: str, value: float) -> None:
        m = self._metrics
        slug, version, variant = m.prompt_labels(answered.key, answered.version)
        m.feedback.labels(slug, version, answered.arm, variant, m.feedback_label(name)).observe(
            value
        )
        if (
            self._window is not None
            and answered.rollout_id is not None
            and answered.arm in SERVED_ARMS
        ):
            self._window.observe_feedback(
                answered.key, answered.rollout_id, answered.arm, name, value
            )
