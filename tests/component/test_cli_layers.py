"""The CLI at a tenant's or a tier's layer of a prompt: `--tenant ID` / `--tier NAME` on
every command that names a slug, `prompts push` of overrides, `prompts show` of their
fields, and `prompts explain`; and at a model variant's line: `--variant NAME` beside them,
variant files pushed with their `match`, and `prompts explain --model`.

Against the admin app in-process, and, to see exactly what each command asks, against a
small aiohttp server on 127.0.0.1 that records every request (and serves a canned explain
answer). The CLI is synchronous (urllib), so it runs in a worker thread meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.prompt_key import Layer, PromptKey
from proxy.registry import prompt_files
from proxy.registry.models import BlockSpec, VariableSpec, VersionDraft
from tests.support import ADMIN_TOKEN, Clients, run_cli

BASE = VersionDraft(
    key=PromptKey("support"),
    template="You help {{ name }}.\n{{ block.tone }}\n",
    variables=(VariableSpec("name", "string", "a customer", True),),
    blocks=(BlockSpec("tone", "Be concise.", 200),),
    param_bounds={"temperature": (0.0, 1.0)},
)
TENANT = VersionDraft(
    key=PromptKey("support", Layer("tenant", "acme")),
    template="",
    params={"temperature": 0.2},
    fills={"tone": "Formal.\nAddress {{ name }} by title."},
    defaults={"name": "Acme customer"},
)
TIER = VersionDraft(
    key=PromptKey("support", Layer("tier", "enterprise")),
    template="",
    fills={"tone": "Thorough."},
)


async def test_push_sends_bases_first_and_each_override_at_its_layer(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, _ = clients
    # Real prompt files: the folder names each override's layer (config/prompts/README.md).
    (tmp_path / "tenants" / "acme").mkdir(parents=True)
    (tmp_path / "tiers" / "enterprise").mkdir(parents=True)
    (tmp_path / "support.md").write_text(
        "---\nvariables:\n  - {name: name, type: string, default: a customer}\n"
        "blocks:\n  tone: {default: Be concise., max_chars: 200}\n"
        "param_bounds:\n  temperature: [0.0, 1.0]\n---\n"
        "You help {{ name }}.\n{{ block.tone }}\n"
    )
    (tmp_path / "tenants" / "acme" / "support.yaml").write_text(
        "params: {temperature: 0.2}\n"
        "fills:\n  tone: |-\n    Formal.\n    Address {{ name }} by title.\n"
        "defaults: {name: Acme customer}\n"
    )
    (tmp_path / "tiers" / "enterprise" / "support.yaml").write_text("fills: {tone: Thorough.}\n")

    pushed = await run_cli(admin, "prompts", "-o", "json", "push", str(tmp_path), token=ADMIN_TOKEN)
    assert pushed.exit_code == 0, pushed.output
    rows = orjson.loads(pushed.stdout)
    assert [(r["slug"], r["version"], r["created"]) for r in rows] == [
        ("support", 1, True),
        ("tenant=acme/support", 1, True),
        ("tier=enterprise/support", 1, True),
    ]

    base = await run_cli(admin, "prompts", "show", "support", "1")
    assert base.exit_code == 0, base.output
    assert "param bounds: temperature [0, 1]" in base.stdout
    assert "--- block tone, at most 200 chars; default ---\nBe concise." in base.stdout

    tenant = await run_cli(admin, "prompts", "show", "support", "1", "--tenant", "acme")
    assert tenant.exit_code == 0, tenant.output
    lines = tenant.stdout.splitlines()
    assert lines[0].startswith("tenant=acme/support v1  [draft]")
    assert "params: {'temperature': 0.2}" in tenant.stdout
    assert "defaults: {'name': 'Acme customer'}" in lines
    assert "--- fill of block tone ---\nFormal.\nAddress {{ name }} by title." in tenant.stdout
    assert "--- block" not in tenant.stdout  # the base's blocks are not the override's

    as_json = await run_cli(
        admin, "prompts", "-o", "json", "show", "support", "1", "--tier", "enterprise"
    )
    assert orjson.loads(as_json.stdout)["fills"] == {"tone": "Thorough."}

    # The real explain route, through the CLI: each line behind the layer that wrote it.
    for layer in ((), ("--tenant", "acme"), ("--tier", "enterprise")):
        promoted = await run_cli(
            admin, "prompts", "promote", "support", "1", "--no-wait", *layer, token=ADMIN_TOKEN
        )
        assert promoted.exit_code == 0, promoted.output
    explained = await run_cli(
        admin, "prompts", "explain", "support", "--tenant", "acme", "--tier", "enterprise"
    )
    assert explained.exit_code == 0, explained.output
    assert "base@1,tier:enterprise@1,tenant:acme@1" in explained.stdout
    assert "[tenant:acme@1 block tone]  Address Acme customer by title." in explained.stdout


async def test_each_prompt_command_acts_on_the_layer_its_flag_names(
    clients: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, admin, _ = clients
    two = VersionDraft(key=TENANT.key, template="", fills={"tone": "Formal, always."})
    monkeypatch.setattr(prompt_files, "load_prompt_dir", lambda _path: [(tmp_path / "b", BASE)])
    assert (
        await run_cli(admin, "prompts", "push", str(tmp_path), token=ADMIN_TOKEN)
    ).exit_code == 0
    for draft in (TENANT, two):
        monkeypatch.setattr(
            prompt_files, "load_prompt_dir", lambda _p, d=draft: [(tmp_path / "t", d)]
        )
        assert (
            await run_cli(admin, "prompts", "push", str(tmp_path), token=ADMIN_TOKEN)
        ).exit_code == 0

    listing = await run_cli(admin, "prompts", "show", "support", "--tenant", "acme")
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == ["1", "2"]
    base_listing = await run_cli(admin, "prompts", "show", "support")
    assert [line.split()[0] for line in base_listing.stdout.splitlines()[1:]] == ["1"]

    diff = await run_cli(admin, "prompts", "diff", "support", "1", "2", "--tenant", "acme")
    assert diff.exit_code == 0, diff.output
    assert "-Formal." in diff.stdout
    assert "+Formal, always." in diff.stdout

    layer = ("--tenant", "acme", "--no-wait", "--reason", "acme asked")
    promoted = await run_cli(admin, "prompts", "promote", "support", "2", *layer, token=ADMIN_TOKEN)
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stdout.startswith("tenant=acme/support: v2 draft -> prod")
    history = await run_cli(admin, "prompts", "history", "support", "--tenant", "acme")
    assert "acme asked" in history.stdout
    assert "acme asked" not in (await run_cli(admin, "prompts", "history", "support")).stdout


@pytest.mark.parametrize(
    "command",
    [
        ("prompts", "show", "support"),
        ("prompts", "diff", "support", "1", "2"),
        ("prompts", "promote", "support", "1"),
        ("rollout", "status", "support"),
    ],
)
async def test_tenant_and_tier_together_are_a_usage_error(
    clients: Clients, command: tuple[str, ...]
) -> None:
    _, admin, _ = clients
    result = await run_cli(admin, *command, "--tenant", "acme", "--tier", "pro")
    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert "--tenant and --tier exclude each other" in result.stderr


# -- what each command asks: a server that records requests ----------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.explain: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.path.endswith("/explain") and self.explain:
            return web.json_response(self.explain)
        # Any command stops at the first error, which is all these tests need to see.
        error = {"message": "recorded", "type": "not_found", "code": "recorded", "param": None}
        return web.json_response({"error": error}, status=404)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, TestClient[Any, Any]]]:
    recorded = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorded.handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield recorded, client


LAYERED_COMMANDS = [
    ("prompts", "show", "support"),
    ("prompts", "show", "support", "2"),
    ("prompts", "diff", "support", "1", "2"),
    ("prompts", "promote", "support", "2", "--no-wait"),
    ("prompts", "rollback", "support", "--no-wait"),
    ("prompts", "history", "support"),
    ("prompts", "history", "support", "--at", "2026-01-01T00:00:00Z"),
    ("rollout", "status", "support"),
    ("rollout", "set", "support", "--candidate", "2", "--canary", "5", "--no-wait"),
    ("rollout", "ramp", "support", "10", "--no-wait"),
    ("rollout", "promote", "support", "--no-wait"),
    ("rollout", "abort", "support", "--no-wait"),
    # The pairs of a variant's or an override's rollout are filed under its line.
    ("shadow", "tail", "support"),
    ("shadow", "export", "support"),
    ("shadow", "report", "support"),
]


LINE_FLAGS = [
    ("--tenant", "acme"),
    ("--tier", "enterprise"),
    ("--variant", "claude"),
    ("--tenant", "acme", "--variant", "claude"),
    ("--variant", "claude", "--tier", "enterprise"),
]


@pytest.mark.parametrize("command", LAYERED_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("flags", LINE_FLAGS, ids=" ".join)
async def test_every_slug_command_sends_its_layer_as_a_query_parameter(
    recorder: tuple[Recorder, TestClient[Any, Any]],
    command: tuple[str, ...],
    flags: tuple[str, ...],
) -> None:
    recorded, server = recorder
    result = await run_cli(server, *command, *flags)
    assert "error: recorded" in result.stderr, result.output
    assert recorded.requests
    pairs = zip(flags[::2], flags[1::2], strict=True)
    line = {name.removeprefix("--"): value for name, value in pairs}
    for _method, path, query in recorded.requests:
        assert path.startswith("/admin/v1/prompts/support")
        assert {k: v for k, v in query.items() if k in ("tenant", "tier", "variant")} == line


async def test_a_variant_is_named_like_a_slug_and_only_with_one(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    bad = await run_cli(server, "prompts", "show", "support", "--variant", "claude 3")
    assert (bad.exit_code, bad.stderr) == (
        1,
        "error: `variant` must match [A-Za-z0-9._-]{1,64}. (param: variant)\n",
    )
    alone = await run_cli(server, "rollout", "status", "--variant", "claude")
    assert alone.exit_code == 2
    assert "--tenant, --tier and --variant name a version line of a SLUG" in alone.stderr
    assert recorded.requests == []


async def test_without_a_flag_the_base_is_addressed(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    await run_cli(server, "rollout", "status", "support")
    assert [query for _, _, query in recorded.requests] == [{}, {}, {}]


# -- explain --------------------------------------------------------------------------------

EXPLAIN = {
    "slug": "support",
    "tenant": "acme",
    "tier": "enterprise",
    "layers": "guardrails@2,base@3,tier:enterprise@1,tenant:acme@4",
    "messages": [
        {"role": "system", "layer": "guardrails@2", "text": "Never share secrets."},
        {
            "role": "system",
            "layer": "base@3",
            "text": "You help {{ name }}.\nFormal.\nUse titles.\n\nEnterprise products.\n",
        },
    ],
    "segments": [
        {"layer": "base@3", "block": None, "text": "You help {{ name }}.\n"},
        {"layer": "tenant:acme@4", "block": "tone", "text": "Formal.\nUse titles.\n"},
        {"layer": "base@3", "block": None, "text": "\n"},
        {"layer": "tier:enterprise@1", "block": "domain", "text": "Enterprise products.\n"},
        {"layer": "base@3", "block": "footer", "text": ""},
    ],
    "params": {
        "temperature": {"value": 0.2, "layer": "tenant:acme@4"},
        "max_tokens": {"value": 512, "layer": "base@3"},
    },
    "model": "gpt-4o-2024-08-06",
    "variables": ["name"],
    "ignored": ["tier:enterprise@1 fills block legacy, which base@3 does not declare"],
}


async def test_explain_marks_each_segment_with_its_layer_and_block(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    recorded.explain = EXPLAIN
    args = ("--tenant", "acme", "--tier", "enterprise", "--version", "3")
    result = await run_cli(server, "prompts", "explain", "support", *args)
    assert result.exit_code == 0, result.output
    assert recorded.requests == [
        (
            "GET",
            "/admin/v1/prompts/support/explain",
            {"tenant": "acme", "tier": "enterprise", "version": "3"},
        )
    ]
    out = result.stdout.splitlines()
    assert out[:2] == [
        "support for tenant acme (tier enterprise)",
        "layers: guardrails@2,base@3,tier:enterprise@1,tenant:acme@4",
    ]
    guardrails = out.index("message 1: system, guardrails@2")
    assert out[guardrails + 1].split() == ["[guardrails@2]", "Never", "share", "secrets."]
    composed = out.index("message 2: system, composed on base@3")
    # Every line behind the tag of the layer (and block) that wrote it, in one column.
    assert out[composed + 1 : composed + 7] == [
        "  [base@3]                          You help {{ name }}.",
        "  [tenant:acme@4 block tone]        Formal.",
        "  [tenant:acme@4 block tone]        Use titles.",
        "  [base@3]",
        "  [tier:enterprise@1 block domain]  Enterprise products.",
        "  [base@3 block footer]             (empty)",
    ]
    text = result.stdout
    assert "temperature  0.2    tenant:acme@4" in text
    assert "max_tokens   512    base@3" in text
    assert "model: gpt-4o-2024-08-06" in out
    assert "variables without a value: name" in out
    assert result.stderr.splitlines() == [
        "warning: ignored: tier:enterprise@1 fills block legacy, which base@3 does not declare"
    ]


async def test_explain_json_prints_the_answer_and_errors_are_one_line(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    recorded.explain = EXPLAIN
    result = await run_cli(server, "prompts", "explain", "support", "--tenant", "acme", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == EXPLAIN
    assert recorded.requests[0][2] == {"tenant": "acme"}

    recorded.explain = {}
    missing = await run_cli(server, "prompts", "explain", "support", "--tenant", "nobody")
    assert missing.exit_code == 1
    assert missing.stderr == "error: recorded\n"


async def test_a_base_that_breaks_an_override_is_flagged_at_push_and_forced_with_a_reason(
    clients: Clients, tmp_path: Path
) -> None:
    _, admin, _ = clients
    (tmp_path / "tenants" / "acme").mkdir(parents=True)
    base = tmp_path / "support.md"
    base.write_text("---\nblocks: {tone: Be concise.}\n---\nHello. {{ block.tone }}\n")
    (tmp_path / "tenants" / "acme" / "support.yaml").write_text("fills: {tone: Rhyme.}\n")
    assert (
        await run_cli(admin, "prompts", "push", str(tmp_path), token=ADMIN_TOKEN)
    ).exit_code == 0
    for layer in ((), ("--tenant", "acme")):
        promoted = await run_cli(
            admin, "prompts", "promote", "support", "1", "--no-wait", *layer, token=ADMIN_TOKEN
        )
        assert promoted.exit_code == 0, promoted.output

    base.write_text("---\nchangelog: no tone\n---\nHello.\n")  # drops the block acme fills
    pushed = await run_cli(admin, "prompts", "push", str(base), token=ADMIN_TOKEN)
    assert pushed.exit_code == 0, pushed.output
    assert "warning: support v2 breaks tenant:acme@1: fill of block 'tone'" in pushed.stderr
    assert "tenant:acme@1" in pushed.stdout  # the BREAKS column

    refused = await run_cli(admin, "prompts", "promote", "support", "2", token=ADMIN_TOKEN)
    assert refused.exit_code == 1
    assert "breaks 1 of the 1 overrides in use: tenant:acme@1" in refused.output
    no_reason = await run_cli(
        admin, "prompts", "promote", "support", "2", "--force", token=ADMIN_TOKEN
    )
    assert no_reason.exit_code == 2
    forced = await run_cli(
        admin,
        "prompts",
        "promote",
        "support",
        "2",
        "--force",
        "--reason",
        "acme moves to v2 next week",
        "--no-wait",
        token=ADMIN_TOKEN,
    )
    assert forced.exit_code == 0, forced.output
    history = await run_cli(admin, "prompts", "history", "support")
    assert "[forced over broken overrides: tenant:acme@1]" in history.stdout


async def test_explain_asks_for_the_variant_a_requests_model_selects(
    recorder: tuple[Recorder, TestClient[Any, Any]],
) -> None:
    recorded, server = recorder
    recorded.explain = EXPLAIN
    args = ("support", "--tenant", "acme", "--model", "claude-3-opus")
    result = await run_cli(server, "prompts", "explain", *args)
    assert result.exit_code == 0, result.output
    assert recorded.requests == [
        (
            "GET",
            "/admin/v1/prompts/support/explain",
            {"tenant": "acme", "model": "claude-3-opus"},
        )
    ]
    # The model picks the variant, as a request's does: explain names none itself.
    named = await run_cli(server, "prompts", "explain", "support", "--variant", "claude")
    assert named.exit_code == 2
    assert "No such option '--variant'" in named.stderr


async def test_variant_files_push_their_match_and_show_it(clients: Clients, tmp_path: Path) -> None:
    _, admin, _ = clients
    (tmp_path / "support.md").write_text(
        "---\nblocks: {tone: Be brief.}\n---\nHi. {{ block.tone }}\n"
    )
    (tmp_path / "support@claude.md").write_text(
        "---\nmatch: [claude-*]\nmodel: claude-3-5-sonnet-20241022\n"
        "blocks: {tone: Be brief.}\n---\nHello. {{ block.tone }}\n"
    )
    (tmp_path / "tenants" / "acme").mkdir(parents=True)
    (tmp_path / "tenants" / "acme" / "support@claude.yaml").write_text("fills: {tone: Formal.}\n")

    pushed = await run_cli(admin, "prompts", "-o", "json", "push", str(tmp_path), token=ADMIN_TOKEN)
    assert pushed.exit_code == 0, pushed.output
    assert [(r["slug"], r["version"]) for r in orjson.loads(pushed.stdout)] == [
        ("support", 1),
        ("support@claude", 1),
        ("tenant=acme/support@claude", 1),
    ]

    shown = await run_cli(admin, "prompts", "show", "support", "1", "--variant", "claude")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("support@claude v1  [draft]")
    assert lines[2:4] == ["model: claude-3-5-sonnet-20241022   params: -", "match: claude-*"]
    listing = await run_cli(admin, "prompts", "show", "support", "--variant", "claude")
    header, row = listing.stdout.splitlines()
    assert header.split()[4:] == ["MODEL", "MATCH", "CHANGELOG"]
    assert "claude-3-5-sonnet-20241022  claude-*" in row
    # The default variant's line shows no MATCH column: none of its versions has one.
    plain = await run_cli(admin, "prompts", "show", "support")
    assert "MATCH" not in plain.stdout

    line = ("--tenant", "acme", "--variant", "claude")
    fill = await run_cli(admin, "prompts", "-o", "json", "show", "support", "1", *line)
    assert orjson.loads(fill.stdout)["fills"] == {"tone": "Formal."}
