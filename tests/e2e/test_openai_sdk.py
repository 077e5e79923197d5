"""The official openai SDK, pointed at the simulator directly and through the proxy, must not
tell the difference: same bytes, same chunks, same exceptions, same retries."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.processes import ProxyProc

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a canary release?"},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def bases(sim_url: str, proxy_proc: ProxyProc) -> dict[str, str]:
    return {"direct": sim_url, "proxy": proxy_proc.url}


def clients(bases: dict[str, str], **kw: Any) -> dict[str, openai.OpenAI]:
    return {k: openai.OpenAI(base_url=v, api_key="sk-test", **kw) for k, v in bases.items()}


def aclients(bases: dict[str, str], **kw: Any) -> dict[str, openai.AsyncOpenAI]:
    return {k: openai.AsyncOpenAI(base_url=v, api_key="sk-test", **kw) for k, v in bases.items()}


def test_sync_chat_is_byte_identical(bases: dict[str, str]) -> None:
    raw = {
        name: client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        for name, client in clients(bases).items()
    }
    assert raw["proxy"].http_response.content == raw["direct"].http_response.content
    parsed = raw["proxy"].parse()
    assert parsed.choices[0].message.content
    assert parsed._request_id == raw["proxy"].headers["x-request-id"]
    assert raw["proxy"].headers["x-promptproxy-request-id"]


async def test_async_chat_stream_chunks_identical(bases: dict[str, str]) -> None:
    for include_usage in (False, True):
        got: dict[str, list[Any]] = {}
        for name, client in aclients(bases).items():
            extra: dict[str, Any] = (
                {"stream_options": {"include_usage": True}} if include_usage else {}
            )
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra
            )
            got[name] = [chunk.model_dump() async for chunk in stream]
        assert got["proxy"] == got["direct"]
        usage_chunks = [c for c in got["proxy"] if c["usage"] is not None]
        assert len(usage_chunks) == (1 if include_usage else 0)


def test_sync_stream_with_parallel_tool_call_deltas(bases: dict[str, str]) -> None:
    calls: dict[str, dict[int, dict[str, str]]] = {}
    for name, client in clients(bases).items():
        acc: dict[int, dict[str, str]] = {}
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    slot = acc.setdefault(delta.index, {"name": "", "arguments": ""})
                    if delta.function and delta.function.name:
                        slot["name"] += delta.function.name
                    if delta.function and delta.function.arguments:
                        slot["arguments"] += delta.function.arguments
        calls[name] = acc
    assert calls["proxy"] == calls["direct"]
    assert [c["name"] for c in calls["proxy"].values()] == ["lookup_order", "refund"]


async def test_chat_stream_helper_accumulates_through_the_proxy(bases: dict[str, str]) -> None:
    client = aclients(bases)["proxy"]
    async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_same_exception_class_and_body(bases: dict[str, str], status: int, exc: type) -> None:
    errors = {}
    for name, client in clients(bases, max_retries=0).items():
        with pytest.raises(exc) as info:
            client.chat.completions.create(model=f"sim-status-{status}", messages=MESSAGES)
        errors[name] = info.value
    assert errors["proxy"].body == errors["direct"].body
    assert errors["proxy"].code == errors["direct"].code
    assert errors["proxy"].status_code == status
    assert errors["proxy"].request_id is not None


def test_sdk_retries_the_same_way(bases: dict[str, str], sim_url: str) -> None:
    """429 with retry-after-ms: the SDK retries twice whether or not the proxy is between."""
    sim_root = sim_url.removesuffix("/v1")
    counts = {}
    for name, client in clients(bases, max_retries=2).items():
        httpx.delete(f"{sim_root}/_sim/requests")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "20"},
            )
        seen = httpx.get(f"{sim_root}/_sim/requests").json()
        counts[name] = [r["headers"].get("x-stainless-retry-count") for r in seen]
    assert counts["proxy"] == counts["direct"] == ["0", "1", "2"]


def test_completions_embeddings_and_models(bases: dict[str, str]) -> None:
    out: dict[str, Any] = {}
    for name, client in clients(bases).items():
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
        floats = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        raw_b64 = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="a", encoding_format="base64"
        )
        models = [m.id for m in client.models.list()]
        out[name] = (
            completion.model_dump(),
            floats.model_dump(),
            raw_b64.http_response.content,
            models,
        )
    assert out["proxy"] == out["direct"]
    b64 = httpx.Response(200, content=out["proxy"][2]).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(out["proxy"][1]["data"][0]["embedding"])


async def test_responses_api_create_and_stream(bases: dict[str, str]) -> None:
    texts: dict[str, Any] = {}
    for name, client in aclients(bases).items():
        created = await client.responses.create(
            model="gpt-4o-mini", input="Hello", instructions="Be brief"
        )
        stream = await client.responses.create(model="gpt-4o-mini", input="Hello", stream=True)
        events = [event.type async for event in stream]
        fetched = await client.responses.retrieve(created.id)
        texts[name] = (created.output_text, events, fetched.output_text)
    assert texts["proxy"] == texts["direct"]
    assert texts["proxy"][1][-1] == "response.completed"


def test_mid_stream_failure_raises_in_the_sdk(bases: dict[str, str]) -> None:
    client = clients(bases, max_retries=0)["proxy"]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-sim-fault": "drop"}
    )
    with pytest.raises(openai.APIError, match="broke off"):
        for _ in stream:
            pass


def test_proxy_own_errors_map_to_sdk_classes(bases: dict[str, str]) -> None:
    client = openai.OpenAI(
        base_url=bases["proxy"].replace("/v1", "/p/bad slug!/v1"), api_key="x", max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.param == "slug"
