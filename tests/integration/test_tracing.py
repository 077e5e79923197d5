"""Traces at a real OTLP/HTTP receiver (tests/otlp_receiver.py: the official
``opentelemetry-proto`` messages) from a real proxy process with ``tracing.enabled``, the
simulator as its provider and the real openai SDK as the caller.

One request through a canary, one through a shadow rollout, a stream, and an answer
judged online: the spans, how they hang together (the caller's trace continued, the
provider call a child whose ``traceparent`` the provider gets, shadow and judge linked,
never children) and the attributes (GenAI conventions and the prompt's facts). And a
collector that is down: requests unaffected, shutdown not held up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.processes import ADMIN_ENV, ProxyProc, admin, free_port, proxy, proxy_with_token

pytestmark = pytest.mark.integration

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
TRACESTATE = "vendor=opaque"
CANARY, SHADOW, JUDGED = "canary-support", "shadow-support", "judged-support"
JUDGE = "judge.helpfulness"
MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]


def config(receiver: OtlpReceiver, sink_dir: Path) -> str:
    return (
        "tracing:\n"
        "  enabled: true\n"
        f"  endpoint: {receiver.url}\n"
        "  service_name: promptproxy-test\n"
        "  schedule_delay_seconds: 0.1\n"
        "shadow:\n"
        "  noise_share: 0\n"
        "  sink:\n"
        f"    dir: {sink_dir}\n"
        "evals:\n"
        "  online:\n"
        f"    - match: {JUDGED}\n"
        "      share: 1\n"
        "      rubric: Answers the question.\n"
        f"      judge: {JUDGE}\n"
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as found:
        yield found


@pytest.fixture(scope="module")
def traced(procs_dir: Path, sim_url: str, receiver: OtlpReceiver) -> Iterator[ProxyProc]:
    with proxy_with_token(procs_dir, sim_url, config(receiver, procs_dir / "pairs")) as proc:
        yield proc


async def _revision(proc: ProxyProc) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{proc.admin_url}/readyz") as r:
        return int((await r.json())["registry"]["revision"])


async def _push(proc: ProxyProc, slug: str, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        status, answer = await admin(proc, "POST", f"/prompts/{slug}/versions", body)
        assert status == 201, answer
    status, answer = await admin(proc, "POST", f"/prompts/{slug}/promote", {"version": 1})
    assert status == 200, answer
    await _served(proc, answer)


async def _rollout(proc: ProxyProc, slug: str, mode: str) -> str:
    """v1 prod, v2 the candidate of a 100 % ``mode`` rollout; its id, once served."""
    await _push(
        proc, slug, {"template": f"You are the {slug} prompt."}, {"template": "The candidate."}
    )
    rollout = {"candidate": 2, "mode": mode, "percent": 100, "sticky": "none"}
    status, answer = await admin(proc, "PUT", f"/prompts/{slug}/rollout", rollout)
    assert status == 201, answer
    await _served(proc, answer)
    return str(answer["id"])


async def _served(proc: ProxyProc, written: dict[str, Any]) -> None:
    """Until the data plane's snapshot has the write that answered ``written``."""
    wanted = int(written["served"]["revision"])
    for _ in range(250):
        if await _revision(proc) >= wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"revision {wanted} never reached the snapshot")


def _client(proc: ProxyProc, slug: str | None = None) -> openai.OpenAI:
    """The SDK on ``slug``'s prompt URL, or on the plain ``/v1`` (no prompt)."""
    root = proc.url.removesuffix("/v1")
    url = proc.url if slug is None else f"{root}/p/{slug}/v1"
    return openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)


def _server_span(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan | None:
    return next(
        (
            s
            for s in spans
            if s.kind == "SERVER" and s.attributes.get("promptproxy.request_id") == request_id
        ),
        None,
    )


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [
        s for s in spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
    ]


def _request_spans(
    receiver: OtlpReceiver, request_id: str
) -> tuple[ReceivedSpan, ReceivedSpan, list[ReceivedSpan]]:
    """The request's SERVER span and its one CLIENT child, once both arrived; all spans."""

    def both(spans: list[ReceivedSpan]) -> bool:
        server = _server_span(spans, request_id)
        return server is not None and len(_children(spans, server)) == 1

    spans = receiver.wait_for(both)
    server = _server_span(spans, request_id)
    assert server is not None
    (client,) = _children(spans, server)
    return server, client, spans


def _upstream_traceparents(sim_url: str) -> list[str]:
    with urllib.request.urlopen(sim_url.removesuffix("/v1") + "/_sim/requests", timeout=5) as r:
        entries = orjson.loads(r.read())
    return [e["headers"].get("traceparent", "") for e in entries]


def _upstream_headers(sim_url: str, span: ReceivedSpan) -> dict[str, str]:
    """The headers of the provider request whose ``traceparent`` names ``span``."""
    with urllib.request.urlopen(sim_url.removesuffix("/v1") + "/_sim/requests", timeout=5) as r:
        entries = orjson.loads(r.read())
    wanted = [span.trace_id, span.span_id]
    found = [e["headers"] for e in entries if _names(e["headers"].get("traceparent")) == wanted]
    assert len(found) == 1, f"{wanted} among {_upstream_traceparents(sim_url)}"
    return dict(found[0])


def _names(traceparent: str | None) -> list[str] | None:
    """The trace and parent span a sampled ``traceparent`` names (its flags say sampled;
    a trace id the proxy made also has the random bit, W3C Trace Context level 2)."""
    if traceparent is None:
        return None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1, traceparent
    return [trace_id, span_id]


async def test_a_canary_request_continues_the_callers_trace_and_its_provider_call_is_a_child(
    traced: ProxyProc, receiver: OtlpReceiver, sim_url: str
) -> None:
    rollout_id = await _rollout(traced, CANARY, "canary")
    raw = _client(traced, CANARY).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0.5,
        max_tokens=64,
        extra_headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )
    answer = raw.parse()
    request_id = raw.headers["x-promptproxy-request-id"]
    assert raw.headers["x-prompt-arm"] == "canary"
    server, client, _ = _request_spans(receiver, request_id)

    # The caller's trace is continued: same trace, the caller's span the parent.
    assert (server.trace_id, server.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert server.name == "POST /v1/chat/completions"
    assert server.resource["service.name"] == "promptproxy-test"
    assert client.kind == "CLIENT"
    assert client.name == "chat gpt-4o-mini"
    assert client.start_ns >= server.start_ns
    assert client.end_ns <= server.end_ns
    # The provider sees its parent, the proxy's call, and the caller's trace state.
    upstream = _upstream_headers(sim_url, client)
    assert upstream["tracestate"] == TRACESTATE

    usage = answer.usage
    assert usage is not None
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": answer.model,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.finish_reasons": (answer.choices[0].finish_reason,),
        "http.response.status_code": 200,
        "promptproxy.prompt.slug": CANARY,
        "promptproxy.prompt.version": "2",
        "promptproxy.prompt.layers": raw.headers["x-prompt-layers"],
        "promptproxy.arm": "canary",
        "promptproxy.rollout.id": rollout_id,
        "promptproxy.provider": "upstream",
    }
    assert {k: server.attributes.get(k) for k in expected} == expected
    # The call's span says what the call was; the prompt's facts are its parent's.
    prompts = ("promptproxy.prompt.", "promptproxy.arm", "promptproxy.rollout.")
    on_the_call = {k: v for k, v in expected.items() if not k.startswith(prompts)}
    assert {k: client.attributes.get(k) for k in on_the_call} == on_the_call
    assert "promptproxy.prompt.slug" not in client.attributes
    for span in (server, client):
        assert "error.type" not in span.attributes
        assert not span.status_error
    assert client.attributes["gen_ai.request.temperature"] == 0.5
    assert client.attributes["gen_ai.request.max_tokens"] == 64
    sim_port = int(sim_url.split(":")[2].split("/")[0])
    assert (client.attributes["server.address"], client.attributes["server.port"]) == (
        "127.0.0.1",
        sim_port,
    )


async def test_without_a_callers_traceparent_the_request_starts_a_trace(
    traced: ProxyProc, receiver: OtlpReceiver, sim_url: str
) -> None:
    raw = _client(traced).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    request_id = raw.headers["x-promptproxy-request-id"]
    server, client, _ = _request_spans(receiver, request_id)
    assert server.parent_span_id == ""
    assert server.trace_id != CALLER_TRACE
    assert "tracestate" not in _upstream_headers(sim_url, client)


async def test_a_shadow_call_is_linked_to_the_request_span_not_its_child(
    traced: ProxyProc, receiver: OtlpReceiver, sim_url: str
) -> None:
    rollout_id = await _rollout(traced, SHADOW, "shadow")
    raw = _client(traced, SHADOW).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )
    request_id = raw.headers["x-promptproxy-request-id"]
    server, client, _ = _request_spans(receiver, request_id)
    assert server.attributes["promptproxy.arm"] == "stable"
    assert server.attributes["promptproxy.rollout.id"] == rollout_id

    def shadow_of(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.attributes.get("promptproxy.arm") == "shadow"
            and any(link.span_id == server.span_id for link in s.links)
        ]

    (shadow,) = shadow_of(receiver.wait_for(lambda spans: len(shadow_of(spans)) == 1))
    # Its own trace, linked: the request's span ended when the caller had the answer.
    assert shadow.kind == "CLIENT"
    assert shadow.trace_id not in (server.trace_id, CALLER_TRACE)
    assert shadow.parent_span_id == ""
    (link,) = shadow.links
    assert (link.trace_id, link.span_id) == (server.trace_id, server.span_id)
    assert link.attributes == {"promptproxy.link.type": "shadow_of"}
    assert shadow.attributes["promptproxy.prompt.slug"] == SHADOW
    assert shadow.attributes["promptproxy.prompt.version"] == "2"
    assert shadow.attributes["promptproxy.rollout.id"] == rollout_id
    assert shadow.attributes["promptproxy.shadow.kind"] == "candidate"
    assert shadow.attributes["gen_ai.operation.name"] == "chat"
    assert shadow.attributes["gen_ai.usage.output_tokens"] > 0
    # The shadow's provider request names the shadow's span, not the caller's or the
    # primary's call, and carries no trace state of the caller's trace.
    upstream = _upstream_headers(sim_url, shadow)
    assert "tracestate" not in upstream
    assert _upstream_headers(sim_url, client)["tracestate"] == TRACESTATE


async def test_a_streamed_answers_spans_end_with_the_stream(
    traced: ProxyProc, receiver: OtlpReceiver
) -> None:
    chunks, gap_ms = 6, 50
    stream = _client(traced).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={
            "traceparent": TRACEPARENT,
            "x-sim-chunks": str(chunks),
            "x-sim-chunk-delay-ms": str(gap_ms),
        },
    )
    request_id = stream.headers["x-promptproxy-request-id"]
    finish, usage = None, None
    for chunk in stream.parse():
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        usage = chunk.usage or usage
    assert usage is not None
    assert finish is not None
    server, client, _ = _request_spans(receiver, request_id)
    # The stream's events came (chunks - 1) gaps apart: both spans cover all of them.
    streamed_ns = (chunks - 1) * gap_ms * 1_000_000
    assert client.end_ns - client.start_ns >= streamed_ns
    assert server.end_ns >= client.end_ns
    ((name, first_byte),) = server.events
    assert name == "first byte"
    assert server.start_ns < first_byte < server.end_ns - streamed_ns // 2
    assert server.attributes["promptproxy.time_to_first_byte"] > 0
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert server.attributes["gen_ai.response.finish_reasons"] == (finish,)


async def test_an_online_judge_call_is_linked_to_the_judged_request(
    traced: ProxyProc, receiver: OtlpReceiver
) -> None:
    judge = {
        "template": "Grade against: {{ rubric }}. Reply with JSON.",
        "model": "sim-judge",
        "variables": [{"name": "rubric", "type": "string"}],
    }
    await _push(traced, JUDGE, judge)
    await _push(traced, JUDGED, {"template": "You answer support questions."})
    raw = _client(traced, JUDGED).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    server, _, _ = _request_spans(receiver, raw.headers["x-promptproxy-request-id"])

    def judged(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == f"judge {JUDGE}" and any(k.span_id == server.span_id for k in s.links)
        ]

    def with_its_call(spans: list[ReceivedSpan]) -> bool:
        found = judged(spans)
        return len(found) == 1 and any(s.kind == "SERVER" for s in _children(spans, found[0]))

    spans = receiver.wait_for(with_its_call)
    (judge_span,) = judged(spans)
    assert judge_span.trace_id != server.trace_id
    assert judge_span.parent_span_id == ""
    assert judge_span.links[0].attributes == {"promptproxy.link.type": "judge_of"}
    assert judge_span.attributes["promptproxy.prompt.slug"] == JUDGED
    assert judge_span.attributes["promptproxy.judge.slug"] == JUDGE
    assert judge_span.attributes["promptproxy.judge.version"] == 1
    assert 0 <= judge_span.attributes["promptproxy.judge.score"] <= 1
    # The judge's own call through the data plane continues the judge's trace.
    (call,) = [s for s in _children(spans, judge_span) if s.kind == "SERVER"]
    assert call.attributes["promptproxy.arm"] == "eval"
    assert call.attributes["promptproxy.prompt.slug"] == JUDGE


def test_a_collector_that_is_down_costs_requests_nothing_and_shutdown_is_bounded(
    procs_dir: Path, sim_url: str
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/v1/traces"
    text = (
        "tracing:\n  enabled: true\n"
        f"  endpoint: {nobody}\n"
        "  schedule_delay_seconds: 0.05\n"
        "  export_timeout_seconds: 30\n"
        "  shutdown_timeout_seconds: 1\n"
    )
    grace = 15.0  # the exporter retries for 30 s; the shutdown gives it 1 s
    with proxy(procs_dir, sim_url, text, env=ADMIN_ENV) as proc:
        client = openai.OpenAI(base_url=proc.url, api_key="sk-test", max_retries=0)
        for _ in range(20):
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert answer.choices[0].message.content
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {grace}s after SIGTERM (log: {proc.log_path})")
        assert code == 0, proc.log_path.read_text()[-2000:]
    # The exporter was still retrying (for 30 s): the bound, not the collector, ended it.
    given_up = [
        line
        for line in proc.log_lines()
        if "not exported within 1s of shutdown" in str(line.get("msg"))
    ]
    assert len(given_up) == 1
