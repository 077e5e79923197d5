"""Stage 6, record: the one ordered list of what sees an exchange finish, primary or shadow.

1. metrics      the per-request families (``arm="shadow"`` for shadow calls)
2. analysis     the rollout's per-arm window counters (stable, canary; shadow, rerun)
3. feedback     the request index: answers a caller got (never shadow copies)
4. usage        the per-tenant usage: requests of tenants the registry knows (never shadow
                copies)
5. access log   one JSON line: ``event: request``, or ``event: shadow``
6. capture      a request sampled for replay (``capture.slugs``) is kept (never shadow
                copies, nor eval calls: neither is sampled)
7. online judge a served answer sampled for judging (``evals.online``) is queued for the
                judge, never awaited (never shadow copies, nor eval calls)
8. pair half    a shadowed primary hands its half to the shadow waiting for it

An eval run's call (the ``eval`` arm) goes through ``eval_observers`` instead: the access log
line alone, so it counts as nobody's traffic.

The primary runs it from the ``finally`` of ``run.handle``, so failed and cancelled
requests count too; a shadow call from its runner once the call ended, however it ended.
"""

from __future__ import annotations

import time

from proxy.analysis.window import WindowRecorder
from proxy.capture.recorder import CaptureRecorder
from proxy.exchange.observers import ExchangeObserver, Observers, hand_over_pair_half
from proxy.exchange.outcome import Exchange, error_class_for_status
from proxy.exchange.recorders import AccessLog, RecordMetrics
from proxy.metrics import ProxyMetrics
from proxy.usage.recorder import UsageRecorder


def exchange_observers(
    metrics: ProxyMetrics,
    window: WindowRecorder | None = None,
    remember: ExchangeObserver | None = None,
    usage: UsageRecorder | None = None,
    capture: CaptureRecorder | None = None,
    judge: ExchangeObserver | None = None,
) -> Observers:
    """``remember`` is the feedback index's (``FeedbackService.remember``); ``judge`` the
    online judge's (``evals/online.py``, a layer above: handed in like ``remember``)."""
    observers: list[ExchangeObserver | None] = [
        RecordMetrics(metrics).finished,
        None if window is None else window.finished,
        remember,
        None if usage is None else usage.finished,
        AccessLog().finished,
        None if capture is None else capture.finished,
        judge,
        hand_over_pair_half,
    ]
    return Observers([observer for observer in observers if observer is not None])


def eval_observers() -> Observers:
    """What sees an eval run's call finish (the ``eval`` arm): its access log line, and
    nothing that counts traffic (metrics, analysis, feedback, usage, capture, judging)."""
    return Observers([AccessLog().finished])


def settle(exchange: Exchange) -> None:
    """The primary's last facts before it is recorded: its duration, and the error its
    status says when nothing else did (a relayed 5xx is the provider's error)."""
    if exchange.duration is None:
        exchange.duration = time.perf_counter() - exchange.started
    if exchange.error_class is None:
        exchange.error_class = error_class_for_status(exchange.status)
