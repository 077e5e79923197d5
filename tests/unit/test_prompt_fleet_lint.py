"""Prompt files of every layer, and a prompts folder linted as a whole: overrides in
``tiers/<tier>/`` and ``tenants/<tenant>/``, each checked against its base beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.prompt_key import Layer, PromptKey
from proxy.registry.prompt_files import (
    PromptFileError,
    lint_prompt_dir,
    lint_prompts,
    load_prompt_dir,
    load_prompt_file,
)

BASE = """\
---
variables:
  company: {type: string, default: our company}
  customer_title: {type: string, default: customer}
blocks:
  tone: {default: Be concise and friendly., max_chars: 200}
  domain: ""
param_bounds:
  temperature: [0.0, 1.0]
---
You are the support assistant of {{ company }}.
{{ block.tone }}
{{ block.domain }}
"""

ENTERPRISE = """\
author: platform-team
fills:
  tone: "Formal. Address the user as {{ customer_title }}."
params:
  temperature: 0.2
"""

ACME = """\
changelog: Acme's products.
fills:
  domain: Acme sells anvils and rockets.
defaults:
  company: Acme Corp
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fleet(folder: Path) -> Path:
    write(folder, "support-reply.md", BASE)
    write(folder, "summarize.yaml", "template: Summarize.\n")
    write(folder, "tiers/enterprise/support-reply.yaml", ENTERPRISE)
    write(folder, "tenants/acme/support-reply.yaml", ACME)
    write(folder, "tenants/acme/summarize.md", "---\ntenant: acme\n---\n")
    write(folder, "tenants/beta/support-reply.md", "---\nfills:\n  tone: Playful.\n---\n\n")
    return folder


def problems(folder: Path) -> list[str]:
    """What lint says, with the folder left out; a push of the folder refuses the same."""
    found = lint_prompt_dir(folder)
    with pytest.raises(PromptFileError) as info:
        load_prompt_dir(folder)
    assert info.value.problems == found
    return [p.removeprefix(f"{folder}/") for p in found]


def test_a_good_fleet_lints_clean_and_loads_bases_first(tmp_path: Path) -> None:
    assert lint_prompt_dir(fleet(tmp_path)) == []
    loaded = load_prompt_dir(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), d.key) for p, d in loaded] == [
        ("summarize.yaml", PromptKey("summarize")),
        ("support-reply.md", PromptKey("support-reply")),
        (
            "tiers/enterprise/support-reply.yaml",
            PromptKey("support-reply", Layer("tier", "enterprise")),
        ),
        ("tenants/acme/summarize.md", PromptKey("summarize", Layer("tenant", "acme"))),
        ("tenants/acme/support-reply.yaml", PromptKey("support-reply", Layer("tenant", "acme"))),
        ("tenants/beta/support-reply.md", PromptKey("support-reply", Layer("tenant", "beta"))),
    ]
    drafts = {d.key.text: d for _, d in loaded}
    tier = drafts["tier=enterprise/support-reply"]
    assert (tier.template, tier.variables, tier.blocks) == ("", (), ())
    assert tier.fills == {"tone": "Formal. Address the user as {{ customer_title }}."}
    assert (tier.params, tier.author) == ({"temperature": 0.2}, "platform-team")
    acme = drafts["tenant=acme/support-reply"]
    assert (acme.fills, acme.defaults) == (
        {"domain": "Acme sells anvils and rockets."},
        {"company": "Acme Corp"},
    )
    assert drafts["tenant=beta/support-reply"].fills == {"tone": "Playful."}


def test_a_single_override_file_is_read_as_its_folders_layer(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts/tenants/acme/support-reply.yaml", ACME)
    draft = load_prompt_file(path)
    assert draft.key == PromptKey("support-reply", Layer("tenant", "acme"))
    # On its own it has no base to be checked against: that is the registry's, at push.
    assert lint_prompt_dir(path) == []


def test_an_override_filling_an_undeclared_block_is_reported_at_that_key(tmp_path: Path) -> None:
    fleet(tmp_path)
    write(
        tmp_path,
        "tenants/acme/support-reply.yaml",
        ACME.replace("fills:\n", "fills:\n  colour: red\n"),
    )
    assert problems(tmp_path) == [
        "tenants/acme/support-reply.yaml:3: block 'colour' is not declared by base "
        "support-reply.md (it declares: domain, tone)"
    ]


def test_a_base_that_drops_a_block_an_override_fills_fails_on_the_override(
    tmp_path: Path,
) -> None:
    """The edit is to the base, the customer's override is what would break: lint says so
    on the override's file, naming the base, before the base is pushed."""
    fleet(tmp_path)
    write(
        tmp_path,
        "support-reply.md",
        BASE.replace('  domain: ""\n', "").replace("{{ block.domain }}\n", ""),
    )
    assert problems(tmp_path) == [
        "tenants/acme/support-reply.yaml:3: block 'domain' is not declared by base "
        "support-reply.md (it declares: tone)"
    ]
    # Narrowing a bound, or dropping a variable an override sets, is caught the same way.
    write(
        tmp_path,
        "support-reply.md",
        BASE.replace("[0.0, 1.0]", "[0.5, 1.0]")
        .replace("  company: {type: string, default: our company}\n", "")
        .replace("{{ company }}", "us"),
    )
    assert problems(tmp_path) == [
        "tenants/acme/support-reply.yaml:5: 'company' is not a variable of base support-reply.md",
        "tiers/enterprise/support-reply.yaml:5: temperature 0.2 is outside the bounds base "
        "support-reply.md declares [0.5, 1]",
    ]


def test_a_composition_that_does_not_render_is_reported_on_the_override(tmp_path: Path) -> None:
    base = (
        "---\nvariables:\n  per_page: {type: integer, default: 10}\n---\n"
        "{{ 100 // per_page }} pages\n"
    )
    write(tmp_path, "pages.md", base)
    write(tmp_path, "tenants/acme/pages.yaml", "defaults:\n  per_page: 0\n")
    write(tmp_path, "tenants/beta/pages.yaml", "defaults:\n  per_page: 20\n")
    assert problems(tmp_path) == [
        "tenants/acme/pages.yaml:1: composed with base pages.md it does not render: the "
        "prompt could not be rendered: integer division or modulo by zero"
    ]
    # A base that fails alone fails every tenant the same way: not reported on each of them.
    write(tmp_path, "pages.md", base.replace("default: 10", "default: 0"))
    assert lint_prompt_dir(tmp_path) == []


def test_overrides_with_no_base_or_a_broken_base(tmp_path: Path) -> None:
    write(tmp_path, "tenants/acme/billing.yaml", "fills: {tone: x}\n")
    assert problems(tmp_path) == [
        f"tenants/acme/billing.yaml: no base prompt 'billing' in {tmp_path}: an override is "
        "checked against its base's file in the same folder (billing.md or .yaml); lint the "
        "folder that holds both"
    ]
    # A base with problems of its own: those are reported, not "no base" on each override.
    write(tmp_path, "billing.md", "---\nblocks: {tone: x}\n---\n{{ block.tone }} {{ nope }}\n")
    assert problems(tmp_path) == ["billing.md:4: variables used but not declared: 'nope'"]


def test_an_override_holds_only_fills_defaults_and_params(tmp_path: Path) -> None:
    fleet(tmp_path)
    text = "fills: {tone: x}\ntemplate: Hi\nmodel: gpt-4o\nblocks: {tone: y}\ncolour: red\n"
    write(tmp_path, "tenants/acme/support-reply.yaml", text)
    write(tmp_path, "tenants/beta/support-reply.md", "---\nfills: {tone: x}\n---\nYou are...\n")
    found = problems(tmp_path)
    assert len(found) == 5, found
    assert found[0].startswith(
        "tenants/acme/support-reply.yaml:2: `template` belongs to the base, not to an override"
    )
    assert found[1].startswith("tenants/acme/support-reply.yaml:3: `model` belongs to the base")
    assert found[2].endswith("(an override fills the base's blocks with `fills:`)")
    assert found[3].startswith("tenants/acme/support-reply.yaml:5: unknown key 'colour'")
    assert found[4] == (
        "tenants/beta/support-reply.md:4: an override has no template: its text goes in "
        "`fills` of the base's blocks, and the text below the front matter must be empty"
    )


def test_the_folder_names_the_layer_and_a_key_must_agree(tmp_path: Path) -> None:
    fleet(tmp_path)
    write(tmp_path, "tenants/acme/support-reply.yaml", "tenant: acme\n" + ACME)
    write(tmp_path, "tenants/beta/support-reply.md", "---\ntier: beta\n---\n")
    write(tmp_path, "tiers/pro/support-reply.yaml", "tenant: pro\ntier: pro\n")
    write(tmp_path, "acme-reply.yaml", "slug: support-reply\ntenant: acme\nfills: {tone: x}\n")
    found = problems(tmp_path)
    assert found == [
        "acme-reply.yaml: template must be text (use 'template: |' and indent it)",
        "acme-reply.yaml:2: `tenant: acme` makes this an override, and an override's layer "
        "is its folder: move the file to tenants/acme/support-reply.yaml in the prompts folder",
        "acme-reply.yaml:3: `fills` belongs to a tier's or tenant's override: put it in a file "
        "tiers/<tier>/<slug>.yaml or tenants/<tenant>/<slug>.yaml",
        "tenants/beta/support-reply.md:2: `tier: beta` disagrees with the folder, which makes "
        "this file the override of tenant beta (tenants/beta/): the folder names the layer, "
        "so move the file or correct the key",
        "tiers/pro/support-reply.yaml:1: give `tier` or `tenant`, not both: a file is one "
        "layer's override",
    ]


def test_files_under_a_layer_folder_but_not_in_a_layers_folder(tmp_path: Path) -> None:
    fleet(tmp_path)
    write(tmp_path, "tenants/support-reply.yaml", "fills: {tone: x}\n")
    write(tmp_path, "tiers/pro/old/support-reply.yaml", "fills: {tone: x}\n")
    write(tmp_path, "tenants/bad name/support-reply.yaml", "fills: {tone: x}\n")
    misplaced = (
        ": an override file goes directly in its layer's folder, tiers/<tier>/<slug>.yaml or "
        "tenants/<tenant>/<slug>.yaml; this one is not, so it is neither a base nor an override"
    )
    assert problems(tmp_path) == [
        "tenants/bad name/support-reply.yaml: the folder 'bad name' names the tenant of this "
        "override, and a tenant name must match [A-Za-z0-9._-]{1,64}",
        "tenants/support-reply.yaml" + misplaced,
        "tiers/pro/old/support-reply.yaml" + misplaced,
    ]


def test_fill_defaults_and_params_values_are_checked_in_the_file(tmp_path: Path) -> None:
    text = (
        "fills:\n  tone: [a]\n  domain: b\n  domain: c\ndefaults:\n  n: .inf\nparams:\n  model: x\n"
    )
    path = write(tmp_path, "tiers/pro/support-reply.yaml", text)
    assert [p.removeprefix(f"{path}") for p in lint_prompt_dir(path)] == [
        ":2: the fill of block 'tone' must be text ('' to leave it empty)",
        ":4: key 'fills.domain' appears twice",
        ":6: the default of 'n' must be a JSON value: numbers must be finite, not inf",
        ":7: params may not set 'model'",
    ]


def test_guardrails_have_no_overrides(tmp_path: Path) -> None:
    write(tmp_path, "_guardrails.md", "---\n---\nNever reveal secrets.\n")
    write(tmp_path, "tenants/acme/_guardrails.yaml", "fills: {x: y}\n")
    [found] = problems(tmp_path)
    assert found.startswith("tenants/acme/_guardrails.yaml: _guardrails is the platform's layer")


def test_the_same_override_twice_is_reported(tmp_path: Path) -> None:
    fleet(tmp_path)
    write(tmp_path, "tenants/acme/support-reply.md", "---\nfills: {tone: x}\n---\n")
    assert problems(tmp_path) == [
        f"tenants/acme/support-reply.yaml: slug 'tenant=acme/support-reply' is also defined "
        f"in {tmp_path}/tenants/acme/support-reply.md"
    ]


def test_two_hundred_tenant_overrides_and_one_broken(tmp_path: Path) -> None:
    """The scale the issue names: one base, 200 tenants. (How long it takes is measured by
    hand, not asserted: timings in the suite flake on a busy runner.)"""
    write(tmp_path, "support-reply.md", BASE)
    for number in range(200):
        fill = f'"Tenant {number} talks to {{{{ customer_title }}}}."'
        if number == 137:
            fill = '"Tenant 137 talks to {{ customer_name }}."'  # not a variable of the base
        text = f"fills:\n  tone: {fill}\ndefaults:\n  company: Company {number}\n"
        write(tmp_path, f"tenants/t{number}/support-reply.yaml", text)
    assert problems(tmp_path) == [
        "tenants/t137/support-reply.yaml:2: block 'tone': line 1: variables used but not "
        "declared: 'customer_name'"
    ]


# -- model variants: `<slug>@<variant>` files -------------------------------------------

CLAUDE = """\
---
match: [claude-*]
model: claude-3-5-sonnet-20241022
variables:
  company: {type: string, default: our company}
blocks:
  tone: Be brief.
param_bounds:
  temperature: [0.0, 1.0]
---
You are the assistant of {{ company }}. {{ block.tone }}
"""


def variant_fleet(folder: Path) -> Path:
    """``fleet`` with a claude variant of support-reply, overridden by acme and the
    enterprise tier (whose default-variant fills read variables claude does not declare)."""
    fleet(folder)
    write(folder, "support-reply@claude.md", CLAUDE)
    write(folder, "tiers/enterprise/support-reply@claude.yaml", "fills: {tone: Thorough.}\n")
    write(folder, "tenants/acme/support-reply@claude.yaml", "defaults: {company: Acme}\n")
    return folder


def test_variants_load_with_their_keys_every_base_first(tmp_path: Path) -> None:
    assert lint_prompt_dir(variant_fleet(tmp_path)) == []
    loaded = load_prompt_dir(tmp_path)
    enterprise, acme = Layer("tier", "enterprise"), Layer("tenant", "acme")
    assert [(p.relative_to(tmp_path).as_posix(), d.key) for p, d in loaded] == [
        ("summarize.yaml", PromptKey("summarize")),
        ("support-reply.md", PromptKey("support-reply")),
        ("support-reply@claude.md", PromptKey("support-reply", None, "claude")),
        ("tiers/enterprise/support-reply.yaml", PromptKey("support-reply", enterprise)),
        (
            "tiers/enterprise/support-reply@claude.yaml",
            PromptKey("support-reply", enterprise, "claude"),
        ),
        ("tenants/acme/summarize.md", PromptKey("summarize", acme)),
        ("tenants/acme/support-reply.yaml", PromptKey("support-reply", acme)),
        ("tenants/acme/support-reply@claude.yaml", PromptKey("support-reply", acme, "claude")),
        ("tenants/beta/support-reply.md", PromptKey("support-reply", Layer("tenant", "beta"))),
    ]
    assert loaded[2][1].match == ("claude-*",)


def test_an_override_of_a_variant_is_checked_against_the_variants_base(tmp_path: Path) -> None:
    variant_fleet(tmp_path)
    # Declared by the default variant's base, not by claude's: claude's is the one that counts.
    write(tmp_path, "tenants/acme/support-reply@claude.yaml", "fills: {domain: Anvils.}\n")
    assert problems(tmp_path) == [
        "tenants/acme/support-reply@claude.yaml:1: block 'domain' is not declared by base "
        "support-reply@claude.md (it declares: tone)"
    ]


def test_an_override_of_a_variant_without_its_base_file(tmp_path: Path) -> None:
    variant_fleet(tmp_path)
    write(tmp_path, "tenants/acme/support-reply@gpt.yaml", "fills: {tone: Formal.}\n")
    assert problems(tmp_path) == [
        f"tenants/acme/support-reply@gpt.yaml: no base prompt 'support-reply@gpt' in "
        f"{tmp_path}: an override is checked against its base's file in the same folder "
        "(support-reply@gpt.md or .yaml); lint the folder that holds both (an override of "
        "variant 'gpt' is checked against that variant's base, not support-reply's)"
    ]


def test_a_default_override_is_checked_against_the_variants_its_layer_does_not_override(
    tmp_path: Path,
) -> None:
    """Without its own override of claude, the enterprise tier's default-variant override
    is what its claude requests get: it must fit claude's base too."""
    variant_fleet(tmp_path)
    (tmp_path / "tiers/enterprise/support-reply@claude.yaml").unlink()
    assert problems(tmp_path) == [
        "tiers/enterprise/support-reply.yaml:3: block 'tone': line 1: variables used but not "
        "declared: 'customer_title' (this override also serves variant 'claude', of which "
        "tier enterprise has no override of its own)"
    ]


def test_variants_only_their_names_order_are_a_warning(tmp_path: Path) -> None:
    fleet(tmp_path)
    write(tmp_path, "summarize@claude.md", "---\nmatch: [claude-*]\n---\nSummarize.\n")
    # 7 literal characters each, like claude-*; a model matches both.
    text = "---\nauthor: ada\nmatch: ['*-sonnet*']\n---\nSummarize.\n"
    sonnet = write(tmp_path, "summarize@sonnet.md", text)
    found = lint_prompts(tmp_path)
    assert found.problems == []
    assert found.warnings == [
        f"{sonnet}:3: warning: variant 'sonnet' and variant 'claude' (summarize@claude.md) "
        "both match models such as 'claude-sonnet', at the same specificity (7 literal "
        "characters in the most literal pattern): such a request gets 'claude', the first by "
        "name; make one variant's patterns more specific, or keep them apart"
    ]
    assert len(load_prompt_dir(tmp_path)) == 8  # a warning does not stop a push
    linted = CliRunner().invoke(main, ["prompts", "lint", str(tmp_path)])
    assert linted.exit_code == 0, linted.output
    assert linted.stderr == found.warnings[0] + "\n"

    # The more specific one wins, as meant; and patterns no model matches both of are apart.
    for patterns in ("['*-3-5-sonnet*']", "[gpt-4o-*]"):
        write(tmp_path, "summarize@sonnet.md", f"---\nmatch: {patterns}\n---\nSummarize.\n")
        assert lint_prompts(tmp_path).warnings == []
