"""An OTLP/HTTP trace receiver for tests and benchmarks: the official ``opentelemetry-proto``
messages (``ExportTraceServiceRequest``, protobuf over HTTP, as the OpenTelemetry Collector
takes them on :4318/v1/traces) decoded by a small HTTP server on a thread, every span kept.

Neither the Collector (a Go binary) nor a backend that would start in seconds installs
from PyPI here, so this is the receiving end: it answers as a collector does, and what it
keeps is what a collector would have forwarded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"
_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    item: KeyValue
    for item in pairs:
        found[item.key] = _value(item.value)
    return found


@dataclass(frozen=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it; ids in lowercase hex, as in ``traceparent``."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: tuple[SpanLink, ...]
    events: tuple[tuple[str, int], ...]
    status_error: bool
    resource: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, span: Span, resource: dict[str, Any]) -> ReceivedSpan:
        return cls(
            name=span.name,
            kind=_KINDS.get(span.kind, str(span.kind)),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            attributes=_attributes(span.attributes),
            links=tuple(
                SpanLink(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
                for link in span.links
            ),
            events=tuple((event.name, event.time_unix_nano) for event in span.events),
            status_error=span.status.code == Status.STATUS_CODE_ERROR,
            resource=resource,
        )


class OtlpReceiver:
    """Collects the spans of every export request it is sent."""

    def __init__(self, server: ThreadingHTTPServer, *, lazy: bool = False) -> None:
        """``lazy``: keep the bodies and decode them when asked (a benchmark's receiver
        does no more work per export than reading it)."""
        self._server = server
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._bodies: list[bytes] = []
        self._lazy = lazy
        self.requests = 0

    @property
    def url(self) -> str:
        """The traces endpoint (``tracing.endpoint``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{TRACES_PATH}"

    def add(self, body: bytes) -> None:
        if self._lazy:
            with self._lock:
                self._bodies.append(body)
                self.requests += 1
            return
        self._decode(body)

    def _decode(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = [
            ReceivedSpan.of(span, _attributes(resource_spans.resource.attributes))
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(spans)
            if not self._lazy:
                self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            bodies, self._bodies = self._bodies, []
        for body in bodies:
            self._decode(body)
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """The spans once ``found`` says they are all there (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(spans)} spans, not the ones awaited")
            time.sleep(0.05)


def _handler(receiver: Callable[[], OtlpReceiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            """``/stats``: requests and spans received (the benchmark's count)."""
            found = receiver()
            spans = found.spans()
            stats = {"requests": found.requests, "spans": len(spans)}
            self._answer(200, json.dumps(stats).encode())

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != TRACES_PATH:
                self._answer(404, b"")
                return
            receiver().add(body)
            self._answer(200, ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read the spans, not the access log

    return Handler


@contextlib.contextmanager
def otlp_receiver(*, lazy: bool = False) -> Iterator[OtlpReceiver]:
    """A receiver on a free port of 127.0.0.1, stopped on exit."""
    holder: list[OtlpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(lambda: holder[0]))
    server.daemon_threads = True
    holder.append(OtlpReceiver(server, lazy=lazy))
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main() -> None:
    """``python -m tests.otlp_receiver``: a receiver process of its own (the benchmark's,
    off the load generator's interpreter); says its URL, serves until killed."""
    with otlp_receiver(lazy=True) as receiver:
        print(f"otlp receiver listening on {receiver.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
