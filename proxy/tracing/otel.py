"""The spans, with OpenTelemetry's SDK: imported only when ``tracing.enabled`` (the ``otel``
extra), never by importing ``proxy``.

- ``RequestTrace``: a data-plane request's SERVER span (the caller's W3C ``traceparent``
  and ``tracestate`` continued), and its provider call's CLIENT span, a child, whose own
  ``traceparent`` replaces the caller's on the upstream request (the provider sees its
  parent: the proxy's call).
- ``ShadowTrace`` and ``JudgeTrace``: a shadow copy's call and an online judge's call,
  each the root of its own trace with a *link* to the request's span: they end after the
  caller has its answer, so they are never children that would stretch the request's.

Spans are ended on the loop and queued; the SDK's ``BatchSpanProcessor`` exports them from
its own thread over OTLP/HTTP. The request path never waits on an export, and a full
queue drops spans (the SDK logs it) rather than grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes as OtelAttributes

from proxy import __version__
from proxy.config import TracingConfig
from proxy.exchange.outcome import Exchange
from proxy.log import APP_LOGGER
from proxy.providers import Provider
from proxy.tracing.attributes import (
    ERROR_TYPE,
    HTTP_METHOD,
    HTTP_ROUTE,
    OPERATION,
    PROVIDER,
    PROVIDER_NAME,
    REQUEST_ID,
    REQUEST_MODEL,
    SERVER_ADDRESS,
    SERVER_PORT,
    Attributes,
    answer_attributes,
    client_span_name,
    exchange_attributes,
    http_route,
    operation,
    prompt_attributes,
    provider_api,
    request_params,
    server_of,
    server_span_name,
)

_log = logging.getLogger(APP_LOGGER)

#: What a linked span says its link is.
LINK_TYPE = "promptproxy.link.type"
JUDGE_SLUG = "promptproxy.judge.slug"
JUDGE_VERSION = "promptproxy.judge.version"
JUDGE_SCORE = "promptproxy.judge.score"
_TRACE_HEADERS = ("traceparent", "tracestate")


class LinkedOrRatio(Sampler):
    """The root sampler: a span linked to a request's (a shadow or judge call) is kept
    exactly when that request's span was, so a kept request keeps its shadow and judge;
    any other root is kept at the configured ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: OtelAttributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if links:
            kept = any(link.context.trace_flags.sampled for link in links)
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE if kept else Decision.DROP,
                attributes if kept else None,
            )
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"LinkedOrRatio{{{self._ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """A caller's sampled flag decides for its trace; roots are ``LinkedOrRatio``."""
    return ParentBased(root=LinkedOrRatio(ratio))


#: One line per kind of OpenTelemetry warning within this many seconds.
_WARNING_WINDOW_SECONDS = 60.0


class _OncePerWindow(logging.Filter):
    """Lets a message through at most once per window, keyed by its template (never its
    arguments, which a caller chooses): the API warns about a caller's malformed
    ``tracestate`` on every request, which would be a warning line per request."""

    def __init__(self, window: float) -> None:
        super().__init__()
        self._window = window
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)  # hashable whatever was logged: this runs in span.end
        now = time.monotonic()
        last = self._last.get(template)
        if last is not None and now - last < self._window:
            return False
        if len(self._last) >= 64:  # bounded: templates are the library's, a few
            self._last.clear()
        self._last[template] = now
        return True


class _ToAppLog(logging.Handler):
    """Hands OpenTelemetry's records, thinned by ``_OncePerWindow``, to the proxy's own
    handlers."""

    def __init__(self, targets: Sequence[logging.Handler]) -> None:
        super().__init__(logging.WARNING)
        self._targets = tuple(targets)
        self.addFilter(_OncePerWindow(_WARNING_WINDOW_SECONDS))

    def emit(self, record: logging.LogRecord) -> None:
        for target in self._targets:
            if record.levelno >= target.level:
                target.handle(record)


def _sdk_warnings_in_the_log() -> None:
    """The SDK's warnings (a full queue, a failed export) as the proxy's own JSON lines,
    as ``setup_logging`` routes aiohttp's, instead of bare text on stderr; each kind at
    most once a minute."""
    app = logging.getLogger(APP_LOGGER)
    if not app.handlers:  # logging not set up (an embedding, a test): leave it alone
        return
    sdk = logging.getLogger("opentelemetry")
    sdk.handlers[:] = [_ToAppLog(app.handlers)]
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False


def _without_credentials(url: str) -> str:
    """``url`` with no ``user:password@`` (basic auth a collector may take in the URL)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _in(span: Span) -> Context:
    """A context holding ``span`` alone: never the loop's current one (nothing here is
    attached to contextvars, so no request's context leaks into another's)."""
    return trace.set_span_in_context(span, Context())


def _end(span: Span, attributes: Attributes, error: str | None, failed: bool) -> None:
    span.set_attributes(attributes)
    if failed:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


class Tracing:
    """The process's tracer: built once by ``open_services`` when tracing is enabled,
    shut down (bounded) when services close."""

    def __init__(self, provider: TracerProvider, shutdown_timeout: float) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("promptproxy", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._shutdown_timeout = shutdown_timeout
        #: ``server.address`` and ``server.port`` per base URL (a few providers).
        self._servers: dict[str, tuple[str, int]] = {}

    @classmethod
    def build(cls, config: TracingConfig, endpoint: str, headers: Mapping[str, str]) -> Tracing:
        exporter = OTLPSpanExporter(
            endpoint=endpoint, headers=dict(headers), timeout=config.export_timeout_seconds
        )
        provider = TracerProvider(
            sampler=sampler(config.sample_ratio),
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            # Closed by ``close`` with a bound: the SDK's exit hook would wait up to 30 s
            # on a collector that is down.
            shutdown_on_exit=False,
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=config.max_queue_size,
                max_export_batch_size=config.max_export_batch_size,
                schedule_delay_millis=config.schedule_delay_seconds * 1000,
                export_timeout_millis=config.export_timeout_seconds * 1000,
            )
        )
        _sdk_warnings_in_the_log()
        _log.info("tracing: spans exported over OTLP/HTTP to %s", _without_credentials(endpoint))
        return cls(provider, config.shutdown_timeout_seconds)

    def server_of(self, base_url: str) -> tuple[str, int]:
        found = self._servers.get(base_url)
        if found is None:
            if len(self._servers) >= 256:  # bounded: base URLs come from the config
                self._servers.clear()
            found = self._servers[base_url] = server_of(base_url)
        return found

    def request(self, headers: Mapping[str, str], exchange: Exchange) -> RequestTrace:
        """Start a data-plane request's SERVER span, continuing the caller's trace."""
        parent = self._propagator.extract(headers, Context())
        span = self._tracer.start_span(
            server_span_name(exchange.route, exchange.method),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                HTTP_METHOD: exchange.method,
                HTTP_ROUTE: http_route(exchange.route),
                REQUEST_ID: exchange.request_id,
            },
        )
        context = span.get_span_context()
        exchange.span = context
        return RequestTrace(self, span)

    def client_span(
        self,
        exchange: Exchange,
        provider: str | None,
        api: str,
        base_url: str | None,
        payload: Mapping[str, Any] | None,
        parent: Context,
        links: Sequence[Link] = (),
    ) -> Span:
        model = exchange.model_sent or exchange.model_requested
        attributes: Attributes = {PROVIDER: api, **request_params(payload)}
        op = operation(exchange.route)
        if op is not None:
            attributes[OPERATION] = op
        if model:
            attributes[REQUEST_MODEL] = model
        if provider is not None:
            attributes[PROVIDER_NAME] = provider
        if base_url is not None:
            attributes[SERVER_ADDRESS], attributes[SERVER_PORT] = self.server_of(base_url)
        return self._tracer.start_span(
            client_span_name(exchange.route, exchange.method, model),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=links,
        )

    def inject(self, span: Span, headers: CIMultiDict[str]) -> None:
        """``span``'s ``traceparent`` (and ``tracestate``) in place of any the headers
        carry: the callee's parent is the call it gets."""
        for name in _TRACE_HEADERS:
            headers.popall(name, None)
        self._propagator.inject(headers, _in(span))

    def shadow(
        self,
        link: SpanContext | None,
        exchange: Exchange,
        api: str,
        base_url: str | None,
        headers: CIMultiDict[str],
    ) -> ShadowTrace:
        """A shadow call's CLIENT span, linked to its request's span; its
        ``traceparent`` goes in ``headers``."""
        links = (Link(link, {LINK_TYPE: "shadow_of"}),) if link is not None else ()
        span = self.client_span(exchange, exchange.provider, api, base_url, None, Context(), links)
        self.inject(span, headers)
        return ShadowTrace(span)

    def judge(
        self,
        link: SpanContext | None,
        attributes: Attributes,
        judge_slug: str,
        judge_version: int,
    ) -> JudgeTrace:
        """An online judge's call, linked to the judged request's span: the judge's own
        data-plane request continues from it (``JudgeTrace.headers``)."""
        links = (Link(link, {LINK_TYPE: "judge_of"}),) if link is not None else ()
        span = self._tracer.start_span(
            f"judge {judge_slug}",
            context=Context(),
            kind=SpanKind.CLIENT,
            attributes={
                **attributes,
                JUDGE_SLUG: judge_slug,
                JUDGE_VERSION: judge_version,
            },
            links=links,
        )
        headers: CIMultiDict[str] = CIMultiDict()
        self._propagator.inject(headers, _in(span))
        return JudgeTrace(span, dict(headers))

    async def close(self) -> None:
        """Flush what is queued and stop the exporter, giving up after
        ``tracing.shutdown_timeout_seconds``: a collector that is down never holds up
        shutdown. The SDK's shutdown blocks, so it runs on a thread of its own (a daemon:
        the default executor would be joined at exit, however long it takes)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            except Exception:
                _log.exception("tracing: the exporter failed to shut down")
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        try:
            async with asyncio.timeout(self._shutdown_timeout):
                await done
        except TimeoutError:
            _log.warning(
                "tracing: spans not exported within %gs of shutdown were dropped",
                self._shutdown_timeout,
            )


class RequestTrace:
    """One data-plane request's spans: the SERVER span, and the CLIENT span of its call
    to the provider once it is made."""

    __slots__ = ("_client", "_server", "_tracing")

    def __init__(self, tracing: Tracing, server: Span) -> None:
        self._tracing = tracing
        self._server = server
        self._client: Span | None = None

    def call(
        self,
        exchange: Exchange,
        provider: Provider,
        headers: CIMultiDict[str],
        payload: Mapping[str, Any] | None,
    ) -> None:
        """The provider call starts: its CLIENT span, a child of the request's, and its
        ``traceparent`` in the upstream request's ``headers``."""
        tracing = self._tracing
        client = tracing.client_span(
            exchange,
            provider.name,
            provider_api(provider),
            provider.base_url,
            payload,
            _in(self._server),
        )
        self._client = client
        tracing.inject(client, headers)
        self._server.set_attribute(PROVIDER, provider_api(provider))

    def end(self, exchange: Exchange) -> None:
        """The exchange finished (its answer relayed whole, or failed): both spans end."""
        attributes = answer_attributes(exchange)
        error = exchange.error_class
        client = self._client
        if client is not None:
            _end(client, attributes, error, error is not None)
        attributes.update(prompt_attributes(exchange))
        server = self._server
        if exchange.model_requested:
            # The caller's view: the model asked for (a prompt's pin is the call's).
            attributes[REQUEST_MODEL] = exchange.model_requested
        if exchange.ttfb is not None:
            start = getattr(server, "start_time", None)
            if isinstance(start, int):
                server.add_event("first byte", timestamp=start + int(exchange.ttfb * 1e9))
        status = exchange.status
        failed = status >= 500 or (error is not None and (status < 400 or status == 0))
        _end(server, attributes, error, failed)


class ShadowTrace:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, exchange: Exchange) -> None:
        attributes = exchange_attributes(exchange)
        error = exchange.error_class
        _end(self._span, attributes, error, error is not None)


class JudgeTrace:
    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: dict[str, str]) -> None:
        self._span = span
        #: ``traceparent`` (and ``tracestate``) for the judge's own call.
        self.headers = headers

    def end(self, score: float | None, error: str | None) -> None:
        attributes: Attributes = {}
        if score is not None:
            attributes[JUDGE_SCORE] = score
        if error is not None:
            attributes[ERROR_TYPE] = error
        _end(self._span, attributes, error, error is not None)
