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
the request path, and counted for the rollout analysis (``WindowRecorder``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from proxy.analysis.window import WindowArm, WindowRecorder
from proxy.config import ProxyConfig, ShadowConfig
from proxy.log import ACCESS_LOGGER, APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.pipeline.choose import Arm
from proxy.pipeline.record import status_class
from proxy.shadow.call import call_shadow, make_shadow_session
from proxy.shadow.compare import Divergence, divergence
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.models import ArmResult, ShadowKind, ShadowRequest
from proxy.shadow.pairs import Pair, PairMeta, PairSink

_log = logging.getLogger(APP_LOGGER)
_access = logging.getLogger(ACCESS_LOGGER)

SHADOW_ARM = Arm.SHADOW.value

_Entry = tuple[ShadowRequest, "asyncio.Future[ArmResult]"]


def _primary_half(primary: asyncio.Future[ArmResult]) -> ArmResult | None:
    if not primary.done() or primary.cancelled() or primary.exception() is not None:
        return None
    result = primary.result()
    return result if isinstance(result, ArmResult) else None


class ShadowRunner:
    def __init__(
        self,
        config: ShadowConfig,
        base_url: str,
        sink: PairSink,
        metrics: ProxyMetrics,
        shadow_metrics: ShadowMetrics,
        window: WindowRecorder | None = None,
    ) -> None:
        """Call from a running loop (it opens the shadow's ``ClientSession``).
        ``shadow_metrics`` is the instance the sink counts on too (one per registry)."""
        self._config = config
        self._base_url = base_url
        self.sink = sink
        self._metrics = metrics
        self._shadow_metrics = shadow_metrics
        self._window = window
        self._session = make_shadow_session(config)
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

    def submit(self, request: ShadowRequest, primary: asyncio.Future[ArmResult]) -> bool:
        """Start, queue or drop (counted) a shadow; True unless dropped. Never blocks.

        ``primary`` must be resolved with the primary's ``ArmResult`` when it ends, however
        it ends; the shadow waits for it (without a slot) to write the pair.
        """
        if self._closing:
            self._shadow_metrics.drop(request.slug, "draining")
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
        self._shadow_metrics.drop(request.slug, "queue_full")
        return False

    def skip(self, slug: str, reason: str) -> None:
        """Count a shadow the pipeline decided not to send (``side_effects``,
        ``not_completion``, ``body_too_large``...)."""
        self._shadow_metrics.drop(slug, reason)

    def _start(self, request: ShadowRequest, primary: asyncio.Future[ArmResult]) -> None:
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
                self._shadow_metrics.drop(request.slug, "stale")
                continue
            self._start(request, primary)
        self._shadow_metrics.queue_depth.set(len(self._queue))
        self._shadow_metrics.in_flight.set(self._running)

    # -- one shadow -----------------------------------------------------------------------

    async def _shadow(self, request: ShadowRequest, primary: asyncio.Future[ArmResult]) -> None:
        meta = PairMeta.of(request)
        self._shadow_metrics.request(request.slug, "sent")
        try:
            arm = await call_shadow(self._session, self._base_url, request, self._config)
        except asyncio.CancelledError:
            arm = ArmResult(version=request.shadow_version, error_class="cancelled")
            self._record_call(request, arm)
            self._write_pair(meta, primary, arm)
            raise
        finally:
            self._release()
        self._record_call(request, arm)
        del request  # the pair wait below must not keep the headers and body alive
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
        primary: asyncio.Future[ArmResult],
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
        self._shadow_metrics.diverged(meta.slug, meta.kind, diverged)
        if self._window is not None:
            self._window.observe_divergence(
                meta.slug, meta.rollout_id, meta.kind == ShadowKind.STABLE.value, diverged
            )
        return diverged

    def _record_call(self, request: ShadowRequest, arm: ArmResult) -> None:
        """Shadow counters, plus the per-request families with ``arm="shadow"`` so shadow
        tokens and latency are counted apart from the primary's."""
        m = self._metrics
        ok = arm.error_class is None
        self._shadow_metrics.request(request.slug, "completed" if ok else "failed")
        # A shadow cancelled at shutdown says nothing about the candidate.
        if self._window is not None and arm.error_class != "cancelled":
            self._window.observe_call(
                request.slug,
                request.rollout_id,
                (WindowArm.RERUN if request.kind is ShadowKind.STABLE else WindowArm.SHADOW).value,
                failed=not ok,
                duration=arm.latency,
                ttft=arm.ttft,
                output_tokens=arm.output_tokens,
                finish_reason=arm.finish_reason,
            )
        series = m.series(
            request.route.value,
            m.model_label(request.model),
            request.slug,
            str(request.shadow_version),
            SHADOW_ARM,
        )
        series.observe(
            status_class(arm.status),
            arm.latency or 0.0,
            arm.ttft,
            arm.input_tokens,
            arm.output_tokens,
            arm.error_class,
            arm.finish_reason,
            m.price_of(request.model),
        )
        if _access.isEnabledFor(logging.INFO):
            _access.info(self._log_fields(request, arm))

    @staticmethod
    def _log_fields(request: ShadowRequest, arm: ArmResult) -> dict[str, Any]:
        # Joins with the primary's access line by `request_id`; outputs are never logged.
        return {
            "event": "shadow",
            "pair_id": request.pair_id,
            "request_id": request.request_id,
            "route": request.route.value,
            "slug": request.slug,
            "version": str(request.shadow_version),
            "arm": SHADOW_ARM,
            "kind": request.kind.value,
            "stream": request.stream,
            "status": arm.status,
            "latency_ms": None if arm.latency is None else round(arm.latency * 1000, 3),
            "ttft_ms": None if arm.ttft is None else round(arm.ttft * 1000, 3),
            "input_tokens": arm.input_tokens,
            "output_tokens": arm.output_tokens,
            "finish_reason": arm.finish_reason,
            "error_class": arm.error_class,
        }

    # -- shutdown -------------------------------------------------------------------------

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking shadows, give running ones up to ``grace`` seconds, cancel the rest
        (each still writes its pair), then flush the sink and close the session."""
        self._closing = True
        while self._queue:
            request, _ = self._queue.popleft()
            self._shadow_metrics.drop(request.slug, "draining")
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
            await self._session.close()


def _answered(arm: ArmResult) -> bool:
    return arm.error_class is None and 200 <= arm.status < 300


def open_shadow_runner(
    config: ProxyConfig,
    metrics: ProxyMetrics,
    sink: PairSink,
    shadow_metrics: ShadowMetrics,
    window: WindowRecorder | None = None,
) -> ShadowRunner:
    """The runner the app uses: the store backend's pair sink (which counts on
    ``shadow_metrics``, on the app's registry), and ``shadow.base_url`` or else the
    upstream's. Call from a running loop."""
    return ShadowRunner(
        config.shadow,
        config.shadow.base_url or config.upstream.base_url,
        sink,
        metrics,
        shadow_metrics,
        window,
    )
