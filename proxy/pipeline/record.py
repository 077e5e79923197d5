"""Stage 6, record: one metrics update and one JSON log line per finished exchange.

Called from a ``finally`` so cancelled (client gone) and failed requests are counted too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from proxy.analysis.window import SERVED_ARMS, WindowRecorder
from proxy.log import ACCESS_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.models import Exchange


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def error_class_for_status(status: int) -> str | None:
    if status == 429:
        return "upstream_429"
    if 400 <= status < 500:
        return "upstream_4xx"
    if status >= 500:
        return "upstream_5xx"
    return None


class Recorder:
    def __init__(
        self,
        metrics: ProxyMetrics,
        window: WindowRecorder | None = None,
        answered: Callable[[Exchange], None] | None = None,
    ) -> None:
        """``answered`` sees every finished exchange (the feedback index)."""
        self._metrics = metrics
        self._window = window
        self._answered = answered
        self._log = logging.getLogger(ACCESS_LOGGER)

    def observe(self, exchange: Exchange) -> None:
        if exchange.duration is None:
            exchange.duration = time.perf_counter() - exchange.started
        if exchange.error_class is None:
            exchange.error_class = error_class_for_status(exchange.status)
        self._update_metrics(exchange)
        if self._window is not None and exchange.rollout_id is not None:
            _count_for_analysis(self._window, exchange, exchange.rollout_id)
        if self._answered is not None:
            self._answered(exchange)
        if self._log.isEnabledFor(logging.INFO):
            self._log.info(self._log_fields(exchange))

    def _update_metrics(self, ex: Exchange) -> None:
        m = self._metrics
        # The model sent is the operator's choice (a pin, or what the client asked for); the
        # answered one is often a dated id.
        sent = ex.model_sent or ex.model_requested or ex.model_answered
        model = m.model_label(sent)
        series = m.series(ex.route.value, model, ex.slug or "", ex.version or "", ex.arm or "")
        series.observe(
            status_class(ex.status),
            ex.duration or 0.0,
            ex.ttfb if ex.stream else None,
            ex.input_tokens,
            ex.output_tokens,
            ex.error_class,
            ex.finish_reason,
            m.price_of(sent),
        )

    @staticmethod
    def _log_fields(ex: Exchange) -> dict[str, object]:
        return {
            "event": "request",
            "request_id": ex.request_id,
            "upstream_request_id": ex.upstream_request_id,
            "method": ex.method,
            "route": ex.route.value,
            "slug": ex.slug,
            "version": ex.version,
            "arm": ex.arm,
            "model_requested": ex.model_requested,
            "model_sent": ex.model_sent,
            "model_answered": ex.model_answered,
            "stream": ex.stream,
            "status": ex.status,
            "latency_ms": round((ex.duration or 0.0) * 1000, 3),
            "ttfb_ms": None if ex.ttfb is None else round(ex.ttfb * 1000, 3),
            "input_tokens": ex.input_tokens,
            "output_tokens": ex.output_tokens,
            "finish_reason": ex.finish_reason,
            "error_class": ex.error_class,
        }


def _count_for_analysis(window: WindowRecorder, ex: Exchange, rollout_id: str) -> None:
    # A caller hanging up says nothing about the prompt.
    if ex.arm not in SERVED_ARMS or ex.slug is None or ex.error_class == "client_disconnected":
        return
    window.observe_call(
        ex.slug,
        rollout_id,
        ex.arm,
        failed=ex.error_class is not None,
        duration=ex.duration,
        ttft=ex.ttfb if ex.stream else None,
        output_tokens=ex.output_tokens,
        finish_reason=ex.finish_reason,
    )
