"""Model variants: a slug's per-model version lines, selected by the request's model, each
with its own versions, pin, rollouts, and the layers' overrides (docs/registry.md)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.component.test_layered_prompts import _admin, _push
from tests.component.test_registry_swap_in import ANSWER, CHAT_URL, ready_for, sent_bodies
from tests.support import Clients, upstream_mock

DEFAULT = {"template": "GPT prompt. {{ block.tone }}", "blocks": {"tone": {"default": "Calm."}}}
CLAUDE = {
    "template": "Claude prompt. {{ block.tone }}",
    "blocks": {"tone": {"default": "Calm."}},
    "match": ["claude-*"],
    "model": "claude-3-5-sonnet-20241022",
}
SONNET = {**CLAUDE, "template": "Sonnet prompt. {{ block.tone }}", "match": ["claude-3-5-sonnet*"]}


@pytest.fixture
def upstream() -> Any:
    with upstream_mock() as mocked:
        yield mocked


async def _ask(data: TestClient[Any, Any], model: str, tenant: str | None = None) -> Any:
    headers = {} if tenant is None else {"x-tenant-id": tenant}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    resp = await data.post("/p/support/v1/chat/completions", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return resp


async def test_the_requests_model_selects_the_most_specific_variant(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await _push(admin, "support", DEFAULT)
    await _push(admin, "support", CLAUDE, variant="claude")
    await _push(admin, "support", SONNET, variant="sonnet")
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)

    answers = [await _ask(data, m) for m in ("gpt-4o", "claude-3-opus", "claude-3-5-sonnet")]
    assert [a.headers["x-prompt-layers"] for a in answers] == [
        "base@1",
        "base[claude]@1",
        "base[sonnet]@1",
    ]
    sent = sent_bodies(upstream)
    assert [(b["model"], b["messages"][0]["content"]) for b in sent] == [
        ("gpt-4o", "GPT prompt. Calm."),
        # The variant's pin replaces the alias the caller sent.
        ("claude-3-5-sonnet-20241022", "Claude prompt. Calm."),
        ("claude-3-5-sonnet-20241022", "Sonnet prompt. Calm."),
    ]


async def test_a_layer_without_an_override_of_the_variant_gives_its_default_variants(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await _push(admin, "support", DEFAULT)
    await _push(admin, "support", CLAUDE, variant="claude")
    await _push(admin, "support", {"fills": {"tone": "Formal."}}, tier="enterprise")
    await _admin(admin, "PUT", "/tenants/acme", {"tier": "enterprise"})
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    inherited = await _ask(data, "claude-3-opus", "acme")
    assert inherited.headers["x-prompt-layers"] == "base[claude]@1,tier:enterprise@1"

    await _push(
        admin, "support", {"fills": {"tone": "Terse."}}, tier="enterprise", variant="claude"
    )
    await ready_for(services)
    own = await _ask(data, "claude-3-opus", "acme")
    assert own.headers["x-prompt-layers"] == "base[claude]@1,tier:enterprise[claude]@1"
    assert [b["messages"][0]["content"] for b in sent_bodies(upstream)] == [
        "Claude prompt. Formal.",
        "Claude prompt. Terse.",
    ]
    status, answer = await _admin(
        admin, "GET", "/prompts/support/explain", tenant="acme", model="claude-3-opus"
    )
    assert (status, answer["layers"]) == (200, "base[claude]@1,tier:enterprise[claude]@1")


async def test_a_variant_has_its_own_rollouts(clients: Clients, upstream: Any) -> None:
    data, admin, services = clients
    await _push(admin, "support", DEFAULT)
    await _push(admin, "support", CLAUDE, variant="claude")
    status, answer = await _admin(
        admin,
        "POST",
        "/prompts/support/versions",
        {**CLAUDE, "template": "Claude v2. {{ block.tone }}"},
        variant="claude",
    )
    assert status == 201, answer
    rollout = {"candidate": 2, "mode": "canary", "percent": 100, "sticky": "none"}
    status, answer = await _admin(
        admin, "PUT", "/prompts/support/rollout", rollout, variant="claude"
    )
    assert (status, answer["slug"]) == (201, "support@claude")
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    claude, gpt = await _ask(data, "claude-3-opus"), await _ask(data, "gpt-4o")
    assert (claude.headers["x-prompt-arm"], claude.headers["x-prompt-version"]) == ("canary", "2")
    assert (gpt.headers["x-prompt-arm"], gpt.headers["x-prompt-version"]) == ("stable", "1")


async def test_match_belongs_to_a_variants_base(clients: Clients) -> None:
    _, admin, _ = clients
    await _push(admin, "support", DEFAULT)
    for body, layer, param in (
        ({**CLAUDE, "match": []}, {"variant": "claude"}, "match"),
        (CLAUDE, {}, "match"),
        ({"fills": {"tone": "x"}, "match": ["gpt-*"]}, {"tenant": "acme"}, "match"),
    ):
        status, answer = await _admin(admin, "POST", "/prompts/support/versions", body, **layer)
        assert (status, answer["error"]["param"]) == (400, param), (body, answer)


async def test_a_variants_first_version_is_checked_against_the_overrides_it_inherits(
    clients: Clients,
) -> None:
    _, admin, _ = clients
    await _push(admin, "support", DEFAULT)
    await _push(admin, "support", {"fills": {"tone": "Formal."}}, tier="enterprise")
    bare = {"template": "Claude prompt.", "match": ["claude-*"]}
    status, pushed = await _admin(
        admin, "POST", "/prompts/support/versions", bare, variant="claude"
    )
    assert status == 201, pushed
    assert [b["layer"] for b in pushed["overrides"]["broken"]] == ["tier:enterprise@1"]
    status, refused = await _admin(
        admin, "POST", "/prompts/support/promote", {"version": 1}, variant="claude"
    )
    assert (status, refused["error"]["code"]) == (409, "overrides_break")


async def test_an_override_of_the_default_must_fit_the_variants_that_compose_it(
    clients: Clients,
) -> None:
    _, admin, _ = clients
    wide = {
        "template": "GPT. {{ block.tone }} {{ block.domain }}",
        "blocks": {"tone": {"default": "Calm."}, "domain": {"default": ""}},
    }
    await _push(admin, "support", wide)
    await _push(admin, "support", CLAUDE, variant="claude")  # declares tone only
    status, answer = await _admin(
        admin, "POST", "/prompts/support/versions", {"fills": {"domain": "Anvils."}}, tenant="acme"
    )
    assert (status, answer["error"]["param"]) == (400, "fills.domain"), answer
    assert "with variant 'claude'" in answer["error"]["message"]
    # With an override of its own for the variant, the variant no longer composes it.
    await _push(admin, "support", {"fills": {"tone": "Sing."}}, tenant="acme", variant="claude")
    status, answer = await _admin(
        admin, "POST", "/prompts/support/versions", {"fills": {"domain": "Anvils."}}, tenant="acme"
    )
    assert status == 201, answer


async def test_a_rollout_of_the_defaults_override_stays_on_the_default_variant(
    clients: Clients, upstream: Any
) -> None:
    data, admin, services = clients
    await _push(admin, "support", DEFAULT)
    await _push(admin, "support", CLAUDE, variant="claude")
    await _push(admin, "support", {"fills": {"tone": "Formal."}}, tier="enterprise")
    await _admin(admin, "PUT", "/tenants/acme", {"tier": "enterprise"})
    status, _ = await _admin(
        admin, "POST", "/prompts/support/versions", {"fills": {"tone": "Terse."}}, tier="enterprise"
    )
    assert status == 201
    rollout = {"candidate": 2, "mode": "canary", "percent": 100, "sticky": "none"}
    status, answer = await _admin(
        admin, "PUT", "/prompts/support/rollout", rollout, tier="enterprise"
    )
    assert status == 201, answer
    await ready_for(services)
    upstream.post(CHAT_URL, payload=ANSWER, repeat=True)
    gpt = await _ask(data, "gpt-4o", "acme")
    claude = await _ask(data, "claude-3-opus", "acme")
    assert (gpt.headers["x-prompt-arm"], gpt.headers["x-prompt-layers"]) == (
        "canary",
        "base@1,tier:enterprise@2",
    )
    assert (claude.headers["x-prompt-arm"], claude.headers["x-prompt-layers"]) == (
        "stable",
        "base[claude]@1,tier:enterprise@1",
    )


async def test_promoting_an_unknown_prompt_is_prompt_not_found(clients: Clients) -> None:
    status, answer = await _admin(clients[1], "POST", "/prompts/nosuch/promote", {"version": 1})
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (
        404,
        "prompt_not_found",
        "slug",
    )
