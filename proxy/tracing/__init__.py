"""Traces (docs/tracing.md): OpenTelemetry spans of each data-plane request, its provider
call, and the shadow and judge calls linked to it, exported over OTLP/HTTP.

Off by default, and then free: ``open_tracing`` returns None, OpenTelemetry is never
imported (it is the optional ``otel`` extra), and the request path's one check is that
None. ``attributes.py`` says what a span holds (pure); ``otel.py`` makes the spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config import Settings

if TYPE_CHECKING:
    from proxy.tracing.otel import Tracing


def open_tracing(settings: Settings) -> Tracing | None:
    """The process's tracer when ``tracing.enabled``, else None (nothing imported). The
    caller closes it (``Tracing.close``)."""
    config = settings.config.tracing
    endpoint = settings.tracing_endpoint
    if not config.enabled or endpoint is None:
        return None
    # Here, not at the top: importing proxy never imports OpenTelemetry.
    from proxy.tracing.otel import Tracing

    return Tracing.build(config, endpoint, settings.tracing_headers)
