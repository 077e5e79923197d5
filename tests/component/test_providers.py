"""Providers: the model sent (after a prompt's pin) picks the provider, its base URL and its
key; a model no provider serves is a 404 naming it; a shadow candidate pinned to another
provider's model goes there with that provider's key, never with the primary's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import ConfigError, load_config
from proxy.pipeline.model_list import LIST_MAX_BYTES
from proxy.prompt_key import PromptKey
from proxy.providers import Providers
from proxy.registry.models import RolloutMode, VersionDraft
from tests.component.test_registry_swap_in import ANSWER, ready_for
from tests.support import Clients, proxy_clients, upstream_mock

OPENAI = "http://openai.test/v1"
LOCAL = "http://local-models.test/v1"
ENV = {"OPENAI_KEY": "sk-openai-secret"}
PROVIDERS = [
    {
        "name": "openai",
        "kind": "openai",
        "base_url": OPENAI,
        "api_key_env": "OPENAI_KEY",
        "models": ["gpt-*", "o?-*"],
    },
    # No key of its own: the client's Authorization is forwarded.
    {"name": "local", "base_url": LOCAL, "models": ["llama-*", "mistral-large"]},
]


def settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_config(
        None,
        environ=ENV,
        overrides={
            "registry.store": f"embedded:{tmp_path / 'registry.db'}",
            "shadow.sink": {"dir": str(tmp_path / "pairs")},
            "shadow.noise_share": 0.0,
            "providers": PROVIDERS,
            **overrides,
        },
    )


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        for base in (OPENAI, LOCAL):
            mocked.post(f"{base}/chat/completions", payload=ANSWER, repeat=True)
        yield mocked


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    async with proxy_clients(settings(tmp_path)) as trio:
        yield trio


def calls(mocked: Any) -> list[tuple[str, str | None, str]]:
    """(URL, Authorization, model) of every call the providers got, in order."""
    seen = []
    for (_, url), requests in mocked.requests.items():
        for call in requests:
            body = orjson.loads(call.kwargs["data"])
            seen.append((str(url), call.kwargs["headers"].get("Authorization"), body["model"]))
    return seen


async def chat(data: Any, model: str, path: str = "/v1/chat/completions") -> Any:
    resp = await data.post(
        path,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer client-key"},
    )
    return resp.status, await resp.json()


async def test_the_model_picks_the_provider_and_its_key(clients: Clients, upstream: Any) -> None:
    data = clients[0]
    assert (await chat(data, "gpt-4o"))[0] == 200
    assert (await chat(data, "llama-3.1-70b"))[0] == 200
    assert (await chat(data, "o1-mini"))[0] == 200
    assert calls(upstream) == [
        (f"{OPENAI}/chat/completions", "Bearer sk-openai-secret", "gpt-4o"),
        (f"{OPENAI}/chat/completions", "Bearer sk-openai-secret", "o1-mini"),
        # The client's own key, never the openai provider's.
        (f"{LOCAL}/chat/completions", "Bearer client-key", "llama-3.1-70b"),
    ]


async def test_a_model_no_provider_serves_is_a_404_naming_it(
    clients: Clients, upstream: Any
) -> None:
    status, body = await chat(clients[0], "claude-3-5-sonnet")
    assert status == 404
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert "claude-3-5-sonnet" in error["message"]
    assert calls(upstream) == []


async def test_a_prompts_model_pin_routes_to_the_pinned_models_provider(
    clients: Clients, upstream: Any
) -> None:
    _, _, services = clients
    key = PromptKey("support")
    await services.registry.push(
        VersionDraft(key=key, template="Be brief.", model="llama-3.1-70b"), actor="t"
    )
    await services.registry.promote(key, 1, "t", "")
    await ready_for(services)
    status, _ = await chat(clients[0], "gpt-4o", "/p/support/v1/chat/completions")
    assert status == 200
    assert calls(upstream) == [(f"{LOCAL}/chat/completions", "Bearer client-key", "llama-3.1-70b")]


async def test_a_shadow_pinned_to_another_provider_goes_there_with_its_credentials(
    clients: Clients, upstream: Any
) -> None:
    _, _, services = clients
    key = PromptKey("support")
    await services.registry.push(VersionDraft(key=key, template="Stable."), actor="t")
    await services.registry.push(
        VersionDraft(key=key, template="Candidate.", model="llama-3.1-70b"), actor="t"
    )
    await services.registry.promote(key, 1, "t", "")
    await services.registry.set_rollout(key, 2, RolloutMode.SHADOW, 100, None, "t", "")
    await ready_for(services)
    status, _ = await chat(clients[0], "gpt-4o", "/p/support/v1/chat/completions")
    assert status == 200
    for _ in range(100):  # the shadow is sent in the background
        if len(calls(upstream)) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(calls(upstream)) == [
        (f"{LOCAL}/chat/completions", "Bearer client-key", "llama-3.1-70b"),
        (f"{OPENAI}/chat/completions", "Bearer sk-openai-secret", "gpt-4o"),
    ]


def test_routing_takes_the_first_provider_that_serves_the_model(tmp_path: Path) -> None:
    overlapping = [
        *PROVIDERS,
        {"name": "fallback", "base_url": "http://fallback.test/v1", "models": ["*"]},
    ]
    providers = Providers.from_settings(settings(tmp_path, providers=overlapping))
    route = providers.route
    assert [route(m).name for m in ("gpt-4o", "mistral-large", "claude-3", "o3-mini")] == [  # type: ignore[union-attr]
        "openai",
        "local",
        "fallback",
        "openai",
    ]
    assert route(None) is providers.default
    assert providers.default.name == "openai"
    # A glob matches the whole name, case and all.
    assert Providers.from_settings(settings(tmp_path)).route("GPT-4o") is None
    assert Providers.from_settings(settings(tmp_path)).route("mistral-large-2") is None


def test_without_providers_the_upstream_serves_every_model(tmp_path: Path) -> None:
    plain = load_config(
        None,
        environ={"KEY": "sk-up"},
        overrides={"upstream.base_url": OPENAI, "upstream.api_key_env": "KEY"},
    )
    providers = Providers.from_settings(plain)
    only = providers.route("anything-at-all")
    assert only is not None
    assert (only.name, only.base_url, only.api_key) == ("upstream", OPENAI, "sk-up")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"upstream.base_url": OPENAI}, "upstream.base_url (or --upstream)"),
        ({"providers": [PROVIDERS[0], PROVIDERS[0]]}, "each name is listed once"),
        (
            # The anthropic SDK's base URL has no /v1; with one, every call would 404.
            {"providers": [{**PROVIDERS[1], "kind": "anthropic"}]},
            "kind anthropic takes the base URL without /v1",
        ),
        ({"providers": [{**PROVIDERS[1], "models": []}]}, "providers.0.models"),
        ({"providers": [{**PROVIDERS[1], "base_url": "ftp://x/v1"}]}, "http(s)"),
        (
            {"providers": [{**PROVIDERS[0], "api_key_env": "MISSING"}]},
            "MISSING is not set",
        ),
        ({"providers": [{**PROVIDERS[1], "name": "Bad Name"}]}, "providers.0.name"),
    ],
)
def test_a_bad_provider_list_is_refused_at_load(
    tmp_path: Path, overrides: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings(tmp_path, **overrides)
    assert says in str(refused.value)


async def test_the_model_list_is_what_each_provider_serves(clients: Clients, upstream: Any) -> None:
    listed = [
        {"id": m, "object": "model", "created": 1, "owned_by": "openai"}
        for m in ("gpt-4o", "o1-mini", "dall-e-3", "llama-3.1-70b")
    ]
    upstream.get(f"{OPENAI}/models", payload={"object": "list", "data": listed})
    upstream.get(f"{LOCAL}/models", status=500, payload={"error": {"message": "down"}})
    resp = await clients[0].get("/v1/models", headers={"Authorization": "Bearer client-key"})
    assert resp.status == 200
    body = await resp.json()
    # dall-e-3 is served by no provider, llama by `local` (not by the one listing it); the
    # literal `mistral-large` is listed though `local` could not be asked.
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [
        ("gpt-4o", "openai"),
        ("o1-mini", "openai"),
        ("mistral-large", "local"),
    ]
    assert resp.headers["x-promptproxy-request-id"]
    auth = {
        str(url): [c.kwargs["headers"].get("Authorization") for c in requests]
        for (method, url), requests in upstream.requests.items()
        if method == "GET"
    }
    assert auth == {
        f"{OPENAI}/models": ["Bearer sk-openai-secret"],
        f"{LOCAL}/models": ["Bearer client-key"],
    }


async def test_the_model_list_is_a_502_when_no_provider_answers(
    tmp_path: Path, upstream: Any
) -> None:
    only_patterns = [
        {**p, "models": ["gpt-*"] if p["name"] == "openai" else ["llama-*"]} for p in PROVIDERS
    ]
    for base in (OPENAI, LOCAL):
        upstream.get(f"{base}/models", status=503, payload={"error": {"message": "down"}})
    async with proxy_clients(settings(tmp_path, providers=only_patterns)) as trio:
        resp = await trio[0].get("/v1/models")
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_one_model_is_asked_of_the_provider_serving_it(
    clients: Clients, upstream: Any
) -> None:
    upstream.get(f"{LOCAL}/models/llama-3.1-70b", payload={"id": "llama-3.1-70b"})
    resp = await clients[0].get(
        "/v1/models/llama-3.1-70b", headers={"Authorization": "Bearer client-key"}
    )
    assert resp.status == 200
    assert (await resp.json())["id"] == "llama-3.1-70b"
    missing = await clients[0].get("/v1/models/claude-3-opus")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


async def test_metrics_say_which_provider_answered(clients: Clients, upstream: Any) -> None:
    data, admin, _ = clients
    assert (await chat(data, "gpt-4o"))[0] == 200
    assert (await chat(data, "llama-3.1-70b"))[0] == 200
    assert (await chat(data, "claude-3"))[0] == 404
    text = await (await admin.get("/metrics")).text()
    requests = [
        line for line in text.splitlines() if line.startswith("promptproxy_requests_total{")
    ]
    providers = sorted(line.split('provider="')[1].split('"')[0] for line in requests)
    # The refused request never reached a provider.
    assert providers == ["", "local", "openai"]


async def test_a_json_body_on_a_route_relayed_unread_is_routed_by_its_model(
    clients: Clients, upstream: Any
) -> None:
    """Images, audio speech, moderations...: a model meant to stay on the local provider
    must not go to the first one."""
    upstream.post(f"{LOCAL}/images/generations", payload={"data": []})
    resp = await clients[0].post(
        "/v1/images/generations",
        json={"model": "llama-vision-1", "prompt": "a cat"},
        headers={"Authorization": "Bearer client-key"},
    )
    assert resp.status == 200
    sent = [
        (str(url), [c.kwargs["headers"].get("Authorization") for c in requests])
        for (_, url), requests in upstream.requests.items()
    ]
    assert sent == [(f"{LOCAL}/images/generations", ["Bearer client-key"])]


async def test_a_provider_breaking_off_its_list_is_left_out(tmp_path: Path, upstream: Any) -> None:
    def broken(url: Any, **kwargs: Any) -> Any:
        raise aiohttp.ServerDisconnectedError()

    listed = [{"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}]
    upstream.get(f"{OPENAI}/models", payload={"object": "list", "data": listed})
    upstream.get(f"{LOCAL}/models", callback=broken)
    async with proxy_clients(settings(tmp_path)) as trio:
        resp = await trio[0].get("/v1/models")
        assert resp.status == 200
        names = [m["id"] for m in (await resp.json())["data"]]
    assert names == ["gpt-4o", "mistral-large"]


async def test_a_list_too_large_is_left_out(tmp_path: Path) -> None:
    """A real server (a mock cannot stream 10 MB): the oversized list is not held, the
    other provider's is answered."""
    huge = orjson.dumps(
        {
            "object": "list",
            "data": [{"id": f"llama-{i}", "object": "model"} for i in range(200_000)],
        }
    )

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=huge)

    async def small(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/big/v1/models", big)
    app.router.add_get("/small/v1/models", small)
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        listed = [
            {**PROVIDERS[0], "base_url": f"{base}/small/v1"},
            {**PROVIDERS[1], "base_url": f"{base}/big/v1"},
        ]
        async with proxy_clients(settings(tmp_path, providers=listed)) as trio:
            resp = await trio[0].get("/v1/models")
            assert resp.status == 200
            names = [m["id"] for m in (await resp.json())["data"]]
    assert len(huge) > LIST_MAX_BYTES
    assert names == ["mistral-large"]


async def test_one_listed_provider_lists_only_the_models_it_is_named_for(
    tmp_path: Path, upstream: Any
) -> None:
    listed = [{"id": m, "object": "model"} for m in ("gpt-4o", "dall-e-3")]
    upstream.get(f"{OPENAI}/models", payload={"object": "list", "data": listed})
    async with proxy_clients(settings(tmp_path, providers=[PROVIDERS[0]])) as trio:
        resp = await trio[0].get("/v1/models")
        names = [m["id"] for m in (await resp.json())["data"]]
    assert names == ["gpt-4o"]


def test_shadow_base_url_with_providers_is_refused(tmp_path: Path) -> None:
    """It would send every provider's key to the one shadow host."""
    with pytest.raises(ConfigError) as refused:
        settings(tmp_path, **{"shadow.base_url": "http://shadow.test/v1"})
    assert "shadow.base_url" in str(refused.value)


def test_long_or_listed_names_never_fill_the_routing_memory(tmp_path: Path) -> None:
    providers = Providers.from_settings(settings(tmp_path))
    assert providers.route("llama-" + "x" * 10_000) is not None
    assert providers.route("gpt-x", remember=False) is not None
    assert providers._cache == {}
    providers.route("gpt-4o")
    assert list(providers._cache) == ["gpt-4o"]


def test_a_request_naming_no_model_goes_to_the_first_openai_shaped_provider(
    tmp_path: Path,
) -> None:
    anthropic_first = [
        {"name": "anthropic", "kind": "anthropic", "base_url": "http://a.test", "models": ["c*"]},
        *PROVIDERS,
    ]
    providers = Providers.from_settings(settings(tmp_path, providers=anthropic_first))
    # A file upload or a call by id cannot go to the Messages API.
    assert providers.default.name == "openai"
    assert providers.route(None) is providers.default
