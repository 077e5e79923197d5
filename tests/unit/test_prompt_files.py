from __future__ import annotations

from pathlib import Path

import pytest

from proxy.prompt_key import PromptKey
from proxy.registry.models import BlockSpec, VariableSpec
from proxy.registry.prompt_files import (
    PromptFileError,
    lint_prompt_dir,
    load_prompt_dir,
    load_prompt_file,
)
from proxy.registry.templates import PromptRenderer

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "prompts"

SUPPORT = """\
---
variables:
  - name: customer_name
    type: string
  - name: tone
    default: friendly
model: gpt-4o-2024-08-06
params:
  temperature: 0.3
author: ada
changelog: first
---
Hello {{ customer_name }}.
Be {{ tone }}.
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def test_markdown_file(tmp_path: Path) -> None:
    draft = load_prompt_file(write(tmp_path, "support-reply.md", SUPPORT))
    assert draft.key == PromptKey("support-reply")
    assert draft.template == "Hello {{ customer_name }}.\nBe {{ tone }}.\n"
    assert draft.variables == (
        VariableSpec("customer_name", "string"),
        VariableSpec("tone", None, "friendly", True),
    )
    assert draft.model == "gpt-4o-2024-08-06"
    assert draft.params == {"temperature": 0.3}
    assert (draft.author, draft.changelog) == ("ada", "first")


def test_body_is_kept_byte_for_byte(tmp_path: Path) -> None:
    body = "\n  indented\r\n{{ x }}\n\n"
    text = "---\r\nslug: s\r\nvariables: [x]\r\n---\r\n" + body
    assert load_prompt_file(write(tmp_path, "a.md", text)).template == body
    no_newline = load_prompt_file(write(tmp_path, "b.md", "---\nslug: b\n---\nend"))
    assert no_newline.template == "end"


def test_yaml_file_and_mapping_variables(tmp_path: Path) -> None:
    text = """\
slug: classify
variables:
  labels: {type: list, default: [a, b]}
  strict: boolean
  notes:
template: |
  Labels: {{ labels|join(", ") }}{{ strict }}{{ notes }}
"""
    draft = load_prompt_file(write(tmp_path, "x.yml", text))
    assert draft.key == PromptKey("classify")
    assert draft.template == 'Labels: {{ labels|join(", ") }}{{ strict }}{{ notes }}\n'
    assert draft.variables == (
        VariableSpec("labels", "list", ["a", "b"], True),
        VariableSpec("strict", "boolean"),
        VariableSpec("notes"),
    )


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PromptFileError) as info:
        load_prompt_file(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_missing_and_unclosed_front_matter(tmp_path: Path) -> None:
    [found] = problems_of(write(tmp_path, "a.md", "Hello"))
    assert found.endswith("a.md:1: front matter missing: the file must start with a line '---'")
    [found] = problems_of(write(tmp_path, "b.md", "---\nslug: b\nHello"))
    assert "not closed" in found


def test_invalid_yaml_has_the_file_line(tmp_path: Path) -> None:
    [found] = problems_of(write(tmp_path, "a.md", "---\nslug: a\nvariables: [x\n---\nHi"))
    assert ":4: invalid YAML: expected ',' or ']'" in found  # where the list should end
    [found] = problems_of(write(tmp_path, "b.md", "---\nslug: a\nmodel: a: b\n---\nHi"))
    assert ":3: invalid YAML" in found


def test_template_lines_are_file_lines(tmp_path: Path) -> None:
    text = "---\nvariables: [name]\n---\nline 4\n{{ name }}\n{{ nope }}\n"
    [found] = problems_of(write(tmp_path, "a.md", text))
    assert found.endswith("a.md:6: variables used but not declared: 'nope'")
    text = "slug: y\ntemplate: |\n  line 3\n  {{ ''.__class__ }}\n"
    [found] = problems_of(write(tmp_path, "y.yaml", text))
    assert ":4: attribute '__class__' is private" in found


def test_every_problem_in_one_file(tmp_path: Path) -> None:
    text = """\
---
slug: bad slug!
colour: red
variables:
  - name: ok
  - name: 2bad
  - name: typed
    type: str
  - name: n
    type: integer
    default: "3"
    colour: x
params:
  model: x
author: [1]
---
{{ ok }} {{ missing }}
{% include 'x' %}
"""
    found = problems_of(write(tmp_path, "p.md", text))
    expected = [
        ":2: bad slug 'bad slug!'",
        ":3: unknown key 'colour'",
        ":6: invalid variable name '2bad'",
        ":7: variable 'typed' has unknown type 'str'",
        ":9: variable 'n': unknown keys colour",
        ":9: default '3' of variable 'n' is not of type integer",
        ":13: params may not set 'model'",
        ":15: author must be text",
        ":17: variables used but not declared: 'missing'",
        ":18: {% include %} is not available",
    ]
    assert len(found) == len(expected), found
    for line, fragment in zip(found, expected, strict=True):
        assert fragment in line, (line, fragment)


def test_empty_template_and_duplicate_keys(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, "e.md", "---\nauthor: a\nauthor: b\n---\n\n"))
    assert any(":3: key 'author' appears twice" in p for p in found)
    assert any("template is empty" in p for p in found)


def test_directory_reports_every_file(tmp_path: Path) -> None:
    write(tmp_path, "good.md", SUPPORT)
    write(tmp_path, "README.md", "# not a prompt")
    write(tmp_path, ".hidden/x.md", "not a prompt")
    write(tmp_path, "notes.txt", "ignored")
    write(tmp_path, "a/broken-syntax.md", "---\n---\nok\n{% if %}\n")
    write(tmp_path, "a/undeclared.yaml", "template: |\n  {{ who }}\n")
    write(tmp_path, "b/dup.md", "---\nslug: good\n---\nagain\n")
    write(tmp_path, "c/no-front.md", "just text\n")
    lint = lint_prompt_dir(tmp_path)
    with pytest.raises(PromptFileError) as info:
        load_prompt_dir(tmp_path)
    assert info.value.problems == lint
    assert lint == [
        f"{tmp_path}/a/broken-syntax.md:4: syntax error: "
        "Expected an expression, got 'end of statement block'",
        f"{tmp_path}/a/undeclared.yaml:2: variables used but not declared: 'who'",
        f"{tmp_path}/c/no-front.md:1: front matter missing: the file must start with a line '---'",
        f"{tmp_path}/good.md: slug 'good' is also defined in {tmp_path}/b/dup.md",
    ]


def test_eval_suites_beside_the_prompts_are_not_prompt_files(tmp_path: Path) -> None:
    write(tmp_path, "support-reply.md", SUPPORT)
    # Neither would load as a prompt: a suite has keys no prompt file has.
    suite = "slug: support-reply\ncases: []\n"
    write(tmp_path, "support-reply.eval.yaml", suite)
    write(tmp_path, "tenants/acme/support-reply.eval.yml", suite)
    assert lint_prompt_dir(tmp_path) == []
    assert [path.name for path, _ in load_prompt_dir(tmp_path)] == ["support-reply.md"]


def test_directory_loads_sorted(tmp_path: Path) -> None:
    write(tmp_path, "z.md", "---\n---\nz\n")
    write(tmp_path, "sub/a.yaml", "template: a\n")
    loaded = load_prompt_dir(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), d.key.slug) for p, d in loaded] == [
        ("sub/a.yaml", "a"),
        ("z.md", "z"),
    ]
    assert lint_prompt_dir(tmp_path) == []


def test_lint_edge_cases(tmp_path: Path) -> None:
    assert lint_prompt_dir(tmp_path) == [f"{tmp_path}: no prompt files (*.md, *.yaml, *.yml) found"]
    assert "not a file or directory" in lint_prompt_dir(tmp_path / "missing")[0]
    single = write(tmp_path, "one.md", "---\n---\n{{ x }}\n")
    assert lint_prompt_dir(single) == [f"{single}:3: variables used but not declared: 'x'"]


def test_shipped_examples_load_lint_clean_and_render() -> None:
    assert lint_prompt_dir(EXAMPLES) == []
    drafts = {draft.key.slug: draft for _, draft in load_prompt_dir(EXAMPLES)}
    assert {"support-reply", "summarize", "classify-ticket"} <= drafts.keys()
    assert any(d.model for d in drafts.values())
    renderer = PromptRenderer()
    support = drafts["support-reply"]
    values = {"customer_name": "Ada", "product": "Acme Cloud"}
    text = renderer.render("s", support.template, support.variables, values)
    assert "Ada" in text
    assert "Acme Cloud" in text
    assert "{" not in text
    for slug in ("summarize", "classify-ticket"):
        draft = drafts[slug]
        assert "{" not in renderer.render(slug, draft.template, draft.variables, {})


def test_numbers_a_version_cannot_keep_are_problems_with_their_place(tmp_path: Path) -> None:
    """YAML reads `.nan`, `.inf` and integers past 64 bits; the registry would store the
    first two as null and cannot encode the third, so lint and push refuse them here."""
    text = """\
---
variables:
  - name: n
    default: .inf
params:
  temperature: .nan
---
{{ n }}
"""
    found = problems_of(write(tmp_path, "p.md", text))
    assert len(found) == 2, found
    assert ":3: default of variable 'n' must be a JSON value: numbers must be finite" in found[0]
    assert ":5: params.temperature: numbers must be finite" in found[1]
    huge = "---\nparams:\n  logit_bias: {'50256': [1, 99999999999999999999]}\n---\nHi\n"
    found = problems_of(write(tmp_path, "q.md", huge))
    assert len(found) == 1, found
    assert ":2: params.logit_bias.50256[1]: integers must fit in 64 bits" in found[0]


def test_a_file_may_keep_the_callers_system_messages(tmp_path: Path) -> None:
    kept = load_prompt_file(write(tmp_path, "a.md", "---\ncaller_system: after\n---\nHi.\n"))
    dropped = load_prompt_file(write(tmp_path, "b.md", "---\nauthor: a\n---\nHi.\n"))
    assert (kept.caller_system, dropped.caller_system) == ("after", "drop")
    # Only a file that says so hashes differently: older versions keep their hashes.
    assert kept.content_sha256() != dropped.content_sha256()
    assert (
        load_prompt_file(
            write(tmp_path, "c.md", "---\ncaller_system: drop\n---\nHi.\n")
        ).content_sha256()
        == dropped.content_sha256()
    )
    found = problems_of(write(tmp_path, "d.md", "---\ncaller_system: before\n---\nHi.\n"))
    assert len(found) == 1
    assert ":2: caller_system must be one of drop, after" in found[0]


def test_reserved_slugs_are_checked_in_the_file(tmp_path: Path) -> None:
    rules = "---\nvariables:\n  - name: who\n---\nNever {{ who }}.\n"
    found = problems_of(write(tmp_path, "_guardrails.md", rules))
    assert len(found) == 1
    assert "variable 'who' needs a default" in found[0]
    found = problems_of(write(tmp_path, "_mine.md", "Hi.\n"))
    assert len(found) == 1
    assert "reserved" in found[0]
    fine = "---\nvariables:\n  - name: who\n    default: secrets\n---\nNever {{ who }}.\n"
    assert load_prompt_file(write(tmp_path, "_guardrails.md", fine)).key == PromptKey("_guardrails")


def test_guardrails_that_cannot_render_alone_are_a_lint_problem(tmp_path: Path) -> None:
    found = problems_of(
        write(tmp_path, "_guardrails.md", "---\nauthor: a\n---\nNever {{ 1/0 }}.\n")
    )
    assert len(found) == 1
    assert "must render with its defaults alone" in found[0]


LAYERED = """\
---
variables:
  company: {type: string, default: our company}
blocks:
  tone:
    default: Be concise and friendly.
    max_chars: 200
    description: How the assistant sounds.
  domain: ""
param_bounds:
  temperature: [0.0, 1.0]
  max_tokens: [1, 2048]
params:
  temperature: 0.3
---
You are the support assistant of {{ company }}.
{{ block.tone }}
{{ block.domain }}
"""


def test_a_base_declares_blocks_and_param_bounds(tmp_path: Path) -> None:
    draft = load_prompt_file(write(tmp_path, "support-reply.md", LAYERED))
    assert draft.key == PromptKey("support-reply")
    assert draft.blocks == (
        BlockSpec("tone", "Be concise and friendly.", 200),
        BlockSpec("domain", "", 2000),
    )
    assert draft.param_bounds == {"temperature": (0.0, 1.0), "max_tokens": (1, 2048)}
    text = "slug: s\nblocks: {tone: Short.}\ntemplate: |\n  {{ block.tone }}\n"
    shorthand = load_prompt_file(write(tmp_path, "s.yaml", text))
    assert shorthand.blocks == (BlockSpec("tone", "Short."),)


def test_block_and_bounds_problems_have_their_lines(tmp_path: Path) -> None:
    text = """\
---
blocks:
  tone: {default: Be brief., max_chars: 0}
  unused: x
  long: {default: "{{ nope }}", colour: red}
  unused: again
param_bounds:
  temperature: [1.0, 0.0]
  top_p: 0.5
  model: [0, 1]
params:
  max_tokens: 10
fills:
  tone: Formal.
---
{{ block.tone }} {{ block.long }}
{{ block.missing }}
"""
    found = problems_of(write(tmp_path, "p.md", text))
    expected = [
        ":3: max_chars must be 1 to 100000",
        ":4: block 'unused' is declared but the template never reads block.unused",
        ":5: block 'long': unknown keys colour",
        ":5: block 'long': line 1: variables used but not declared: 'nope'",
        ":6: key 'blocks.unused' appears twice",
        ":8: bounds of 'temperature' must be two finite numbers, low <= high",
        ":9: the bounds of 'top_p' must be [low, high]",
        ":10: 'model' is not a parameter a layer can set",
        ":13: `fills` belongs to a tier's or tenant's override: put it in a file tiers/",
        ":17: block 'missing' is used but not declared in blocks",
    ]
    assert len(found) == len(expected), found
    for line, fragment in zip(found, expected, strict=True):
        assert fragment in line, (line, fragment)


def test_a_base_keeps_its_own_params_within_its_bounds(tmp_path: Path) -> None:
    text = "---\nparam_bounds:\n  temperature: [0, 0.5]\nparams:\n  temperature: 0.9\n---\nHi\n"
    [found] = problems_of(write(tmp_path, "p.md", text))
    assert ":5: the base's own temperature 0.9 is outside its bounds [0, 0.5]" in found


def test_guardrails_declare_no_blocks(tmp_path: Path) -> None:
    text = "---\nblocks: {extra: x}\n---\nNever.\n{{ block.extra }}\n"
    found = problems_of(write(tmp_path, "_guardrails.md", text))
    assert any(":2: _guardrails has no overrides, so nothing could fill" in p for p in found), found


# -- model variants: the file name names the variant ------------------------------------

CLAUDE = """\
---
match: [claude-*, claude-3-5-sonnet*]
model: claude-3-5-sonnet-20241022
---
Hello from Claude.
"""


def test_a_variants_base_is_named_by_its_file_and_declares_match(tmp_path: Path) -> None:
    draft = load_prompt_file(write(tmp_path, "support@claude.md", CLAUDE))
    assert draft.key == PromptKey("support", None, "claude")
    assert draft.match == ("claude-*", "claude-3-5-sonnet*")
    assert draft.model == "claude-3-5-sonnet-20241022"
    # `slug:` renames the part before the @ only; a YAML pattern starting with * is quoted.
    text = "slug: support\nmatch: ['*-mini']\ntemplate: Hi\n"
    renamed = load_prompt_file(write(tmp_path, "mini-reply@mini.yaml", text))
    assert (renamed.key, renamed.match) == (PromptKey("support", None, "mini"), ("*-mini",))


def test_match_is_required_on_a_variants_base_and_refused_elsewhere(tmp_path: Path) -> None:
    missing = write(tmp_path, "support@claude.md", "---\nauthor: ada\n---\nHello.\n")
    # Nothing to point at: the key is missing, so the file is named alone.
    assert problems_of(missing) == [
        f"{missing}: variant 'claude' needs `match`: the request models it serves (glob "
        "patterns such as claude-*)"
    ]
    empty = write(tmp_path, "support@gpt.yaml", "template: Hi\nmatch: []\n")
    [found] = problems_of(empty)
    assert found.startswith(f"{empty}:2: variant 'gpt' needs `match`")

    default = write(tmp_path, "support.md", "---\nauthor: ada\nmatch: [claude-*]\n---\nHi.\n")
    [found] = problems_of(default)
    assert found.startswith(f"{default}:3: `match` belongs to a model variant")
    assert found.endswith("; a variant's base is a file named support@<variant>")

    override = write(tmp_path, "tenants/acme/support@claude.yaml", "fills: {}\nmatch: [x]\n")
    [found] = problems_of(override)
    assert found.startswith(f"{override}:2: `match` belongs to the base, not to an override")


def test_match_patterns_are_checked_at_their_key(tmp_path: Path) -> None:
    text = "template: Hi\nauthor: ada\nmatch: claude-*\n"
    assert problems_of(write(tmp_path, "a@claude.yaml", text)) == [
        f"{tmp_path}/a@claude.yaml:3: match must be a list of model patterns, e.g. "
        '[claude-*] (quote one that starts with *: ["*-mini"])'
    ]
    text = "template: Hi\nmatch:\n  - claude-*\n  - claude 3\n"
    assert problems_of(write(tmp_path, "b@claude.yaml", text)) == [
        f"{tmp_path}/b@claude.yaml:2: 'claude 3' is not a model pattern"
    ]


def test_a_variant_is_named_by_the_file_name_only(tmp_path: Path) -> None:
    [found] = problems_of(write(tmp_path, "support@.md", CLAUDE))
    assert found.endswith(
        "support@.md: the file name 'support@.md' names a model variant, so it must be "
        "<slug>@<variant>.md, each part matching [A-Za-z0-9._-]{1,64}"
    )
    text = "---\nvariant: claude\nslug: support@claude\n---\nHi.\n"
    assert [p.split(": ", 1)[1] for p in problems_of(write(tmp_path, "s.md", text))] == [
        "`variant` is not a key: the file name names the model variant, "
        "<slug>@<variant>.md or .yaml (also in tiers/<tier>/ and tenants/<tenant>/)",
        "bad slug 'support@claude': must match [A-Za-z0-9._-]{1,64}; a model variant is "
        "named by the file name: support@claude.md",
    ]
