"""``ShadowRunner``: sends sampled copies of requests in the background and pairs the answers.

Isolation rules (reliability guide A1), all enforced here:

- ``submit`` never blocks or awaits: it starts the shadow, queues it, or drops and counts it.
- At most ``max_in_flight`` shadow calls run, on their own session and pool; beyond that a
  queue bounded in entries and in body bytes, beyond that drops (``queue_full``). A queued
  copy older than ``queue_max_age_seconds`` is dropped when its turn comes (``stale``).
- A finished shadow gives its slot back *before* waiting for its primary, so slow
  primaries never hold shadow capacity; the wait keeps only the pair's metadata.
- Every task is held by strong reference and drained by ``close``.

Each started shadow writes exactly one pair: with both halves, with ``primary: null`` when
the primary did not report within ``pair_wait_seconds`` (or shutdown came first). When both
halves answered, the pair carries its divergence measures (``compare``), computed here, off
the request path, and handed to ``on_divergence`` (the rollout analysis's window).

A finished shadow call goes through the same ordered observers as a primary
(``proxy.pipeline.record``: metrics with ``arm="shadow"``, analysis window, access log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from proxy.config import ProxyConfig, ShadowConfig
from proxy.exchange.observers import Observers
from proxy.exchange.outcome import Exchange
from proxy.exchange.upstream import UpstreamClient, UpstreamLimits
from proxy.log import APP_LOGGER
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.shadow.call import call_shadow, shadow_exchange
from proxy.shadow.compare import Divergence, divergence
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind, ShadowRequest
from proxy.shadow.pairs import Pair, PairMeta, PairSink

if TYPE_CHECKING:
    from proxy.tracing.otel import ShadowTrace, Tracing

_log = logging.getLogger(APP_LOGGER)

#: (prompt key, rollout id, noise pair, divergence): what the rollout analysis counts of a
#: pair.
DivergenceObserver = Callable[[PromptKey, str, bool, Divergence], None]

_Entry = tuple[ShadowRequest, "asyncio.Future[Exchange]"]


def _primary_half(primary: asyncio.Future[Exchange]) -> ArmResult | None:
    if not primary.done() or primary.cancelled() or primary.exception() is not None:
        return None
    return ArmResult.of(primary.result())


class ShadowRunner:
    def __init__(
        self,
        config: ShadowConfig,
        client: UpstreamClient,
        sink: PairSink,
        shadow_metrics: ShadowMetrics,
        finished: Observers,
        on_divergence: DivergenceObserver | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``client`` is the shadow's own (closed by ``close``); ``shadow_metrics`` is the
        instance the sink counts on too (one per registry); ``finished`` sees every shadow
        call end, like every primary (``proxy.pipeline.record``); ``tracing`` (when on)
        gives each call a span linked to its primary's."""
        self._config = config
        self._client = client
        self.sink = sink
        self._shadow_metrics = shadow_metrics
        self._finished = finished
        self._on_divergence = on_divergence
        self._tracing = tracing
        self._queue: deque[_Entry] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        #: Bodies held by the queue: bounded too, so queued shadows cannot eat the memory
        #: that ``queue_size`` times ``max_body_bytes`` would allow.
        self._queued_bytes = 0
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Shadow calls running now (not counting finished ones waiting for their primary)."""
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def metrics(self) -> ShadowMetrics:
        return self._shadow_metrics

    # -- intake ---------------------------------------------------------------------------

    def submit(self, request: ShadowRequest, primary: asyncio.Future[Exchange]) -> bool:
        """Start, queue or drop (counted) a shadow; True unless dropped. Never blocks.

        ``primary`` must be resolved with the primary's finished ``Exchange`` when it ends,
        however it ends; the shadow waits for it (without a slot) to write the pair.
        """
        if self._closing:
            self._shadow_metrics.drop(request.key, "draining")
            return False
        if self._running < self._config.max_in_flight:
            self._start(request, primary)
            return True
        if (
            len(self._queue) < self._config.queue_size
            and self._queued_bytes + len(request.body) <= self._config.queue_max_bytes
        ):
            self._queue.append((request, primary))
            self._queued_bytes += len(request.body)
            self._shadow_metrics.queue_depth.set(len(self._queue))
            return True
        self._shadow_metrics.drop(request.key, "queue_full")
        return False

    def skip(self, key: PromptKey, reason: str) -> None:
        """Count a shadow the pipeline decided not to send (``side_effects``,
        ``not_completion``, ``body_too_large``...)."""
        self._shadow_metrics.drop(key, reason)

    def _start(self, request: ShadowRequest, primary: asyncio.Future[Exchange]) -> None:
        self._running += 1
        self._shadow_metrics.in_flight.set(self._running)
        task = asyncio.get_running_loop().create_task(
            self._shadow(request, primary), name=f"shadow-{request.pair_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("shadow task %s failed", task.get_name(), exc_info=task.exception())

    def _release(self) -> None:
        """A call ended: give its slot to the oldest queued copy still worth sending."""
        self._running -= 1
        max_age = self._config.queue_max_age_seconds
        now = time.monotonic()
        while self._queue and not self._closing and self._running < self._config.max_in_flight:
            request, primary = self._queue.popleft()
            self._queued_bytes -= len(request.body)
            if now - request.submitted_at > max_age:
                self._shadow_metrics.drop(request.key, "stale")
                continue
            self._start(request, primary)
        self._shadow_metrics.queue_depth.set(len(self._queue))
        self._shadow_metrics.in_flight.set(self._running)

    # -- one shadow -----------------------------------------------------------------------

    async def _shadow(self, request: ShadowRequest, primary: asyncio.Future[Exchange]) -> None:
        meta = PairMeta.of(request)
        self._shadow_metrics.request(request.key, "sent")
        trace: ShadowTrace | None = None
        if self._tracing is not None:
            request, trace = _traced(self._tracing, request)
        try:
            exchange = await call_shadow(self._client, request, self._config)
        except asyncio.CancelledError:
            # Only what the copy was: a call cut short says nothing about its answer.
            exchange = shadow_exchange(request, None)
            exchange.error_class = "cancelled"
            if trace is not None:
                trace.end(exchange)
            arm = self._record_call(exchange)
            self._write_pair(meta, primary, arm)
            raise
        finally:
            self._release()
        if trace is not None:
            trace.end(exchange)
        arm = self._record_call(exchange)
        del request, exchange  # the pair wait below must not keep the headers and body alive
        written = False
        try:
            if not primary.done():
                await asyncio.wait({primary}, timeout=self._config.pair_wait_seconds)
            self._write_pair(meta, primary, arm, compare=True)
            written = True
        finally:  # on cancellation at shutdown: still one pair
            if not written:
                self._write_pair(meta, primary, arm)

    def _write_pair(
        self,
        meta: PairMeta,
        primary: asyncio.Future[Exchange],
        arm: ArmResult,
        compare: bool = False,
    ) -> None:
        half = _primary_half(primary)
        if half is None:
            self._shadow_metrics.pair("unpaired")
        diverged = self._compare(meta, half, arm) if compare and half is not None else None
        self.sink.add(
            Pair.build(
                meta,
                half,
                arm,
                time.time(),
                None if diverged is None else diverged.to_dict(),
            )
        )

    def _compare(self, meta: PairMeta, primary: ArmResult, shadow: ArmResult) -> Divergence | None:
        """Divergence of two successful answers; a failed half is an error, counted as one,
        not a divergence."""
        if not (_answered(primary) and _answered(shadow)):
            return None
        diverged = divergence(primary, shadow, meta.expect_json)
        self._shadow_metrics.diverged(meta.key, meta.kind, diverged)
        if self._on_divergence is not None:
            self._on_divergence(
                meta.key, meta.rollout_id, meta.kind == ShadowKind.STABLE.value, diverged
            )
        return diverged

    def _record_call(self, exchange: Exchange) -> ArmResult:
        """The runner's own counter, then the observers every exchange goes through;
        returns the shadow's half of the pair."""
        outcome = "completed" if exchange.error_class is None else "failed"
        self._shadow_metrics.request(exchange.key, outcome)
        self._finished.finished(exchange)
        return ArmResult.of(exchange)

    # -- shutdown -------------------------------------------------------------------------

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking shadows, give running ones up to ``grace`` seconds, cancel the rest
        (each still writes its pair), then flush the sink and close the session."""
        self._closing = True
        while self._queue:
            request, _ = self._queue.popleft()
            self._shadow_metrics.drop(request.key, "draining")
        self._queued_bytes = 0
        self._shadow_metrics.queue_depth.set(0)
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        try:
            await self.sink.close()
        finally:
            await self._client.close()


def _traced(tracing: Tracing, request: ShadowRequest) -> tuple[ShadowRequest, ShadowTrace]:
    """The copy with its own span's ``traceparent`` (in place of the caller's or the
    primary's call's), and that span."""
    headers = CIMultiDict(request.headers)
    anthropic = request.messages is not None or request.route is Route.MESSAGES
    trace = tracing.shadow(
        request.link,
        shadow_exchange(request, None),
        "anthropic" if anthropic else "openai",
        request.base_url,
        headers,
    )
    return dataclasses.replace(request, headers=headers), trace


def _answered(arm: ArmResult) -> bool:
    return arm.error_class is None and 200 <= arm.status < 300


def open_shadow_runner(
    config: ProxyConfig,
    sink: PairSink,
    shadow_metrics: ShadowMetrics,
    finished: Observers,
    on_divergence: DivergenceObserver | None = None,
    tracing: Tracing | None = None,
) -> ShadowRunner:
    """The runner the app uses: the store backend's pair sink (which counts on
    ``shadow_metrics``, on the app's registry), and its own client to ``shadow.base_url``
    or else the upstream's. Call from a running loop."""
    client = UpstreamClient(UpstreamLimits.shadow(config))
    return ShadowRunner(
        config.shadow, client, sink, shadow_metrics, finished, on_divergence, tracing
    )
