"""Process-wide resources, created once, closed once: ``async with open_services(settings)``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.analysis.analyser import Analyser, replica_id
from proxy.analysis.series_cache import SeriesCache, settle_seconds
from proxy.analysis.window import WindowRecorder
from proxy.backends.base import Backend
from proxy.backends.open import open_backend
from proxy.capture.recorder import CaptureRecorder
from proxy.capture.service import CaptureService
from proxy.config import Settings
from proxy.evals.gates import EvalGates
from proxy.evals.online import OnlineJudge
from proxy.evals.service import EvalService
from proxy.exchange.upstream import UpstreamClient, UpstreamLimits
from proxy.feedback import FeedbackService
from proxy.log import APP_LOGGER
from proxy.loop_lag import watch_loop_lag
from proxy.metrics import ProxyMetrics
from proxy.pipeline.capturing import ShareSampler
from proxy.pipeline.record import eval_observers, exchange_observers
from proxy.pipeline.resources import PipelineResources
from proxy.providers import Providers
from proxy.registry.bootstrap import start_registry
from proxy.registry.fleet import Fleet
from proxy.registry.fleet_adopt import adopt_fleet_generation
from proxy.registry.fleet_heartbeat import AppliedSignal, Heartbeat
from proxy.registry.fleet_setup import FleetMetrics
from proxy.registry.models import RegistrySnapshot
from proxy.registry.recovery import RegistryRecovery
from proxy.registry.reserved import startup_notices
from proxy.registry.service import RegistryService
from proxy.registry.snapshot import SnapshotHolder, SnapshotRefresher
from proxy.registry.templates import PromptRenderer
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.runner import ShadowRunner, open_shadow_runner
from proxy.tasks import BackgroundTasks, cancel_and_wait
from proxy.tracing import open_tracing
from proxy.usage.recorder import UsageRecorder
from proxy.usage.service import UsageService

_log = logging.getLogger(APP_LOGGER)
#: How long leaving the fleet waits for the heartbeat task to stop.
_LEAVE_GRACE = 2.0


class Lifecycle:
    """Whether the process still takes work; flipped once on SIGTERM."""

    __slots__ = ("_draining", "_metrics")

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._draining = False
        self._metrics = metrics

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        self._draining = True
        self._metrics.draining.set(1)


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    upstream: UpstreamClient
    metrics: ProxyMetrics
    #: What the request path uses of all this (``proxy.pipeline.run.handle``).
    pipeline: PipelineResources
    lifecycle: Lifecycle
    snapshot: SnapshotHolder
    refresher: SnapshotRefresher
    renderer: PromptRenderer
    registry: RegistryService
    recovery: RegistryRecovery
    shadow: ShadowRunner
    analysis: Analyser
    feedback: FeedbackService
    usage: UsageService
    #: Eval runs: started here, sent through this process's own data plane.
    evals: EvalService
    #: Captured calls (``capture.slugs``), written to the store; read back by replays.
    capture: CaptureService
    #: Online judging (``evals.online``): sampled served answers scored off the path.
    online: OnlineJudge
    #: Every part of the shared state, from `registry.store`.
    backend: Backend
    #: The series route's settled buckets, so a chart's refresh reads only its tail.
    series: SeriesCache

    @property
    def store_name(self) -> str:
        return self.backend.describe()


def _snapshot_observer(metrics: ProxyMetrics, applied: AppliedSignal) -> SnapshotHolder:
    def on_apply(snapshot: RegistrySnapshot) -> None:
        metrics.set_registry(snapshot)
        metrics.registry_revision.set(snapshot.revision)
        applied.applied(snapshot.revision)

    holder = SnapshotHolder(on_apply)
    metrics.registry_staleness.set_function(lambda: holder.staleness)
    metrics.registry_up.set_function(lambda: 1.0 if holder.healthy else 0.0)
    metrics.registry_store_replaced.set_function(lambda: 0.0 if holder.replaced is None else 1.0)
    return holder


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    config = settings.config
    metrics = ProxyMetrics(
        CollectorRegistry(auto_describe=True),
        config.metrics.models,
        config.metrics.price_table(),
        config.feedback.names,
        config.tenants.tiers,
    )
    async with AsyncExitStack() as stack:
        # None when tracing is off (OpenTelemetry is then never imported). Shut down last
        # (the stack unwinds in reverse), once every span of the drain has ended; bounded.
        tracing = open_tracing(settings)
        if tracing is not None:
            stack.push_async_callback(tracing.close)
        upstream = UpstreamClient(UpstreamLimits.primary(config.upstream))
        stack.push_async_callback(upstream.close)
        me = replica_id()
        shadow_metrics = ShadowMetrics(metrics.registry, metrics.slug_label, metrics.variant_label)
        # Every shared part, closed once and late: after the runner, the analyser and the
        # background tasks stopped using them (the stack unwinds in reverse).
        backend = await open_backend(
            settings,
            replica=me,
            pair_metrics=shadow_metrics,
            on_error=lambda op: metrics.redis_errors.labels(op).inc(),
        )
        stack.push_async_callback(backend.close)
        store = backend.store
        applied = AppliedSignal()
        holder = _snapshot_observer(metrics, applied)
        refresher = SnapshotRefresher(
            store, holder, on_error=lambda op: metrics.registry_errors.labels(op).inc()
        )
        heartbeat = Heartbeat(
            backend.board,
            me,
            holder,
            applied,
            config.fleet.heartbeat_seconds,
            FleetMetrics(metrics.registry).heartbeat_errors.inc,
        )
        fleet = Fleet(backend.board, me, config.fleet.live_seconds, local=heartbeat.beat)
        safety = config.safety.policy()
        registry = RegistryService(
            store,
            serve=refresher.serve,
            fleet=fleet,
            tiers=config.tenants.tiers,
            safety=safety,
            gates=EvalGates(config.gates, backend.evals),
        )
        tasks = BackgroundTasks()
        stack.push_async_callback(tasks.close)

        bootstrap_dir = config.registry.bootstrap_dir
        await start_registry(
            registry,
            refresher,
            holder,
            tasks,
            None if bootstrap_dir is None else Path(bootstrap_dir),
            adopt=lambda: adopt_fleet_generation(store, fleet),
        )
        tasks.spawn(watch_loop_lag(metrics.loop_lag), name="loop-lag")
        beating = tasks.spawn(heartbeat.run(), name="fleet-heartbeat")
        window = WindowRecorder(time.time, config.tenants.tiers)
        analysis = Analyser(
            config=config.analysis,
            snapshot=lambda: holder.current,
            registry=registry,
            recorder=window,
            pool=backend.pool,
            lease=backend.lease,
            state=backend.state,
            metrics=metrics,
        )
        analysis.start()
        stack.push_async_callback(analysis.close)
        feedback = FeedbackService(config.feedback, backend.index, metrics, window)
        usage = UsageService(
            config.usage,
            UsageRecorder(time.time, metrics.price_of, config.usage.max_pending_rows),
            backend.usage,
            lambda: holder.current,
            metrics,
        )
        if config.usage.enabled:
            usage.start()
        # Flushed a last time once the data plane drained (the stack unwinds in reverse).
        stack.push_async_callback(usage.close)
        capture = CaptureService(
            config.capture,
            CaptureRecorder(time.time, config.capture.queue_size, config.capture.max_bytes),
            backend.captures,
            metrics,
        )
        capture.start()
        # Written a last time once the data plane drained (the stack unwinds in reverse).
        stack.push_async_callback(capture.close)
        # Its workers start once the data plane listens and stop when it drains (EvalService).
        online = OnlineJudge(config.evals, lambda: holder.current, metrics, window, tracing)
        # One list for the primary and the shadow alike (pipeline/record.py).
        finished = exchange_observers(
            metrics,
            window,
            feedback.remember,
            usage.recorder if config.usage.enabled else None,
            capture.recorder if config.capture.slugs else None,
            online.finished if config.evals.online else None,
        )
        shadow = open_shadow_runner(
            config, backend.pairs, shadow_metrics, finished, window.observe_divergence, tracing
        )
        # Closed first (the stack unwinds in reverse), after the data plane drained: shadows
        # get a short grace, never the whole shutdown budget.
        stack.push_async_callback(shadow.close, min(5.0, config.server.shutdown_grace_seconds))
        # First to run on the way out: off the board before anything closes.
        stack.push_async_callback(_leave_fleet, beating, heartbeat)
        _log.info("prompt registry: %s, revision %d", backend.describe(), holder.current.revision)
        for level, notice in startup_notices(holder.current):
            _log.log(level, "%s", notice)
        renderer = PromptRenderer()
        evals = EvalService(
            config.evals,
            backend.evals,
            lambda: holder.current,
            captures=lambda slug, since, limit: capture.read(slug, since, limit=limit),
            online=online,
        )
        # Cancelled before the data plane goes (the stack unwinds in reverse; the server
        # closes it earlier still, when it starts draining).
        stack.push_async_callback(evals.close)
        yield Services(
            settings=settings,
            upstream=upstream,
            metrics=metrics,
            pipeline=PipelineResources(
                config=config,
                providers=Providers.from_settings(settings),
                upstream=upstream,
                metrics=metrics,
                snapshot=holder,
                renderer=renderer,
                shadow=shadow,
                finished=finished,
                eval_finished=eval_observers(),
                capture=ShareSampler(config.capture.share_of),
                judging=ShareSampler(config.evals.online_share),
                tracing=tracing,
            ),
            lifecycle=Lifecycle(metrics),
            snapshot=holder,
            refresher=refresher,
            renderer=renderer,
            registry=registry,
            recovery=RegistryRecovery(
                store, holder, fleet=fleet, serve=refresher.serve, safety=safety
            ),
            shadow=shadow,
            analysis=analysis,
            feedback=feedback,
            usage=usage,
            evals=evals,
            capture=capture,
            online=online,
            backend=backend,
            series=SeriesCache(settle_seconds(config.analysis.flush_seconds)),
        )


async def _leave_fleet(beating: asyncio.Task[None], heartbeat: Heartbeat) -> None:
    # Bounded: a heartbeat that lost its cancel inside a store call must not hold up exit.
    await cancel_and_wait(beating, _LEAVE_GRACE)
    await heartbeat.leave()
