"""The data plane in-process, with the provider faked by aioresponses."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import pytest

from tests.support import FAKE_UPSTREAM, make_settings, proxy_clients, upstream_mock

CHAT_URL = f"{FAKE_UPSTREAM}/chat/completions"
CHAT_BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
    b'"x_vendor_field":{"keep":1.50}}'
)
CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
PROVIDER_HEADERS = {
    "x-request-id": "req_abc",
    "openai-processing-ms": "42",
    "x-ratelimit-remaining-requests": "99",
    "x-ratelimit-reset-tokens": "6ms",
}


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


def sent_requests(mocked: Any) -> list[Any]:
    return [call for calls in mocked.requests.values() for call in calls]


async def test_chat_completion_is_relayed_unchanged(upstream: Any, caplog: Any) -> None:
    upstream.post(
        CHAT_URL + "?api-version=1",
        body=orjson.dumps(CHAT_ANSWER),
        headers=PROVIDER_HEADERS,
        content_type="application/json",
    )
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    async with proxy_clients() as (client, _, _):
        resp = await client.post(
            "/v1/chat/completions?api-version=1",
            data=CHAT_BODY,
            headers={
                "Authorization": "Bearer sk-CANARYclientkey123",
                "Content-Type": "application/json",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
            },
        )
        assert resp.status == 200
        assert await resp.read() == orjson.dumps(CHAT_ANSWER)
        for name, value in PROVIDER_HEADERS.items():
            assert resp.headers[name] == value
        assert re.fullmatch(r"[0-9a-f]{24}", resp.headers["x-promptproxy-request-id"])

    (call,) = sent_requests(upstream)
    assert call.kwargs["data"] == CHAT_BODY  # byte for byte, unknown field included
    assert call.kwargs["allow_redirects"] is False
    sent_headers = call.kwargs["headers"]
    assert sent_headers["Authorization"] == "Bearer sk-CANARYclientkey123"
    assert "X-Drop-Me" not in sent_headers
    assert "Connection" not in sent_headers

    (record,) = [r for r in caplog.records if r.name == "promptproxy.access"]
    line = record.msg
    assert line["request_id"] == resp.headers["x-promptproxy-request-id"]
    assert line["upstream_request_id"] == "req_abc"
    assert (line["route"], line["status"], line["finish_reason"]) == (
        "chat.completions",
        200,
        "stop",
    )
    assert (line["model_requested"], line["model_answered"]) == (
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert (line["input_tokens"], line["output_tokens"]) == (5, 1)
    assert "CANARY" not in caplog.text


async def test_query_string_reaches_the_configured_upstream_only(upstream: Any) -> None:
    upstream.get(f"{FAKE_UPSTREAM}/models?limit=2", payload={"object": "list", "data": []})
    async with proxy_clients() as (client, _, _):
        resp = await client.get(
            "/v1/models?limit=2",
            headers={
                "Host": "evil.example",
                "X-Forwarded-Host": "169.254.169.254",
                "x-upstream": "http://169.254.169.254",
            },
        )
        assert resp.status == 200
    (call,) = sent_requests(upstream)
    assert str(next(iter(upstream.requests))[1]).startswith(FAKE_UPSTREAM)
    assert "Host" not in call.kwargs["headers"]


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (400, {}),
        (401, {}),
        (404, {}),
        (429, {"retry-after": "2", "retry-after-ms": "1500", "x-ratelimit-remaining-tokens": "0"}),
        (500, {}),
        (503, {"retry-after": "1"}),
    ],
)
async def test_provider_errors_pass_through_untouched(
    upstream: Any, status: int, headers: dict[str, str]
) -> None:
    error = {
        "error": {"message": f"provider says {status}", "type": "x", "param": "p", "code": "c"}
    }
    upstream.post(
        CHAT_URL,
        status=status,
        body=orjson.dumps(error),
        headers={**headers, "x-request-id": "req_e"},
        content_type="application/json",
    )
    async with proxy_clients() as (client, _, _):
        resp = await client.post("/v1/chat/completions", data=CHAT_BODY)
        assert resp.status == status
        assert await resp.json() == error
        for name, value in {**headers, "x-request-id": "req_e"}.items():
            assert resp.headers[name] == value
    assert len(sent_requests(upstream)) == 1  # the proxy itself retries nothing


async def test_redirects_are_relayed_not_followed(upstream: Any) -> None:
    upstream.get(
        f"{FAKE_UPSTREAM}/files/f1/content",
        status=302,
        headers={"Location": "http://169.254.169.254/latest"},
    )
    async with proxy_clients() as (client, _, _):
        resp = await client.get("/v1/files/f1/content", allow_redirects=False)
        assert resp.status == 302
    assert len(sent_requests(upstream)) == 1


async def test_other_v1_routes_are_forwarded_as_they_are(upstream: Any) -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=purpose\r\n\r\nbatch\r\n--b--\r\n"
    upstream.post(f"{FAKE_UPSTREAM}/files", payload={"id": "file-1"})
    async with proxy_clients() as (client, _, _):
        resp = await client.post(
            "/v1/files", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert await resp.json() == {"id": "file-1"}
    (call,) = sent_requests(upstream)
    assert call.kwargs["data"] == body
    assert call.kwargs["headers"]["Content-Type"] == "multipart/form-data; boundary=b"


def assert_openai_error(body: dict[str, Any], type_: str = "invalid_request_error") -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert body["error"]["message"]


async def test_malformed_json_is_a_400_and_never_forwarded(upstream: Any) -> None:
    async with proxy_clients() as (client, _, _):
        resp = await client.post("/v1/chat/completions", data=b'{"model": "x",')
        assert resp.status == 400
        assert_openai_error(await resp.json())
        assert resp.headers["x-promptproxy-request-id"]
    assert sent_requests(upstream) == []


@pytest.mark.parametrize("size_delta", [-1, 0, 1])
async def test_body_size_limit(upstream: Any, size_delta: int) -> None:
    limit = 2048
    upstream.post(f"{FAKE_UPSTREAM}/files", payload={"ok": True})
    async with proxy_clients(make_settings(**{"server.max_body_bytes": limit})) as (client, _, _):
        resp = await client.post("/v1/files", data=b"x" * (limit + size_delta))
        if size_delta <= 0:
            assert resp.status == 200
        else:
            assert resp.status == 413
            assert_openai_error(await resp.json())


async def test_chunked_body_over_the_limit_is_refused(upstream: Any) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1024

    async with proxy_clients(make_settings(**{"server.max_body_bytes": 4096})) as (client, _, _):
        resp = await client.post("/v1/files", data=chunks())
        assert resp.status == 413
    assert sent_requests(upstream) == []


async def test_unknown_paths_get_an_openai_shaped_404() -> None:
    async with proxy_clients() as (client, _, _):
        resp = await client.get("/admin/v1/prompts")
        assert resp.status == 404
        assert_openai_error(await resp.json())


@pytest.mark.parametrize("slug", ["bad slug", "x" * 65, "a%2Fb", "%F0%9F%98%80"])
async def test_invalid_slug_is_refused(upstream: Any, slug: str) -> None:
    async with proxy_clients() as (client, _, _):
        resp = await client.post(f"/p/{slug}/v1/chat/completions", data=CHAT_BODY)
        assert resp.status in (400, 404)
        body = await resp.json()
        assert_openai_error(body)
    assert sent_requests(upstream) == []


async def test_unknown_slug_is_a_404_and_recorded(upstream: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    async with proxy_clients() as (client, _, _):
        resp = await client.post("/p/support.reply-v2_x/v1/chat/completions", data=CHAT_BODY)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "prompt_not_found"
    (record,) = [r for r in caplog.records if r.name == "promptproxy.access"]
    assert record.msg["slug"] == "support.reply-v2_x"
    assert sent_requests(upstream) == []


async def test_slug_routes_pass_non_chat_calls_through(upstream: Any) -> None:
    upstream.get(f"{FAKE_UPSTREAM}/models", payload={"object": "list", "data": []})
    async with proxy_clients() as (client, _, _):
        resp = await client.get("/p/any-app/v1/models")
        assert resp.status == 200
        assert "x-prompt-version" not in resp.headers


async def test_upstream_unreachable_is_502_and_timeout_is_504(upstream: Any) -> None:
    from aiohttp import ClientConnectionError

    upstream.post(
        CHAT_URL,
        exception=ClientConnectionError("connect failed to http://x/?key=sk-CANARY1234567"),
    )
    upstream.post(CHAT_URL, exception=TimeoutError())
    async with proxy_clients() as (client, _, _):
        first = await client.post("/v1/chat/completions", data=CHAT_BODY)
        assert first.status == 502
        body = await first.json()
        assert_openai_error(body, "api_error")
        assert "CANARY" not in body["error"]["message"]
        second = await client.post("/v1/chat/completions", data=CHAT_BODY)
        assert second.status == 504
        assert_openai_error(await second.json(), "api_error")


async def test_configured_provider_key_replaces_the_clients(upstream: Any) -> None:
    upstream.post(CHAT_URL, payload=CHAT_ANSWER)
    settings = make_settings(
        environ={"PROVIDER_KEY": "sk-server"}, **{"upstream.api_key_env": "PROVIDER_KEY"}
    )
    async with proxy_clients(settings) as (client, _, _):
        await client.post(
            "/v1/chat/completions", data=CHAT_BODY, headers={"Authorization": "Bearer sk-client"}
        )
    (call,) = sent_requests(upstream)
    assert call.kwargs["headers"]["Authorization"] == "Bearer sk-server"


def stream_body(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def chunk(
    content: str | None, finish: str | None = None, usage: Any = None, choices: bool = True
) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_stream_usage_chunk_added_for_metrics_is_hidden_from_the_client(
    upstream: Any, caplog: Any
) -> None:
    with_usage = stream_body(
        chunk("Hel"), chunk("lo", "stop"), chunk(None, usage=USAGE, choices=False)
    )
    upstream.post(CHAT_URL, body=with_usage, content_type="text/event-stream")
    caplog.set_level(logging.INFO, logger="promptproxy.access")
    async with proxy_clients() as (client, _, _):
        resp = await client.post(
            "/v1/chat/completions", data=b'{"model":"gpt-4o-mini","stream":true}'
        )
        got = await resp.read()
    assert got == stream_body(chunk("Hel"), chunk("lo", "stop"))
    assert resp.headers["Content-Type"] == "text/event-stream"
    (call,) = sent_requests(upstream)
    assert orjson.loads(call.kwargs["data"])["stream_options"] == {"include_usage": True}
    (record,) = [r for r in caplog.records if r.name == "promptproxy.access"]
    assert (record.msg["input_tokens"], record.msg["output_tokens"]) == (3, 2)
    assert record.msg["ttfb_ms"] is not None


async def test_stream_usage_chunk_kept_when_the_client_asked(upstream: Any) -> None:
    with_usage = stream_body(chunk("Hi", "stop"), chunk(None, usage=USAGE, choices=False))
    upstream.post(CHAT_URL, body=with_usage, content_type="text/event-stream")
    async with proxy_clients() as (client, _, _):
        resp = await client.post(
            "/v1/chat/completions",
            data=b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}',
        )
        assert await resp.read() == with_usage


async def test_metrics_count_requests_with_bounded_labels(upstream: Any) -> None:
    for _ in range(2):
        upstream.post(CHAT_URL, payload={**CHAT_ANSWER, "model": "gpt-4o-mini"})
    async with proxy_clients() as (client, admin, _):
        await client.post("/v1/chat/completions", data=CHAT_BODY)
        await client.post("/v1/chat/completions", data=b'{"model":"my-typo-model-123"}')
        await client.post("/p/demo/v1/chat/completions", data=CHAT_BODY)
        text = await (await admin.get("/metrics")).text()
    series = (
        'promptproxy_requests_total{arm="",model="gpt-4o-mini",provider="upstream",'
        'route="chat.completions",slug="",status_class="2xx",tier="",variant="",version=""} 1.0'
    )
    assert series in text
    assert 'model="other"' in text
    assert "my-typo-model-123" not in text
    assert 'slug="other",status_class="4xx"' in text  # unknown prompt: no series of its own
    assert 'slug="demo"' not in text
    assert 'promptproxy_tokens_total{arm="",direction="input",model="gpt-4o-mini"' in text
    assert "promptproxy_request_duration_seconds_bucket" in text
