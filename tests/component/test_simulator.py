"""The simulated provider over HTTP: in-process TestServer, raw aiohttp and the real openai SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from proxy.simulator import (
    SimulatorSettings,
    build_simulator_app,
    serve_simulator,
    start_simulator,
)

pytestmark = pytest.mark.timeout(10)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

CHAT = "/v1/chat/completions"
USER: list[Any] = [{"role": "user", "content": "Hi there"}]
CHAT_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": USER}
RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(**settings: Any) -> Client:
        client = TestClient(TestServer(build_simulator_app(SimulatorSettings(**settings))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    """A real listening simulator, as the CLI and the benchmarks run it."""
    runner, port = await start_simulator("127.0.0.1", 0, SimulatorSettings(chunks=4))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def sdk(sim_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="x", max_retries=0, timeout=5)
    try:
        yield client
    finally:
        await client.close()


def sse_data(text: str) -> list[Any]:
    """Parse an SSE body strictly: every event is exactly ``data: <json>\\n\\n``."""
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ")
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


async def read_into(resp: aiohttp.ClientResponse, sink: bytearray) -> None:
    """Read a body into ``sink`` so a test still sees the bytes that came before an error."""
    async for data in resp.content.iter_any():
        sink += data


async def collect_into(stream: AsyncIterator[Any], sink: list[Any]) -> None:
    async for item in stream:
        sink.append(item)


# --- chat completions ---------------------------------------------------------------------


async def test_chat_answer_echoes_model_and_counts_usage(client: Client) -> None:
    resp = await client.post(CHAT, json=CHAT_BODY)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) == len("chatcmpl-") + 24
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"].startswith("Simulated answer to: Hi there")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 2
    assert usage["completion_tokens"] == len(message["content"].split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_identical_requests_get_byte_identical_bodies(client: Client) -> None:
    for body in (CHAT_BODY, {**CHAT_BODY, "stream": True}):
        first = await client.post(CHAT, json=body)
        second = await client.post(CHAT, data=orjson.dumps(body))
        assert await first.read() == await second.read()
        assert first.headers["x-request-id"] != second.headers["x-request-id"]
    other = await (await client.post(CHAT, json={**CHAT_BODY, "model": "gpt-4o"})).json()
    same = await (await client.post(CHAT, json=CHAT_BODY)).json()
    assert other["id"] != same["id"]


async def test_every_response_carries_request_id_and_processing_time(client: Client) -> None:
    ids = set()
    for method, path, body in (
        ("POST", CHAT, CHAT_BODY),
        ("GET", "/v1/models", None),
        ("POST", CHAT, {"model": "sim-status-500", "messages": USER}),
        ("GET", "/v1/unknown", None),
    ):
        resp = await client.request(method, path, json=body)
        request_id = resp.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert int(resp.headers["openai-processing-ms"]) >= 0
        ids.add(request_id)
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, CHAT_BODY),
        (CHAT, {**CHAT_BODY, "stream": True}),
        ("/v1/completions", {"model": "m", "prompt": "hi"}),
        ("/v1/responses", {"model": "m", "input": "hi"}),
    ],
)
async def test_generation_endpoints_send_rate_limit_headers(
    client: Client, path: str, body: dict[str, Any]
) -> None:
    resp = await client.post(path, json=body)
    assert resp.status == 200
    for name in RATE_LIMIT_HEADERS:
        assert resp.headers[name]
    assert int(resp.headers["x-ratelimit-remaining-requests"]) > 0


async def test_stream_is_well_formed_sse(client: Client) -> None:
    resp = await client.post(CHAT, json={**CHAT_BODY, "stream": True})
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["cache-control"] == "no-cache"
    events = sse_data(await resp.text())
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert all("usage" not in e for e in events[:-1])


async def test_stream_writes_one_event_per_http_chunk(client: Client) -> None:
    # A proxy relays chunk by chunk, so each event must arrive in its own transfer chunk.
    resp = await client.post(CHAT, json={**CHAT_BODY, "stream": True})
    chunks: list[bytes] = []
    pending = b""
    async for data, end_of_chunk in resp.content.iter_chunks():
        pending += data
        if end_of_chunk:
            chunks.append(pending)
            pending = b""
    assert len(chunks) == 8 + 3  # role + 8 content deltas + finish + [DONE]
    assert all(c.startswith(b"data: ") and c.count(b"\n\n") == 1 for c in chunks)


async def test_stream_include_usage_adds_final_usage_chunk(client: Client) -> None:
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_data(await (await client.post(CHAT, json=body)).text())
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] > 0


async def test_x_sim_chunks_controls_number_of_content_deltas(client: Client) -> None:
    resp = await client.post(
        CHAT, json={**CHAT_BODY, "stream": True}, headers={"x-sim-chunks": "30"}
    )
    events = sse_data(await resp.text())[:-1]
    assert sum(1 for e in events if e["choices"][0]["delta"].get("content")) == 30


# --- other endpoints ----------------------------------------------------------------------


async def test_legacy_completions(client: Client) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 2}
    answer = await (await client.post("/v1/completions", json=body)).json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "Simulated answer"
    assert answer["choices"][0]["finish_reason"] == "length"
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_data(await (await client.post("/v1/completions", json=stream)).text())
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "Simulated answer"
    assert events[-2]["usage"]["completion_tokens"] == 2


async def test_embeddings_float_and_base64_agree(client: Client) -> None:
    body = {"model": "text-embedding-3-small", "input": ["alpha", "beta gamma"], "dimensions": 8}
    floats = await (await client.post("/v1/embeddings", json=body)).json()
    encoded = await (
        await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    ).json()
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        assert len(plain["embedding"]) == 8
        decoded = struct.unpack("<8f", base64.b64decode(packed["embedding"]))
        assert list(decoded) == plain["embedding"]
    default = await (
        await client.post("/v1/embeddings", json={"model": "m", "input": [1, 2]})
    ).json()
    assert len(default["data"]) == 1
    assert len(default["data"][0]["embedding"]) == 16


async def test_models_list_and_any_model_id(client: Client) -> None:
    listed = await (await client.get("/v1/models")).json()
    ids = {m["id"] for m in listed["data"]}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "sim-model"} <= ids
    model = await (await client.get("/v1/models/ft:my-org/custom")).json()
    assert model["id"] == "ft:my-org/custom"
    assert model["object"] == "model"


async def test_responses_are_stored_and_retrievable(client: Client) -> None:
    created = await (
        await client.post("/v1/responses", json={"model": "m", "input": "hi", "instructions": "x"})
    ).json()
    assert created["instructions"] == "x"
    fetched = await client.get(f"/v1/responses/{created['id']}")
    assert await fetched.json() == created
    missing = await client.get("/v1/responses/resp_missing")
    assert missing.status == 404
    assert (await missing.json())["error"]["type"] == "invalid_request_error"


async def test_responses_stream_ends_without_done(client: Client) -> None:
    resp = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    text = await resp.text()
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert text.startswith("event: response.created\ndata: ")
    assert "event: response.completed\n" in text
    assert "[DONE]" not in text


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (400, "invalid_request_error", "invalid_value"),
        (401, "invalid_request_error", "invalid_api_key"),
        (403, "permission_error", "permission_denied"),
        (404, "invalid_request_error", "model_not_found"),
        (409, "invalid_request_error", "conflict"),
        (422, "invalid_request_error", "unprocessable_entity"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", "server_error"),
        (503, "server_error", "service_unavailable"),
    ],
)
async def test_injected_status_has_openai_error_shape(
    client: Client, status: int, type_: str, code: str
) -> None:
    resp = await client.post(CHAT, json=CHAT_BODY, headers={"x-sim-status": str(status)})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    assert error["message"]
    if status == 400:
        assert error["param"] == "messages"


async def test_429_tells_clients_when_to_retry(client: Client) -> None:
    resp = await client.post(CHAT, json={"model": "sim-status-429", "messages": USER})
    assert resp.status == 429
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["retry-after-ms"] == "1000"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
    quick = await client.post(
        CHAT, json=CHAT_BODY, headers={"x-sim-status": "429", "x-sim-retry-after-ms": "20"}
    )
    assert quick.headers["retry-after-ms"] == "20"


async def test_api_key_is_enforced_when_configured(make_client: MakeClient) -> None:
    client = await make_client(api_key="sk-sim")
    missing = await client.post(CHAT, json=CHAT_BODY)
    wrong = await client.post(CHAT, json=CHAT_BODY, headers={"Authorization": "Bearer nope"})
    right = await client.post(CHAT, json=CHAT_BODY, headers={"Authorization": "Bearer sk-sim"})
    assert (missing.status, wrong.status, right.status) == (401, 401, 200)
    assert (await wrong.json())["error"]["code"] == "invalid_api_key"


async def test_bad_requests_get_openai_errors(client: Client) -> None:
    malformed = await client.post(
        CHAT, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status == 400
    assert (await malformed.json())["error"]["type"] == "invalid_request_error"
    bad_header = await client.post(CHAT, json=CHAT_BODY, headers={"x-sim-chunks": "lots"})
    assert bad_header.status == 400
    unknown = await client.post("/v1/nope", json={})
    assert unknown.status == 404
    assert "Invalid URL" in (await unknown.json())["error"]["message"]


async def test_unknown_fields_are_ignored(client: Client) -> None:
    resp = await client.post(CHAT, json={**CHAT_BODY, "vendor_extension": {"x": 1}, "seed": 7})
    assert resp.status == 200


# --- [[sim ...]] directives in the system prompt --------------------------------------------

# Rate tests send ROUNDS identical requests. A fixed seed makes them repeatable; the
# tolerance does not lean on it: 4.5 binomial standard deviations (p=0.2: sd 0.018, p=0.1:
# sd 0.013 at 500 draws) fail with probability about 1e-5 for any seed, while a broken
# rate (e.g. 0 or 2p) is still far outside the band.
ROUNDS = 500
SEED = 20240611


def _rate_tolerance(p: float) -> float:
    return 4.5 * math.sqrt(p * (1 - p) / ROUNDS)


def directed(system: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, *USER]
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


# sha256 of the bodies for requests without a directive: they must stay byte-identical, so
# text that only looks like a marker draws nothing. First computed with the simulator as it
# was before directives existed (commit f6b468d); recomputed when answers began to depend on
# the system prompt (the words "sim" and "simulate" of this prompt are now in the answer).
_PLAIN_SYSTEM = "You are terse. [sim] [[simulate]]"
_GOLDEN = (
    (
        CHAT,
        directed(_PLAIN_SYSTEM),
        "20ae37a1491b31fbd8b1956a3465e64169768737dbf0c448e1700609c72f822f",
    ),
    (
        CHAT,
        directed(_PLAIN_SYSTEM, stream=True, stream_options={"include_usage": True}),
        "e8f61eaef5bc684c2e7012f33ce64841d5faa2baee799e4682ce7f31be9553e0",
    ),
    (
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "Hi there", "instructions": _PLAIN_SYSTEM},
        "2e50e3cbb10ffb57d8553b3e03af58dfd4a3750b9b8033e6c768c313c746dae8",
    ),
)


@pytest.mark.parametrize(("path", "body", "digest"), _GOLDEN)
async def test_answers_without_directives_are_unchanged(
    client: Client, path: str, body: dict[str, Any], digest: str
) -> None:
    raw = await (await client.post(path, json=body)).read()
    assert hashlib.sha256(raw).hexdigest() == digest


async def _finish_reasons(client: Client, body: dict[str, Any]) -> list[tuple[str, int]]:
    """(finish_reason, answer words) of ROUNDS identical requests."""
    outcomes = []
    for _ in range(ROUNDS):
        resp = await client.post(CHAT, json=body)
        assert resp.status == 200
        if body.get("stream"):
            events = sse_data(await resp.text())
            assert events[-1] == "[DONE]"
            final = events[-2]["choices"][0]  # the finish chunk, right before [DONE]
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        else:
            final = (await resp.json())["choices"][0]
            text = final["message"]["content"]
        outcomes.append((final["finish_reason"], len(text.split())))
    return outcomes


@pytest.mark.parametrize("stream", [False, True])
async def test_truncate_directive_cuts_about_that_share(
    make_client: MakeClient, stream: bool
) -> None:
    client = await make_client(seed=SEED)
    body = directed("Answer well. [[sim truncate=0.2]]", stream=stream)
    outcomes = await _finish_reasons(client, body)
    cut = [words for reason, words in outcomes if reason == "length"]
    whole = {words for reason, words in outcomes if reason == "stop"}
    assert len(whole) == 1
    assert max(cut) < min(whole)
    share = len(cut) / ROUNDS
    assert abs(share - 0.2) <= _rate_tolerance(0.2), share


async def test_error_directive_fails_about_that_share_with_openai_500(
    make_client: MakeClient,
) -> None:
    client = await make_client(seed=SEED)
    statuses = []
    for _ in range(ROUNDS):
        resp = await client.post(CHAT, json=directed("[[sim error=0.1]]"))
        statuses.append(resp.status)
        if resp.status == 500:
            error = (await resp.json())["error"]
            assert (error["type"], error["code"]) == ("server_error", "server_error")
    assert set(statuses) == {200, 500}
    assert abs(statuses.count(500) / ROUNDS - 0.1) <= _rate_tolerance(0.1)


async def test_explicit_status_header_wins_over_error_directive(client: Client) -> None:
    resp = await client.post(
        CHAT, json=directed("[[sim error=1]]"), headers={"x-sim-status": "429"}
    )
    assert resp.status == 429


async def test_noise_directive_makes_identical_requests_differ(client: Client) -> None:
    noisy = directed("[[sim noise=0.3]]")
    texts = set()
    for _ in range(5):
        answer = await (await client.post(CHAT, json=noisy)).json()
        text = answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] == len(text.split())
        texts.add(text)
    # Five equal answers need all 13 words kept in every one of them: 0.7**65, about 1e-10.
    assert len(texts) > 1
    quiet = directed("[[sim noise=0]]")
    bodies = {await (await client.post(CHAT, json=quiet)).read() for _ in range(3)}
    assert len(bodies) == 1


async def test_longer_directive_doubles_completion_tokens(client: Client) -> None:
    plain = await (await client.post(CHAT, json=directed("Answer."))).json()
    longer = await (await client.post(CHAT, json=directed("Answer. [[sim longer=2]]"))).json()
    base_tokens = plain["usage"]["completion_tokens"]
    tokens = longer["usage"]["completion_tokens"]
    assert 1.9 <= tokens / base_tokens <= 2.1
    assert tokens == len(longer["choices"][0]["message"]["content"].split())
    assert longer["choices"][0]["finish_reason"] == "stop"


async def test_responses_instructions_carry_directives(client: Client) -> None:
    body = {"model": "m", "input": "hi", "instructions": "[[sim truncate=1]]"}
    cut = await (await client.post("/v1/responses", json=body)).json()
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["usage"]["output_tokens"] == len(cut["output"][0]["content"][0]["text"].split())
    streamed = await (await client.post("/v1/responses", json={**body, "stream": True})).text()
    assert "event: response.incomplete\n" in streamed
    assert "event: response.completed\n" not in streamed
    failing = {"model": "m", "input": [{"role": "developer", "content": "[[sim error=1]]"}]}
    assert (await client.post("/v1/responses", json=failing)).status == 500


async def test_same_seed_replays_the_same_noisy_answers(make_client: MakeClient) -> None:
    body = directed("[[sim noise=0.5 truncate=0.5]]")
    runs = []
    for _ in range(2):
        client = await make_client(seed=SEED)
        runs.append([await (await client.post(CHAT, json=body)).read() for _ in range(5)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("system", "named"),
    [
        ("[[sim truncate=2]]", "truncate=2"),
        ("[[sim error=-0.1]]", "error=-0.1"),
        ("[[sim noise=lots]]", "noise=lots"),
        ("[[sim longer=0]]", "longer=0"),
        ("[[sim shorter=2]]", "shorter=2"),
        ("[[sim truncate]]", "truncate"),
    ],
)
async def test_invalid_directive_is_a_400_naming_it(
    client: Client, system: str, named: str
) -> None:
    resp = await client.post(CHAT, json=directed(system))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "messages",
        "invalid_value",
    )
    assert repr(named) in error["message"]


# --- request log --------------------------------------------------------------------------


async def test_request_log_shows_what_reached_the_provider(client: Client) -> None:
    await client.post(
        CHAT + "?api-version=1",
        data=orjson.dumps(CHAT_BODY),
        headers=[("X-Trace", "a"), ("X-Trace", "b"), ("Authorization", "Bearer k")],
    )
    await client.post("/v1/embeddings", data=b"not json")
    entries = await (await client.get("/_sim/requests?limit=2")).json()
    assert len(entries) == 2
    chat, raw = entries
    assert chat["method"] == "POST"
    assert chat["path"] == CHAT
    assert chat["query"] == "api-version=1"
    assert chat["headers"]["x-trace"] == "a, b"
    assert chat["headers"]["authorization"] == "Bearer k"
    assert chat["body"] == CHAT_BODY
    assert chat["body_bytes"] == len(orjson.dumps(CHAT_BODY))
    assert raw["body"] is None
    assert raw["body_bytes"] == len(b"not json")
    assert (await (await client.delete("/_sim/requests")).json()) == {"cleared": 2}
    assert await (await client.get("/_sim/requests")).json() == []


async def test_request_log_is_bounded_and_can_be_disabled(make_client: MakeClient) -> None:
    bounded = await make_client(record_requests=2)
    for i in range(3):
        await bounded.post(CHAT, json={**CHAT_BODY, "n": i + 1})
    entries = await (await bounded.get("/_sim/requests")).json()
    assert [e["body"]["n"] for e in entries] == [2, 3]
    disabled = await make_client(record_requests=0)
    await disabled.post(CHAT, json=CHAT_BODY)
    assert await (await disabled.get("/_sim/requests")).json() == []


# --- timing and faults --------------------------------------------------------------------


async def test_first_byte_and_chunk_delays(client: Client) -> None:
    start = time.monotonic()
    resp = await client.post(CHAT, json=CHAT_BODY, headers={"x-sim-first-byte-ms": "150"})
    assert resp.status == 200
    assert time.monotonic() - start >= 0.14
    start = time.monotonic()
    resp = await client.post(
        CHAT,
        json={**CHAT_BODY, "stream": True},
        headers={"x-sim-chunk-delay-ms": "20", "x-sim-chunks": "5"},
    )
    await resp.read()
    # role + 5 content deltas + finish = 7 paced events, 6 gaps of 20 ms; [DONE] follows the
    # finish chunk at once, as OpenAI sends it.
    assert time.monotonic() - start >= 0.115


async def test_done_follows_the_finish_chunk_without_a_delay(client: Client) -> None:
    start = time.monotonic()
    resp = await client.post(
        CHAT,
        json={**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}},
        headers={"x-sim-chunk-delay-ms": "300", "x-sim-chunks": "1"},
    )
    await resp.read()
    # role, content, finish: 2 paced gaps (0.6 s); usage and [DONE] add none (else >= 1.2 s).
    assert 0.6 <= time.monotonic() - start < 1.0


async def test_settings_delays_apply_without_headers(make_client: MakeClient) -> None:
    client = await make_client(first_byte_ms=120)
    start = time.monotonic()
    await (await client.post(CHAT, json=CHAT_BODY)).read()
    assert time.monotonic() - start >= 0.11


async def test_drop_aborts_stream_midway(client: Client) -> None:
    received = bytearray()
    resp = await client.post(
        CHAT, json={**CHAT_BODY, "stream": True}, headers={"x-sim-fault": "drop"}
    )
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_into(resp, received)
    assert received.startswith(b"data: ")
    assert b"[DONE]" not in received


async def test_drop_without_stream_closes_before_response(client: Client) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(CHAT, json={"model": "sim-drop", "messages": USER})


async def test_hang_never_sends_headers(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            CHAT,
            json={"model": "sim-hang", "messages": USER},
            timeout=aiohttp.ClientTimeout(total=0.3),
        )


async def test_hang_mid_stream_stalls_after_first_events(client: Client) -> None:
    resp = await client.post(
        CHAT,
        json={**CHAT_BODY, "stream": True},
        headers={"x-sim-fault": "hang-mid-stream"},
        timeout=aiohttp.ClientTimeout(sock_read=0.3),
    )
    assert resp.status == 200
    received = bytearray()
    with pytest.raises(asyncio.TimeoutError):
        await read_into(resp, received)
    assert received.count(b"data: ") >= 1
    assert b"[DONE]" not in received


async def test_serve_simulator_runs_until_cancelled_and_frees_the_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve_simulator("127.0.0.1", port, SimulatorSettings()))
    url = f"http://127.0.0.1:{port}/_sim/health"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url) as resp:
                    assert await resp.json() == {"status": "ok"}
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("simulator never started listening")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


# --- the real openai SDK against a listening socket -----------------------------------------


async def test_sdk_chat_stream_with_usage_matches_non_stream(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.model == "gpt-4o-mini"
    text = completion.choices[0].message.content
    assert text is not None
    assert text.startswith("Simulated answer to: Hi there")
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == text
    assert usage is not None
    assert completion.usage is not None
    assert usage.total_tokens == completion.usage.total_tokens


async def test_sdk_streamed_tool_call_arguments_are_valid_json(sdk: openai.AsyncOpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city", "days"],
                },
            },
        }
    ]
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=USER, tools=tools, stream=True
    )
    arguments = ""
    name = None
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or []:
            if call.function and call.function.name:
                name = call.function.name
            arguments += (call.function.arguments or "") if call.function else ""
    assert name == "get_weather"
    assert finish == "tool_calls"
    parsed = orjson.loads(arguments)
    assert isinstance(parsed["city"], str)
    assert isinstance(parsed["days"], int)


async def test_sdk_responses_create_stream_and_retrieve(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="gpt-4o", input="Hello", instructions="Be nice")
    assert response.output_text.startswith("Simulated answer to: Hello")
    assert response.instructions == "Be nice"
    assert response.usage is not None
    assert response.usage.output_tokens == len(response.output_text.split())
    assert (await sdk.responses.retrieve(response.id)).output_text == response.output_text
    # The same instructions: they are part of what the answer depends on.
    stream = await sdk.responses.create(
        model="gpt-4o", input="Hello", instructions="Be nice", stream=True
    )
    deltas: list[str] = []
    completed = None
    async for event in stream:
        if isinstance(event, ResponseTextDeltaEvent):
            deltas.append(event.delta)
        elif isinstance(event, ResponseCompletedEvent):
            completed = event.response
    assert len(deltas) == 4
    assert completed is not None
    assert "".join(deltas) == completed.output_text == response.output_text


async def test_sdk_embeddings_decode_to_float_vectors(
    sim_url: str, sdk: openai.AsyncOpenAI
) -> None:
    result = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sim_url}/v1/embeddings",
            json={
                "model": "text-embedding-3-small",
                "input": ["a", "b"],
                "encoding_format": "float",
            },
        ) as resp,
    ):
        plain = await resp.json()
    assert [d.embedding for d in result.data] == [d["embedding"] for d in plain["data"]]


async def test_sdk_retries_429_then_raises(sim_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim_url}/v1", api_key="x", max_retries=2, timeout=5)
    headers = {"x-sim-status": "429", "x-sim-retry-after-ms": "10"}
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=USER,
                extra_headers=headers,
            )
    finally:
        await client.close()
    assert caught.value.code == "rate_limit_exceeded"
    async with aiohttp.ClientSession() as session, session.get(f"{sim_url}/_sim/requests") as resp:
        attempts = [e for e in await resp.json() if e["path"] == CHAT]
    assert len(attempts) == 3


async def test_sdk_sees_dropped_stream_as_connection_error(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(model="sim-drop", messages=USER, stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await collect_into(stream, received)
    assert received
    with pytest.raises(openai.APIConnectionError):
        await sdk.chat.completions.create(model="sim-drop", messages=USER)
