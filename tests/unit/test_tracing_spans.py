"""What the spans say and how they are sampled (OpenTelemetry's in-memory exporter in
place of OTLP), and that tracing off never imports OpenTelemetry in a serving process."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags

from proxy.config import TracingConfig
from proxy.exchange.outcome import Exchange
from proxy.log import APP_LOGGER
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.providers import Provider, Providers
from proxy.tracing.attributes import exchange_attributes, request_params, server_of
from proxy.tracing.otel import Tracing, sampler
from tests.processes import free_port
from tests.support import make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(1.0), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, 1.0), exporter
    provider.shutdown()


def _exchange(**fields: object) -> Exchange:
    exchange = Exchange(request_id="r1", method="POST", route=Route.CHAT, started=0.0)
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def _provider(kind: str = "openai") -> Provider:
    settings = make_settings(
        **{
            "providers": [
                {
                    "name": "main",
                    "kind": kind,
                    "base_url": "https://api.example:8443",
                    "models": ["*"],
                }
            ],
            "upstream.base_url": None,
        }
    )
    return Providers.from_settings(settings).all[0]


def test_a_finished_exchange_says_what_the_conventions_ask() -> None:
    exchange = _exchange(
        key=PromptKey("support", variant="mini"),
        version="3",
        arm="canary",
        layers="guardrails@1,base@3",
        rollout_id="ro-1",
        tenant="acme",
        model_requested="gpt-4o",
        model_sent="gpt-4o-mini",
        model_answered="gpt-4o-mini-2024-07-18",
        input_tokens=10,
        output_tokens=20,
        finish_reason="length",
        status=200,
    )
    assert exchange_attributes(exchange) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.response.finish_reasons": ("length",),
        "http.response.status_code": 200,
        "promptproxy.prompt.slug": "support",
        "promptproxy.prompt.variant": "mini",
        "promptproxy.prompt.version": "3",
        "promptproxy.prompt.layers": "guardrails@1,base@3",
        "promptproxy.arm": "canary",
        "promptproxy.rollout.id": "ro-1",
        "promptproxy.tenant": "acme",
    }


def test_request_parameters_and_servers() -> None:
    assert request_params({"temperature": 1, "max_completion_tokens": 5, "top_p": True}) == {
        "gen_ai.request.temperature": 1.0,
        "gen_ai.request.max_tokens": 5,
    }
    assert server_of("https://api.openai.com/v1") == ("api.openai.com", 443)
    assert server_of("http://10.0.0.2:8000/v1") == ("10.0.0.2", 8000)


def test_the_call_replaces_the_callers_traceparent_and_both_spans_end(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    caller = CIMultiDictProxy(
        CIMultiDict(
            {
                "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "k=v",
            }
        )
    )
    exchange = _exchange(model_requested="gpt-4o-mini")
    trace = tracing.request(caller, exchange)
    upstream = CIMultiDict(caller)
    trace.call(exchange, _provider("anthropic"), upstream, {"max_tokens": 9})
    exchange.status, exchange.error_class = 502, "upstream_unavailable"
    trace.end(exchange)
    client, server = exporter.get_finished_spans()
    assert exchange.span == server.get_span_context()
    assert (client.kind, server.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert server.parent is not None
    assert server.parent.span_id == 0xB7AD6B7169203331
    assert upstream.getall("traceparent") == [
        f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-01"
    ]
    assert upstream.getall("tracestate") == ["k=v"]
    assert client.attributes is not None
    assert server.attributes is not None
    assert client.attributes["gen_ai.provider.name"] == "anthropic"
    assert client.attributes["server.address"] == "api.example"
    assert client.attributes["gen_ai.request.max_tokens"] == 9
    for span in (client, server):
        assert span.attributes is not None
        assert span.attributes["error.type"] == "upstream_unavailable"
        assert span.status.status_code is StatusCode.ERROR


def test_a_client_error_is_no_error_of_the_servers(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    exchange = _exchange(status=400, error_class="upstream_4xx")
    tracing.request(CIMultiDictProxy(CIMultiDict()), exchange).end(exchange)
    (server,) = exporter.get_finished_spans()
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["error.type"] == "upstream_4xx"


def _context(sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=flags)


@pytest.mark.parametrize("sampled", [True, False])
def test_a_linked_root_follows_its_request_whatever_the_ratio(sampled: bool) -> None:
    for ratio in (0.0, 1.0):
        found = sampler(ratio).should_sample(
            Context(), 0x1234, "chat", links=[Link(_context(sampled))]
        )
        wanted = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        assert found.decision is wanted


def test_other_roots_are_kept_at_the_ratio() -> None:
    assert sampler(0.0).should_sample(Context(), 0x1234, "x").decision is Decision.DROP
    assert sampler(1.0).should_sample(Context(), 0x1234, "x").decision is Decision.RECORD_AND_SAMPLE


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def app_log() -> Iterator[_Lines]:
    """The proxy's log as ``serve`` sets it up (a handler on the app's logger), and the
    SDK's logger as it was before ``Tracing.build`` routed it there."""
    app, sdk = logging.getLogger(APP_LOGGER), logging.getLogger("opentelemetry")
    saved = (sdk.handlers[:], sdk.propagate, sdk.level)
    lines = _Lines()
    app.addHandler(lines)
    yield lines
    app.removeHandler(lines)
    sdk.handlers[:], sdk.propagate = saved[0], saved[1]
    sdk.setLevel(saved[2])


def _built(**fields: object) -> Tracing:
    """The process's tracer as ``open_services`` builds it, exporting to nobody."""
    config = TracingConfig.model_validate(
        {"enabled": True, "shutdown_timeout_seconds": 1, **fields}
    )
    return Tracing.build(config, f"http://127.0.0.1:{free_port()}/v1/traces", {})


def test_a_callers_malformed_tracestate_is_one_log_line_not_one_per_request(
    app_log: _Lines,
) -> None:
    """OpenTelemetry's API warns about a malformed ``tracestate`` member on every extract:
    any caller would write a warning line per request into the proxy's log."""
    tracing = _built()
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"  # nothing to export
    for number in range(20):
        exchange = Exchange(request_id=f"r{number}", method="POST", route=Route.CHAT, started=0)
        headers = CIMultiDict({"traceparent": unsampled, "tracestate": "not a member!"})
        tracing.request(CIMultiDictProxy(headers), exchange).end(exchange)
        assert exchange.span is not None
        assert exchange.span.trace_id == 0x0AF7651916CD43DD8448EB211C80319C  # still continued
    asyncio.run(tracing.close())
    warned = [line for line in app_log.lines if "w3c identifiers" in line]
    assert len(warned) == 1, app_log.lines


_SERVE = """
import asyncio, sys
from proxy.cli import main  # everything `serve` imports
import proxy.server
from proxy.config import load_config
from proxy.services import open_services

async def run(settings):
    async with open_services(settings) as services:
        assert (services.pipeline.tracing is None) == (sys.argv[2] == "off")

overrides = {"registry.store": "embedded:" + sys.argv[1], "upstream.base_url": "http://x/v1",
             "tracing.enabled": sys.argv[2] == "on",
             "tracing.endpoint": "http://127.0.0.1:9/v1/traces",
             "tracing.shutdown_timeout_seconds": 0.5}
asyncio.run(run(load_config(None, environ={}, overrides=overrides)))
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


@pytest.mark.parametrize("state", ["off", "on"])
def test_tracing_off_never_imports_opentelemetry(tmp_path: Path, state: str) -> None:
    """A fresh interpreter, as ``serve`` runs: with tracing on (the control) OpenTelemetry
    is loaded; off, not one of its modules is."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SERVE), str(tmp_path / "r.db"), state],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    if state == "off":
        assert loaded == "[]"
    else:
        assert "'opentelemetry.sdk.trace'" in loaded


def test_the_endpoints_credentials_never_reach_the_log(app_log: _Lines) -> None:
    """A collector URL may carry basic-auth credentials (``requests`` sends them): the
    start line names the endpoint without them."""
    app = logging.getLogger(APP_LOGGER)
    level = app.level
    app.setLevel(logging.INFO)
    try:
        config = TracingConfig(enabled=True, shutdown_timeout_seconds=1)
        url = f"https://tracer:s3cret@127.0.0.1:{free_port()}/v1/traces"
        asyncio.run(Tracing.build(config, url, {}).close())
    finally:
        app.setLevel(level)
    (started,) = [line for line in app_log.lines if "OTLP/HTTP" in line]
    assert "s3cret" not in started
    assert "127.0.0.1" in started
