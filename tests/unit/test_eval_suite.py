"""Eval suite files: what a suite holds once read, every problem an author can make and how
it is reported, and that the CLI's reading (YAML) and the server's (JSON of ``to_dict``)
agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.evals.assertions import (
    Contains,
    FinishReason,
    JsonSchema,
    Judge,
    Length,
    NotContains,
    Regex,
    ToolCalled,
)
from proxy.evals.suite import (
    Case,
    Suite,
    SuiteError,
    find_suite,
    load_suite_file,
    load_suite_text,
    parse_suite,
    suite_path_for,
)
from proxy.registry.prompt_files import load_prompt_file

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "prompts"

FULL = """\
slug: support-reply
samples: 2
model: gpt-4o-mini
tenant: acme
variant: claude
cases:
  - name: refund-request
    variables: {customer_name: Ana, product: Acme Router}
    messages:
      - {role: user, content: "My router broke, I want a refund."}
    params: {temperature: 0}
    samples: 5
    assert:
      - contains: colleague
      - {type: not_contains, value: refund is approved, case_sensitive: false}
      - {type: regex, pattern: "(?i)sorry|apolog"}
      - {type: json_schema, schema: {type: object, required: [category]}}
      - {type: finish_reason, value: [stop, length]}
      - {type: tool_called, name: lookup_order, arguments: {order_id: "123"}}
      - {type: length, min_chars: 20, max_chars: 900}
      - type: judge
        rubric: Polite and does not promise a refund
        threshold: 0.7
        judge: judge.helpfulness
"""


def problems(data: Any) -> list[str]:
    """What the server says of a JSON body."""
    with pytest.raises(SuiteError) as info:
        parse_suite(data)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def text_problems(text: str) -> list[str]:
    """What the CLI says of a file's text."""
    with pytest.raises(SuiteError) as info:
        load_suite_text(text, "s.eval.yaml")
    return info.value.problems


def suite_of(*assertions: Any, **case: Any) -> dict[str, Any]:
    """A one-case suite body with these assertions and case keys."""
    body = {
        "name": "c",
        "messages": [{"role": "user", "content": "hi"}],
        "assert": list(assertions),
    }
    return {"slug": "s", "cases": [{**body, **case}]}


# -- what a suite holds --------------------------------------------------------------------


def test_a_suite_in_full() -> None:
    suite = load_suite_text(FULL, "support-reply.eval.yaml")
    assert (suite.slug, suite.samples, suite.model, suite.tenant, suite.variant) == (
        "support-reply",
        2,
        "gpt-4o-mini",
        "acme",
        "claude",
    )
    assert suite.cases == (
        Case(
            name="refund-request",
            variables={"customer_name": "Ana", "product": "Acme Router"},
            messages=({"role": "user", "content": "My router broke, I want a refund."},),
            assertions=(
                Contains("colleague"),
                NotContains("refund is approved", case_sensitive=False),
                Regex(re.compile("(?i)sorry|apolog")),
                JsonSchema({"type": "object", "required": ["category"]}),
                FinishReason(("stop", "length")),
                ToolCalled("lookup_order", {"order_id": "123"}),
                Length(min_chars=20, max_chars=900),
                Judge("Polite and does not promise a refund", 0.7, "judge.helpfulness"),
            ),
            tenant=None,
            variant=None,
            samples=5,
            params={"temperature": 0},
        ),
    )
    assert re.fullmatch("[0-9a-f]{64}", suite.sha256)


def test_defaults() -> None:
    suite = parse_suite(suite_of({"contains": "x"}))
    assert (suite.samples, suite.model, suite.tenant, suite.variant) == (3, None, None, None)
    (case,) = suite.cases
    assert (case.variables, case.params, case.samples, case.tenant, case.variant) == (
        {},
        {},
        None,
        None,
        None,
    )


def test_the_shorthand_is_the_full_form() -> None:
    short = [
        {"contains": "a"},
        {"contains": "a", "case_sensitive": False},
        {"not_contains": "b"},
        {"regex": "c+"},
        {"json_schema": {"type": "object"}},
        {"finish_reason": "stop"},
        {"tool_called": "t", "arguments": {"x": 1}},
    ]
    full = [
        {"type": "contains", "value": "a", "case_sensitive": True},
        {"type": "contains", "value": "a", "case_sensitive": False},
        {"type": "not_contains", "value": "b"},
        {"type": "regex", "pattern": "c+"},
        {"type": "json_schema", "schema": {"type": "object"}},
        {"type": "finish_reason", "value": ["stop"]},
        {"type": "tool_called", "name": "t", "arguments": {"x": 1}},
    ]
    assert parse_suite(suite_of(*short)) == parse_suite(suite_of(*full))
    assert parse_suite(suite_of(*short)).sha256 == parse_suite(suite_of(*full)).sha256


def test_the_example_suites_load_beside_their_prompts() -> None:
    for prompt in ("support-reply.md", "classify-ticket.yaml"):
        prompt_file = EXAMPLES / prompt
        path = suite_path_for(prompt_file)
        assert path.is_file(), path
        suite = load_suite_file(path)
        assert suite.slug == load_prompt_file(prompt_file).key.slug
        assert find_suite(EXAMPLES, suite.slug) == path
        assert parse_suite(suite.to_dict(), source=str(path)) == suite
        assert len(suite.cases) >= 3
        variables = {v.name for v in load_prompt_file(prompt_file).variables}
        for case in suite.cases:
            assert set(case.variables) <= variables, case.name


# -- problems --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], "a suite is a mapping: slug, cases (and samples, model, tenant, variant)"),
        (
            {**suite_of({"contains": "x"}), "sampels": 2},
            "unknown key 'sampels' (did you mean samples?); a suite has cases, model, samples, "
            "slug, tenant, variant",
        ),
        (
            {
                "slug": "a b",
                **{k: v for k, v in suite_of({"contains": "x"}).items() if k != "slug"},
            },
            "slug must name a prompt, matching [A-Za-z0-9._-]{1,64} (got 'a b')",
        ),
        (
            {"slug": "s", "cases": []},
            "cases must be a list of at least one case (name, messages, assert)",
        ),
        (
            {**suite_of({"contains": "x"}), "samples": 0},
            "samples must be a whole number from 1 to 50",
        ),
        (
            {**suite_of({"contains": "x"}), "samples": 51},
            "samples must be a whole number from 1 to 50",
        ),
        (
            {**suite_of({"contains": "x"}), "samples": True},
            "samples must be a whole number from 1 to 50",
        ),
        (
            {**suite_of({"contains": "x"}), "model": ""},
            "model must be a model name such as gpt-4o-mini (got '')",
        ),
        (
            {**suite_of({"contains": "x"}), "tenant": "a/b"},
            "tenant must match [A-Za-z0-9._-]{1,64} (got 'a/b')",
        ),
        (
            {"slug": "s", "cases": ["x"]},
            "cases[0]: a case is a mapping: name, messages, assert (and variables, ...)",
        ),
        (
            suite_of({"contains": "x"}, name=""),
            "cases[0]: every case needs a name, one line of text, at most 200 characters (got '')",
        ),
        (
            suite_of({"contains": "x"}, asserts=[]),
            "case 'c': unknown key 'asserts' (did you mean assert?); a case has assert, messages, "
            "name, params, samples, tenant, variables, variant",
        ),
        (
            suite_of({"contains": "x"}, samples=99),
            "case 'c': samples must be a whole number from 1 to 50",
        ),
        (
            suite_of({"contains": "x"}, variant="@x"),
            "case 'c': variant must match [A-Za-z0-9._-]{1,64} (got '@x')",
        ),
        (
            suite_of({"contains": "x"}, variables=[1]),
            "case 'c': variables must be a mapping (name: value)",
        ),
        (
            suite_of({"contains": "x"}, params={"stream": True}),
            "case 'c': params may not set 'stream': the runner reads whole answers",
        ),
        (
            suite_of({"contains": "x"}, params={"n": 3}),
            "case 'c': params may not set 'n': each answer is one choice; ask for more with "
            "`samples`",
        ),
        (
            suite_of({"contains": "x"}, params={"messages": []}),
            "case 'c': params may not set 'messages': a case's messages are its `messages`",
        ),
        (
            suite_of({"contains": "x"}, params={"seed": 2**70}),
            "case 'c': params.seed: integers must fit in 64 bits (-2^63 to 2^63-1)",
        ),
        (
            suite_of({"contains": "x"}, messages=[]),
            "case 'c': messages must be a list of at least one message, e.g. "
            "[{role: user, content: Hi}]",
        ),
        (
            suite_of({"contains": "x"}, messages=[{"role": "bot", "content": "hi"}]),
            "case 'c' messages[0]: role must be one of assistant, developer, system, tool, user",
        ),
        (
            suite_of({"contains": "x"}, messages=[{"role": "user", "content": 3}]),
            "case 'c' messages[0]: content must be text (or a list of parts)",
        ),
        (
            suite_of({"contains": "x"}, messages=["hi"]),
            "case 'c' messages[0]: a message is a mapping: {role: user, content: TEXT}",
        ),
        (
            suite_of(),
            "case 'c': assert must be a list of at least one assertion, e.g. [contains: TEXT]",
        ),
        (
            suite_of("colleague"),
            "case 'c' assert[0]: an assertion is a mapping, e.g. `- contains: TEXT` or "
            "`- {type: contains, value: TEXT}`",
        ),
        (
            suite_of({}),
            "case 'c' assert[0]: an empty assertion; write `- contains: TEXT` or "
            "`- {type: contains, value: TEXT}`",
        ),
        (
            suite_of({"includes": "x"}),
            "case 'c' assert[0]: no assertion kind among 'includes'; write `- contains: TEXT` or "
            "`- {type: contains, value: TEXT}`",
        ),
        (
            suite_of({"not-contains": "x"}),
            "case 'c' assert[0]: unknown assertion type 'not-contains' "
            "(did you mean not_contains?); "
            "write `- contains: TEXT` or `- {type: contains, value: TEXT}`",
        ),
        (
            suite_of({"type": "matches", "pattern": "x"}),
            "case 'c' assert[0]: unknown assertion type 'matches' (one of contains, not_contains, "
            "regex, json_schema, finish_reason, tool_called, length, judge, label)",
        ),
        (
            suite_of({"contains": "x", "regex": "y"}),
            "case 'c' assert[0]: one assertion per item, this one has contains and regex",
        ),
        (
            suite_of({"contains": "x", "value": "y"}),
            "case 'c' assert[0]: 'value' is given twice, as contains: and as value:",
        ),
        (
            suite_of({"judge": "polite"}),
            "case 'c' assert[0]: write a judge assertion in full, {type: judge, rubric: TEXT, "
            "threshold: 0.7} (and judge: judge.NAME)",
        ),
        (
            suite_of({"length": {"max_words": 3}}),
            "case 'c' assert[0]: write a length assertion in full, {type: length, max_words: 150} "
            "(min_chars, max_chars, min_words, max_words)",
        ),
        (
            suite_of({"contains": "x", "case": False}),
            "case 'c' assert[0] (contains): unknown field 'case' "
            "(a contains has: case_sensitive, value)",
        ),
        (
            suite_of({"contains": ""}),
            "case 'c' assert[0] (contains): value must be non-empty text (got ''; quote numbers)",
        ),
        (
            suite_of({"not_contains": 404}),
            "case 'c' assert[0] (not_contains): value must be non-empty text "
            "(got 404; quote numbers)",
        ),
        (
            suite_of({"contains": "x", "case_sensitive": "no"}),
            "case 'c' assert[0] (contains): case_sensitive must be true or false",
        ),
        (
            suite_of({"regex": "(?i)sorry|apolog("}),
            "case 'c' assert[0] (regex): bad regex '(?i)sorry|apolog(': missing ), unterminated "
            "subpattern at position 16",
        ),
        (
            suite_of({"type": "regex"}),
            "case 'c' assert[0] (regex): pattern must be non-empty text "
            "(got nothing; quote numbers)",
        ),
        (
            suite_of({"json_schema": "object"}),
            "case 'c' assert[0] (json_schema): schema must be a JSON Schema object, e.g. "
            "{type: object, ...}",
        ),
        (
            suite_of({"json_schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}),
            "case 'c' assert[0] (json_schema): not a valid JSON Schema (Draft 2020-12) at "
            "schema.properties.a.type: 'strin' is not valid under any of the given schemas",
        ),
        (
            suite_of({"json_schema": {"properties": {"a": {"$ref": "https://x.test/a.json"}}}}),
            "case 'c' assert[0] (json_schema): schema.properties.a: $ref 'https://x.test/a.json' "
            "is outside the schema, and schemas are never fetched: put it under $defs and refer "
            "to it as #/$defs/NAME",
        ),
        (
            suite_of({"finish_reason": []}),
            "case 'c' assert[0] (finish_reason): value must be a finish reason (stop, length, "
            "tool_calls...) or a list",
        ),
        (
            suite_of({"tool_called": "t", "arguments": ["x"]}),
            "case 'c' assert[0] (tool_called): arguments must be a mapping: argument -> the value "
            "it must have",
        ),
        (
            suite_of({"tool_called": "t", "arguments": {"x": float("nan")}}),
            "case 'c' assert[0] (tool_called): arguments.x: numbers must be finite, not nan",
        ),
        (
            suite_of({"type": "length"}),
            "case 'c' assert[0] (length): give at least one of min_chars, max_chars, min_words, "
            "max_words",
        ),
        (
            suite_of({"type": "length", "max_words": -1}),
            "case 'c' assert[0] (length): max_words must be a whole number, 0 or more",
        ),
        (
            suite_of({"type": "length", "min_words": 9, "max_words": 3}),
            "case 'c' assert[0] (length): min_words 9 is above max_words 3",
        ),
        (
            suite_of({"type": "judge", "rubric": "polite", "threshold": 70}),
            "case 'c' assert[0] (judge): threshold must be a number from 0 to 1 (the lowest "
            "passing score)",
        ),
        (
            suite_of({"type": "judge", "rubric": "polite"}),
            "case 'c' assert[0] (judge): threshold must be a number from 0 to 1 (the lowest "
            "passing score)",
        ),
        (
            suite_of({"type": "judge", "rubric": "polite", "threshold": 0.5, "judge": "helpful"}),
            "case 'c' assert[0] (judge): judge must name a judge prompt, judge.NAME "
            "(got 'helpful')",
        ),
        (
            suite_of({"type": "judge", "threshold": 0.5}),
            "case 'c' assert[0] (judge): rubric must be non-empty text "
            "(got nothing; quote numbers)",
        ),
    ],
)
def test_each_problem_is_said(body: Any, expected: str) -> None:
    assert problems(body) == [f"<suite>: {expected}"]


def test_case_names_are_unique() -> None:
    body = suite_of({"contains": "x"})
    body["cases"] = [body["cases"][0]] * 3
    assert problems(body) == [
        "<suite>: case 'c': the name is also that of cases[0]",
        "<suite>: case 'c': the name is also that of cases[0]",
    ]


def test_at_most_500_cases() -> None:
    one = suite_of({"contains": "x"})["cases"][0]
    body = {"slug": "s", "cases": [{**one, "name": f"c{i}"} for i in range(501)]}
    assert problems(body) == ["<suite>: a suite holds at most 500 cases (this one has 501)"]
    body["cases"].pop()
    assert len(parse_suite(body).cases) == 500


BROKEN = """\
slug: support-reply
samples: 0
cases:
  - name: refund
    messages:
      - {role: user, content: "I want a refund."}
    assert:
      - contains: colleague
      - {type: regex, pattern: "apolog("}
      - type: judge
        rubric: Polite
        threshold: 7
  - name: refund
    messages: [{role: robot, content: hi}]
    asserts:
      - contains: x
  - name: third
    messages: [{role: user, content: hi}]
    assert:
      - {type: tool_called, name: lookup, arguments: {day: 2024-05-01}}
      - {type: length}
"""


def test_every_problem_at_once_with_its_line_case_and_assertion() -> None:
    assert text_problems(BROKEN) == [
        "s.eval.yaml:2: samples must be a whole number from 1 to 50",
        "s.eval.yaml:9: case 'refund' assert[1] (regex): bad regex 'apolog(': missing ), "
        "unterminated subpattern at position 6",
        "s.eval.yaml:12: case 'refund' assert[2] (judge): threshold must be a number from 0 to 1 "
        "(the lowest passing score)",
        "s.eval.yaml:13: case 'refund': the name is also that of cases[0]",
        # A key left out: the line of its case.
        "s.eval.yaml:13: case 'refund': assert must be a list of at least one assertion, e.g. "
        "[contains: TEXT]",
        "s.eval.yaml:14: case 'refund' messages[0]: role must be one of assistant, developer, "
        "system, tool, user",
        "s.eval.yaml:15: case 'refund': unknown key 'asserts' (did you mean assert?); a case has "
        "assert, messages, name, params, samples, tenant, variables, variant",
        "s.eval.yaml:20: case 'third' assert[0] (tool_called): arguments.day: date is not a JSON "
        "value (quote it to make it text)",
        "s.eval.yaml:21: case 'third' assert[1] (length): give at least one of min_chars, "
        "max_chars, min_words, max_words",
    ]


def test_the_file_and_the_json_body_say_the_same() -> None:
    """The CLI reads a file, the server its JSON: the same problems, only located apart."""
    data = yaml.safe_load(BROKEN.replace("2024-05-01", "[1, 2]"))
    from_file = [
        re.sub(r"^s\.eval\.yaml:\d+: ", "", p) for p in text_problems(yaml.safe_dump(data))
    ]
    from_body = [p.removeprefix("<suite>: ") for p in problems(data)]
    assert sorted(from_file) == sorted(from_body)
    assert len(from_body) == 8


def test_yaml_problems() -> None:
    assert text_problems("slug: x\ncases:\n  - name: [unclosed\n") == [
        "s.eval.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>'"
    ]
    assert text_problems("- a\n- b\n") == [
        "s.eval.yaml: a suite is a mapping: slug, cases (and samples, model, tenant, variant)"
    ]
    twice = "slug: s\ncases:\n  - name: c\n    name: d\n    messages: [{role: user, content: hi}]\n"
    assert text_problems(twice + "    assert: [{contains: x}]\n") == [
        "s.eval.yaml:4: key 'name' appears twice in cases[0]"
    ]
    # A key left out has no line: the problem names the file.
    assert text_problems("slug: s\n") == [
        "s.eval.yaml: cases must be a list of at least one case (name, messages, assert)"
    ]


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "x.eval.yaml"
    path.write_bytes(b"slug: \xff\n")
    with pytest.raises(SuiteError) as info:
        load_suite_file(path)
    assert info.value.problems == [f"{path}: not UTF-8 text (byte 6)"]
    assert info.value.source == str(path)
    with pytest.raises(SuiteError) as info:
        load_suite_file(tmp_path / "missing.eval.yaml")
    assert info.value.problems == [
        f"{tmp_path}/missing.eval.yaml: cannot read: No such file or directory"
    ]


# -- the file's name and place ---------------------------------------------------------------

CASES_ONLY = (
    "cases:\n  - name: c\n    messages: [{role: user, content: hi}]\n    assert: [{contains: x}]\n"
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_name_and_folder_fill_slug_variant_and_tenant(tmp_path: Path) -> None:
    suite = load_suite_file(write(tmp_path, "tenants/acme/support@claude.eval.yaml", CASES_ONLY))
    assert (suite.slug, suite.variant, suite.tenant) == ("support", "claude", "acme")
    # The server gets them from the body.
    assert parse_suite(suite.to_dict()) == suite
    plain = load_suite_file(write(tmp_path, "support.eval.yml", CASES_ONLY))
    assert (plain.slug, plain.variant, plain.tenant) == ("support", None, None)
    # A file outside tenants/ may still say whom it runs as.
    said = load_suite_file(write(tmp_path, "other.eval.yaml", "tenant: globex\n" + CASES_ONLY))
    assert said.tenant == "globex"


def test_a_key_that_disagrees_with_the_file_name_or_folder(tmp_path: Path) -> None:
    text = "slug: other\nvariant: gpt\ntenant: globex\n" + CASES_ONLY
    path = write(tmp_path, "tenants/acme/support@claude.eval.yaml", text)
    with pytest.raises(SuiteError) as info:
        load_suite_file(path)
    name = "support@claude.eval.yaml"
    assert info.value.problems == [
        f"{path}:1: slug 'other' disagrees with the file name ({name}): 'support'",
        f"{path}:2: variant 'gpt' disagrees with the file name ({name}): 'claude'",
        f"{path}:3: tenant 'globex' disagrees with the folder ({name}): 'acme'",
    ]


def test_suite_path_for() -> None:
    assert suite_path_for(Path("p/support-reply.md")) == Path("p/support-reply.eval.yaml")
    assert suite_path_for(Path("classify-ticket.yaml")) == Path("classify-ticket.eval.yaml")
    assert suite_path_for(Path("classify-ticket.yml")) == Path("classify-ticket.eval.yaml")
    assert suite_path_for(Path("x@claude.md")) == Path("x@claude.eval.yaml")
    assert suite_path_for(Path("tenants/acme/x.yaml")) == Path("tenants/acme/x.eval.yaml")
    with pytest.raises(ValueError, match="not a prompt file"):
        suite_path_for(Path("x.eval.yaml"))
    with pytest.raises(ValueError, match="not a prompt file"):
        suite_path_for(Path("notes.txt"))


def test_find_suite_takes_the_most_specific(tmp_path: Path) -> None:
    assert find_suite(tmp_path, "x") is None
    base = write(tmp_path, "x.eval.yml", CASES_ONLY)
    assert find_suite(tmp_path, "x", tenant="acme", variant="claude") == base
    variant = write(tmp_path, "x@claude.eval.yaml", CASES_ONLY)
    assert find_suite(tmp_path, "x", variant="claude") == variant
    assert find_suite(tmp_path, "x", tenant="acme", variant="claude") == variant
    tenant = write(tmp_path, "tenants/acme/x.eval.yaml", CASES_ONLY)
    assert find_suite(tmp_path, "x", tenant="acme", variant="claude") == tenant
    both = write(tmp_path, "tenants/acme/x@claude.eval.yaml", CASES_ONLY)
    assert find_suite(tmp_path, "x", tenant="acme", variant="claude") == both
    assert find_suite(tmp_path, "x", tenant="acme") == tenant
    assert find_suite(tmp_path, "x") == base
    assert find_suite(tmp_path, "y") is None
    write(tmp_path, "x.eval.yaml", CASES_ONLY)
    assert find_suite(tmp_path, "x") == tmp_path / "x.eval.yaml"


# -- the same suite however it is written -------------------------------------------------------

REFORMATTED = """\
# The same suite: block style, keys reordered, the shorthand spelled out, defaults written.
variant: claude
tenant: acme
cases:
- samples: 5
  assert:
  - type: contains
    value: colleague
    case_sensitive: true
  - case_sensitive: false
    value: refund is approved
    type: not_contains
  - regex: '(?i)sorry|apolog'
  - json_schema:
      required: [category]
      type: object
  - finish_reason: [stop, length]
  - tool_called: lookup_order
    arguments:
      order_id: '123'
  - {max_chars: 900, type: length, min_chars: 20}
  - judge: judge.helpfulness
    threshold: 0.70
    type: judge
    rubric: "Polite and does not promise a refund"
  params:
    temperature: 0
  messages:
  - content: My router broke, I want a refund.
    role: user
  variables:
    product: Acme Router
    customer_name: Ana
  name: refund-request
model: gpt-4o-mini
samples: 2
slug: support-reply
"""


def test_the_sha_is_of_the_content_not_the_formatting() -> None:
    suite = load_suite_text(FULL, "a")
    again = load_suite_text(REFORMATTED, "b")
    assert again == suite
    assert again.sha256 == suite.sha256
    changed = load_suite_text(FULL.replace("threshold: 0.7", "threshold: 0.8"), "a")
    assert changed.sha256 != suite.sha256
    assert load_suite_text(FULL.replace("samples: 5", "samples: 4"), "a").sha256 != suite.sha256


def test_the_source_is_not_part_of_the_suite() -> None:
    one, other = load_suite_text(FULL, "a.eval.yaml"), parse_suite(yaml.safe_load(FULL))
    assert (one.source, other.source) == ("a.eval.yaml", "<suite>")
    assert one == other


def test_to_dict_is_a_copy() -> None:
    suite = load_suite_text(FULL, "a")
    body = suite.to_dict()
    body["cases"][0]["variables"]["product"] = "changed"
    body["cases"][0]["assert"][3]["schema"]["type"] = "array"
    assert suite == load_suite_text(FULL, "a")


# -- round trip ------------------------------------------------------------------------------

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
)
_names = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_assertions = st.one_of(
    st.builds(lambda v, c: {"contains": v, "case_sensitive": c}, _text, st.booleans()),
    st.builds(lambda v: {"type": "not_contains", "value": v}, _text),
    st.builds(lambda v: {"regex": re.escape(v)}, _text),
    st.just({"json_schema": {"type": "object", "properties": {"a": {"enum": [1, "x"]}}}}),
    st.lists(_names, min_size=1, max_size=3).map(lambda v: {"finish_reason": v}),
    st.builds(
        lambda n, a: {"tool_called": n, **({} if a is None else {"arguments": a})},
        _names,
        st.none() | st.dictionaries(_text, _json, max_size=3),
    ),
    st.builds(
        lambda lo, hi: {"type": "length", "min_words": lo, "max_chars": hi},
        st.integers(0, 10),
        st.integers(10, 10_000),
    ),
    st.builds(
        lambda r, t, j: {
            "type": "judge",
            "rubric": r,
            "threshold": t,
            **({"judge": j} if j else {}),
        },
        _text,
        st.floats(0, 1),
        st.none() | _names.map(lambda n: f"judge.{n}"),
    ),
)
_cases = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": _text}),
            min_size=1,
            max_size=2,
        ),
        "assert": st.lists(_assertions, min_size=1, max_size=4),
    },
    optional={
        "variables": st.dictionaries(_text, _json, max_size=3),
        "params": st.dictionaries(st.sampled_from(["temperature", "tools", "model"]), _json),
        "samples": st.integers(1, 50),
        "tenant": _names,
        "variant": _names,
    },
)
_suites = st.builds(
    lambda slug, cases, extra: {
        "slug": slug,
        "cases": [{**case, "name": f"case {i}"} for i, case in enumerate(cases)],
        **extra,
    },
    _names,
    st.lists(_cases, min_size=1, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "samples": st.integers(1, 50),
            "model": _names,
            "tenant": _names,
            "variant": _names,
        },
    ),
)


@given(_suites)
@settings(max_examples=300, deadline=None)
def test_round_trip(body: dict[str, Any]) -> None:
    suite = parse_suite(body)
    again = parse_suite(suite.to_dict())
    assert again == suite
    assert again.sha256 == suite.sha256
    assert again.to_dict() == suite.to_dict()
    # The CLI's way: YAML text of the same content reads as the same suite.
    from_yaml = load_suite_text(yaml.safe_dump(suite.to_dict(), allow_unicode=True), "x.eval.yaml")
    assert from_yaml == suite
    assert from_yaml.sha256 == suite.sha256


def test_a_suite_is_frozen() -> None:
    suite: Suite = load_suite_text(FULL, "a")
    with pytest.raises(AttributeError):
        suite.slug = "other"  # type: ignore[misc]
