"""The translated path against a scripted Anthropic server on 127.0.0.1: streams that end
before `message_stop`, a provider slow to close a finished stream (its connection must be
reused all the same), and a model description that stalls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import load_config
from proxy.log import ACCESS_LOGGER
from tests.support import proxy_clients

pytestmark = pytest.mark.timeout(20)

CLAUDE = "claude-test"
START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 11, "output_tokens": 1},
    },
}
TEXT = [
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
]
END = [
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop"},
]


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


class Scripted:
    def __init__(self) -> None:
        self.peers: list[Any] = []

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        script = request.headers.get("x-script", "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if script == "cut":  # ends cleanly, but before the message did
            await response.write(sse(START, *TEXT))
        elif script == "nothing":  # ends before the message began
            await response.write(b": keep-alive\n\n")
        else:
            await response.write(sse(START, *TEXT, *END))
            if script == "slow-close":
                await asyncio.sleep(0.3)  # the chunked terminator comes a moment later
        await response.write_eof()
        return response

    async def model(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id":')
        await asyncio.sleep(5)  # past the proxy's read timeout
        return response


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    server = Scripted()
    app = web.Application()
    app.router.add_post("/v1/messages", server.messages)
    app.router.add_get("/v1/models/{model}", server.model)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield server, str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()


@pytest.fixture
async def data(tmp_path: Path, scripted: tuple[Scripted, str]) -> AsyncIterator[Any]:
    settings = load_config(
        None,
        environ={},
        overrides={
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "upstream.read_timeout_seconds": 0.5,
            "providers": [
                {"name": "anthropic", "kind": "anthropic", "base_url": scripted[1], "models": ["*"]}
            ],
        },
    )
    async with proxy_clients(settings) as (client, _, services):
        yield client, services


async def chat_stream(client: Any, script: str) -> str:
    body = {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await client.post("/v1/chat/completions", json=body, headers={"x-script": script})
    assert resp.status == 200
    return str(await resp.text())


async def test_a_stream_that_ends_before_message_stop_says_so_and_counts_its_input(
    data: Any,
) -> None:
    client, services = data
    text = await chat_stream(client, "cut")
    assert '"content":"Hi"' in text
    assert "ended the stream before the answer was complete" in text
    assert "[DONE]" not in text
    value = services.metrics.registry.get_sample_value
    labels = {
        "route": "chat.completions",
        "slug": "",
        "version": "",
        "arm": "",
        "tier": "",
        "variant": "",
        "provider": "anthropic",
    }
    assert value("promptproxy_errors_total", {**labels, "error_class": "stream_interrupted"}) == 1
    tokens = {**labels, "model": "other", "direction": "input"}
    assert value("promptproxy_tokens_total", tokens) == 11  # message_start's input, billed


async def test_a_finished_stream_gives_its_connection_back_to_the_pool(
    data: Any, scripted: tuple[Scripted, str]
) -> None:
    client, _ = data
    for _ in range(3):
        text = await chat_stream(client, "slow-close")
        assert text.endswith("data: [DONE]\n\n")
    server, _ = scripted
    assert len(server.peers) == 3
    assert len(set(server.peers)) == 1  # one connection, reused


async def test_a_model_description_that_stalls_is_a_gateway_error_not_a_500(data: Any) -> None:
    client, _ = data
    resp = await client.get(f"/v1/models/{CLAUDE}")
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_a_stream_cut_before_the_message_began_counts_no_tokens(
    data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = data
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    text = await chat_stream(client, "nothing")
    assert "ended the stream before the answer was complete" in text
    (line,) = [r.msg for r in caplog.records if r.name == ACCESS_LOGGER]
    # Nothing said how many: no count at all, rather than a count of 0.
    assert (line["input_tokens"], line["output_tokens"]) == (None, None)
    assert line["error_class"] == "stream_interrupted"
