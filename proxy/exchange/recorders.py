"""Metrics and the access log line of a finished exchange, primary or shadow.

Two of the observers in ``proxy.pipeline.record``. A shadow call is counted in the same
per-request families as its primary, with ``arm="shadow"``, so its tokens and latency are
counted apart; its log line is an ``event: shadow`` that joins its primary's line by
``request_id`` (outputs are never logged).
"""

from __future__ import annotations

import logging

from proxy.exchange.outcome import Exchange, status_class
from proxy.log import ACCESS_LOGGER, LINE_HEAD, direct_info_writer, milliseconds
from proxy.metrics import ProxyMetrics


class RecordMetrics:
    __slots__ = ("_metrics",)

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def finished(self, ex: Exchange) -> None:
        m = self._metrics
        # The model sent is the operator's choice (a pin, or what the client asked for); the
        # answered one is often a dated id.
        sent = ex.model_sent or ex.model_requested or ex.model_answered
        model = m.model_label(sent)
        series = m.series(
            ex.route._value_, model, ex.key, ex.version or "", ex.arm or "", ex.tier, ex.provider
        )
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


class AccessLog:
    __slots__ = ("_direct", "_log")

    def __init__(self) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)
        self._direct = direct_info_writer(self._log)

    def finished(self, ex: Exchange) -> None:
        direct = self._direct
        if direct is not None:
            build = _request_line if ex.pair_id is None else _shadow_line
            direct.write(build(ex, direct.now(), direct.logger))
        elif self._log.isEnabledFor(logging.INFO):
            fields = _shadow_line(ex, 0.0, "") if ex.is_shadow else _request_line(ex, 0.0, "")
            for key in LINE_HEAD:  # the formatter writes these itself
                del fields[key]
            self._log.info(fields)


# The whole line, head first (see ``DirectWriter``): one dict, built once.


def _request_line(ex: Exchange, ts: float, logger: str) -> dict[str, object]:
    return {
        "ts": ts,
        "level": "info",
        "logger": logger,
        "event": "request",
        "request_id": ex.request_id,
        "upstream_request_id": ex.upstream_request_id,
        "method": ex.method,
        "route": ex.route._value_,
        "slug": None if ex.key is None else ex.key.slug,
        "version": ex.version,
        "arm": ex.arm,
        "layers": ex.layers,
        "prompt_hash": ex.prompt_hash,
        "rollout_id": ex.rollout_id,
        "tenant": ex.tenant,
        "tier": ex.tier,
        "model_requested": ex.model_requested,
        "model_sent": ex.model_sent,
        "model_answered": ex.model_answered,
        "stream": ex.stream,
        "status": ex.status,
        "latency_ms": milliseconds(ex.duration or 0.0),
        "ttfb_ms": None if ex.ttfb is None else milliseconds(ex.ttfb),
        "input_tokens": ex.input_tokens,
        "output_tokens": ex.output_tokens,
        "finish_reason": ex.finish_reason,
        "error_class": ex.error_class,
    }


def _shadow_line(ex: Exchange, ts: float, logger: str) -> dict[str, object]:
    return {
        "ts": ts,
        "level": "info",
        "logger": logger,
        "event": "shadow",
        "pair_id": ex.pair_id,
        "request_id": ex.request_id,
        "route": ex.route._value_,
        "slug": None if ex.key is None else ex.key.slug,
        "version": ex.version,
        "arm": ex.arm,
        "kind": ex.shadow_kind,
        "stream": ex.stream,
        "status": ex.status,
        "latency_ms": None if ex.duration is None else milliseconds(ex.duration),
        "ttft_ms": None if ex.ttfb is None else milliseconds(ex.ttfb),
        "input_tokens": ex.input_tokens,
        "output_tokens": ex.output_tokens,
        "finish_reason": ex.finish_reason,
        "error_class": ex.error_class,
    }
