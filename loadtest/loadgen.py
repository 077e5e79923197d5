"""Async HTTP load generator: N concurrent clients on keep-alive connections.

Each phase sends a fixed number of requests and stops by itself: every request has a
timeout, the phase has a deadline, and a flood of errors ends it early. Full bodies are
always read, so no connection is left with unread bytes and a stream's latency is the
time to its last byte. For streams the time to the first body chunk is recorded too.

Library: ``async with LoadGenerator(spec, clients=16) as gen: result = await gen.run(1000)``.
CLI: ``python loadtest/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

#: Returns None when a response is acceptable, else a short reason.
Validator = Callable[[int, bytes], str | None]

# What openai-python 1.x sends besides the body; header copying is part of a proxy's cost.
SDK_HEADERS: Mapping[str, str] = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "AsyncOpenAI/Python 1.54.0",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.54.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.9",
    "X-Stainless-Async": "async:asyncio",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "Authorization": "Bearer sk-proj-loadtest0000000000000000000000000000000000",
}

_MESSAGES = (
    {
        "role": "system",
        "content": "You are a concise assistant for an online bookshop. "
        "Answer in at most three sentences and never invent titles.",
    },
    {
        "role": "user",
        "content": "Which fantasy novel would you recommend for a long train journey?",
    },
)

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request, sent identically by every client (bytes encoded once, up front)."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    stream: bool
    validate: Validator
    #: The SSE event count ``validate`` insists on (for generators that check on their own).
    expected_events: int | None = None


def chat_body(*, stream: bool, model: str = "gpt-4o-mini") -> bytes:
    """A small chat completion body, keys in the order the openai SDK sends them."""
    payload: dict[str, Any] = {"messages": list(_MESSAGES), "model": model, "temperature": 0.2}
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def default_validator(stream: bool, expected_events: int | None = None) -> Validator:
    """200, a JSON object or a stream ending in ``[DONE]`` (with an exact event count if given).

    The event count catches a proxy that leaks the usage chunk it injected, or drops events.
    """

    def validate(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:120]!r}"
        if not stream:
            return None if body.startswith(b"{") and b'"choices"' in body else "not a chat body"
        if not body.endswith(_DONE):
            return f"stream does not end with [DONE]: ...{body[-80:]!r}"
        if expected_events is not None:
            events = body.count(b"data: ")
            if events != expected_events:
                return f"{events} SSE events, expected {expected_events}"
        return None

    return validate


def chat_request(
    url: str,
    *,
    stream: bool,
    extra_headers: Mapping[str, str] | None = None,
    expected_events: int | None = None,
    model: str | None = None,
) -> RequestSpec:
    """``model``: None sends ``chat_body``'s default (``gpt-4o-mini``)."""
    headers = {**SDK_HEADERS, **(extra_headers or {})}
    return RequestSpec(
        url=url,
        body=chat_body(stream=stream) if model is None else chat_body(stream=stream, model=model),
        headers=headers,
        stream=stream,
        validate=default_validator(stream, expected_events),
        expected_events=expected_events,
    )


@dataclass(slots=True)
class PhaseResult:
    """What one ``run`` observed. Latencies are seconds, in completion order."""

    requested: int
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    ttfbs_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    stopped_early: str | None = None
    #: Percentiles computed by the generator itself (wrk reports these, not samples).
    latency_ms: dict[str, float] | None = None

    @property
    def completed(self) -> int:
        return self.ok + self.errors

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize_ms(values_s: Sequence[float]) -> dict[str, float] | None:
    if not values_s:
        return None
    ordered = sorted(values_s)
    stats = {f"p{int(q * 100)}": percentile(ordered, q) * 1000 for q in (0.5, 0.9, 0.99)}
    stats["mean"] = sum(ordered) / len(ordered) * 1000
    stats["max"] = ordered[-1] * 1000
    return stats


class LoadGenerator:
    """A pool of ``clients`` keep-alive connections sending ``spec`` over and over."""

    def __init__(
        self,
        spec: RequestSpec,
        *,
        clients: int,
        request_timeout_s: float = 30.0,
    ) -> None:
        if clients < 1:
            raise ValueError("clients must be >= 1")
        self._spec = spec
        self._clients = clients
        self._request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        # Exactly one connection per client; they are reused from phase to phase.
        connector = aiohttp.TCPConnector(limit=self._clients, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self._request_timeout_s),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(
        self,
        count: int,
        *,
        max_seconds: float = 300.0,
        max_errors: int | None = None,
    ) -> PhaseResult:
        """Send ``count`` requests with all clients busy; return when all are answered.

        Stops issuing new requests after ``max_seconds`` or ``max_errors`` (default: 100 or
        10% of ``count``, whichever is larger), so a broken target ends the phase quickly.
        """
        if self._session is None:
            raise RuntimeError("use `async with LoadGenerator(...)`")
        result = PhaseResult(requested=count)
        limit = max_errors if max_errors is not None else max(100, count // 10)
        tickets = iter(range(count))
        started = time.perf_counter()
        deadline = started + max_seconds
        workers = [
            self._worker(self._session, tickets, result, deadline, limit)
            for _ in range(min(self._clients, count))
        ]
        # The per-request timeout bounds in-flight work after the deadline; this is a backstop.
        async with asyncio.timeout(max_seconds + self._request_timeout_s + 5):
            await asyncio.gather(*workers)
        result.elapsed_s = time.perf_counter() - started
        if result.stopped_early is None and result.completed < count:
            result.stopped_early = "deadline"
        return result

    async def _worker(
        self,
        session: aiohttp.ClientSession,
        tickets: Iterator[int],
        result: PhaseResult,
        deadline: float,
        max_errors: int,
    ) -> None:
        spec = self._spec
        perf = time.perf_counter
        for _ in tickets:
            if result.stopped_early is not None:
                return
            if perf() > deadline:
                result.stopped_early = "deadline"
                return
            started = perf()
            ttfb: float | None = None
            latency = 0.0
            try:
                async with session.post(spec.url, data=spec.body, headers=spec.headers) as resp:
                    status = resp.status
                    if spec.stream:
                        first = await resp.content.readany()
                        ttfb = perf() - started
                        parts = [first]
                        while chunk := await resp.content.readany():
                            parts.append(chunk)
                        body = b"".join(parts)
                    else:
                        body = await resp.read()
                latency = perf() - started
                problem = spec.validate(status, body)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                result.ok += 1
                result.latencies_s.append(latency)
                if ttfb is not None:
                    result.ttfbs_s.append(ttfb)
                continue
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(problem)
            if result.errors >= max_errors:
                result.stopped_early = f"{result.errors} errors"
                return


def _phase_report(result: PhaseResult) -> dict[str, Any]:
    return {
        "requested": result.requested,
        "ok": result.ok,
        "errors": result.errors,
        "error_samples": result.error_samples,
        "stopped_early": result.stopped_early,
        "elapsed_s": round(result.elapsed_s, 3),
        "rps": round(result.rps, 1),
        "latency_ms": summarize_ms(result.latencies_s),
        "ttfb_ms": summarize_ms(result.ttfbs_s),
    }


async def _cli_main(args: argparse.Namespace) -> dict[str, Any]:
    sim_headers = {
        "x-sim-first-byte-ms": str(args.first_byte_ms),
        "x-sim-chunk-delay-ms": str(args.chunk_delay_ms),
        "x-sim-chunks": str(args.chunks),
    }
    spec = chat_request(args.url, stream=args.stream, extra_headers=sim_headers)
    async with LoadGenerator(spec, clients=args.clients) as gen:
        await gen.run(args.warmup, max_seconds=args.max_seconds)
        result = await gen.run(args.requests, max_seconds=args.max_seconds)
    return _phase_report(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="full URL of the chat completions route")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--first-byte-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per phase")
    args = parser.parse_args(argv)
    import uvloop

    report = uvloop.run(_cli_main(args))
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
