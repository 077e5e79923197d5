"""Eval suite files: ``<prompt file>.eval.yaml`` beside the prompt files, one per slug (and
optionally per tenant or model variant), holding the cases a version is checked against.

A suite is read from YAML by the CLI (``load_suite_file``: problems carry the file's line)
and sent as ``Suite.to_dict()`` to the admin API, which reads it again with ``parse_suite``:
both go through ``_read``, so they accept the same suites and say the same about the
others. docs/evals.md documents the format for users.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml

from proxy.evals.assertions import Assertion, copy_json
from proxy.evals.parse_assertion import (
    AddProblem,
    Counted,
    Problem,
    json_problem,
    parse_assertion,
)
from proxy.models import SLUG_PATTERN
from proxy.prompt_key import NAME_PATTERN
from proxy.registry.prompt_files import (
    LAYER_FOLDERS,
    SUFFIXES,
    SUITE_SUFFIXES,
    VARIANT_MARK,
    parse_yaml,
)

DEFAULT_SAMPLES = 3
MAX_SAMPLES = 50
MAX_CASES = 500
#: The roles a case's messages may have (those of the chat completions API).
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: What the runner sets itself, or what would change the shape of the answer it reads.
_RESERVED_PARAMS: Mapping[str, str] = {
    "messages": "a case's messages are its `messages`",
    "prompt_variables": "a case's variables are its `variables`",
    "stream": "the runner reads whole answers",
    "stream_options": "the runner reads whole answers",
    "n": "each answer is one choice; ask for more with `samples`",
}
_SUITE_KEYS = frozenset({"slug", "samples", "model", "tenant", "variant", "cases"})
_CASE_KEYS = frozenset(
    {"name", "variables", "messages", "params", "assert", "tenant", "variant", "samples"}
)
_MAX_NAME = 200


class SuiteError(Exception):
    """Every problem of a suite, each ``source:line: message`` (``source: message``)."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__("\n".join(problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Case:
    """One request and what its answers must satisfy. ``tenant``, ``variant`` and
    ``samples`` of None are the suite's; ``params`` are more fields of the chat completion
    body (tools, tool_choice, response_format, temperature, model...)."""

    name: str
    variables: Mapping[str, Any]
    messages: tuple[Mapping[str, Any], ...]
    assertions: tuple[Assertion, ...]
    tenant: str | None
    variant: str | None
    samples: int | None
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"name": self.name}
        for name in ("tenant", "variant", "samples"):
            if (value := getattr(self, name)) is not None:
                found[name] = value
        found["variables"] = copy_json(self.variables)
        found["messages"] = copy_json(self.messages)
        found["params"] = copy_json(self.params)
        found["assert"] = [assertion.to_dict() for assertion in self.assertions]
        return found


@dataclass(frozen=True, slots=True)
class Suite:
    """The cases of one slug. ``model`` None: the version's pin, or the runner's choice.
    ``sha256`` is of the content (``to_dict``'s canonical JSON), the same however the file
    was formatted; ``source`` only says where it was read (not compared)."""

    slug: str
    cases: tuple[Case, ...]
    samples: int
    model: str | None
    tenant: str | None
    variant: str | None
    sha256: str
    source: str = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"slug": self.slug, "samples": self.samples}
        for name in ("model", "tenant", "variant"):
            if (value := getattr(self, name)) is not None:
                found[name] = value
        found["cases"] = [case.to_dict() for case in self.cases]
        return found


def parse_suite(data: Any, *, source: str = "<suite>") -> Suite:
    """A suite from decoded JSON (the admin API's body); raises ``SuiteError``."""
    suite, problems = _read(data, source, None)
    if suite is None or problems:
        raise SuiteError(source, [f"{source}: {message}" for _, message in problems])
    return suite


def load_suite_text(text: str, source: str) -> Suite:
    """A suite from YAML text; ``source`` names it in problems (``source:line: message``)."""
    return _load_text(text, source, None)


def load_suite_file(path: Path) -> Suite:
    """A suite file. What its name and folder say (``x@claude.eval.yaml`` is slug x, variant
    claude; ``tenants/acme/`` is tenant acme) fills the keys the file leaves out, and a key
    that says otherwise is a problem."""
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except OSError as exc:
        raise SuiteError(source, [f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise SuiteError(source, [f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    return _load_text(text, source, _implied(path))


def suite_path_for(prompt_file: Path) -> Path:
    """The suite file of a prompt file: ``support-reply.md`` -> ``support-reply.eval.yaml``,
    beside it (``x@claude.md``, ``tenants/acme/x.yaml`` alike)."""
    if prompt_file.suffix not in SUFFIXES or is_suite_file(prompt_file):
        raise ValueError(f"not a prompt file: {prompt_file}")
    return prompt_file.with_name(prompt_file.stem + SUITE_SUFFIXES[0])


def is_suite_file(path: Path) -> bool:
    return path.name.endswith(SUITE_SUFFIXES)


def find_suite(
    prompts_dir: Path, slug: str, tenant: str | None = None, variant: str | None = None
) -> Path | None:
    """The most specific suite file there is for the key: the tenant's of the variant, the
    tenant's, the variant's, then the slug's own (``.eval.yaml`` before ``.eval.yml``)."""
    tenant_dirs = [] if tenant is None else [prompts_dir / "tenants" / tenant]
    names = [] if variant is None else [f"{slug}{VARIANT_MARK}{variant}"]
    for folder in [*tenant_dirs, prompts_dir]:
        for name in [*names, slug]:
            for suffix in SUITE_SUFFIXES:
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Implied:
    """What a suite file's name and folder say."""

    slug: str
    variant: str | None
    tenant: str | None
    name: str


def _implied(path: Path) -> _Implied | None:
    stem = next((path.name[: -len(s)] for s in SUITE_SUFFIXES if path.name.endswith(s)), None)
    if stem is None:
        return None
    slug, mark, variant = stem.partition(VARIANT_MARK)
    folder = path.absolute().parent
    tenant = folder.name if LAYER_FOLDERS.get(folder.parent.name) == "tenant" else None
    return _Implied(slug, variant if mark else None, tenant, path.name)


def _load_text(text: str, source: str, implied: _Implied | None) -> Suite:
    try:
        root, data = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = source if mark is None else f"{source}:{mark.line + 1}"
        raise SuiteError(source, [f"{where}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SuiteError(source, [f"{source}: invalid YAML: {exc}"]) from None
    lines = _node_lines(root)
    suite, problems = _read(data, source, implied)
    located = _duplicate_keys(root) + [(_line(lines, path), message) for path, message in problems]
    if suite is None or located:
        located.sort(key=lambda p: p[0] or 0)
        raise SuiteError(source, [_format(source, line, message) for line, message in located])
    return suite


def _format(source: str, line: int | None, message: str) -> str:
    return f"{source}: {message}" if line is None else f"{source}:{line}: {message}"


def _read(data: Any, source: str, implied: _Implied | None) -> tuple[Suite | None, list[Problem]]:
    problems: list[Problem] = []

    def add(path: str, message: str) -> None:
        problems.append((path, message))

    if not isinstance(data, dict):
        add("", "a suite is a mapping: slug, cases (and samples, model, tenant, variant)")
        return None, problems
    for key in data:
        if key not in _SUITE_KEYS:
            add(str(key), _unknown_key(key, _SUITE_KEYS, "a suite"))
    if implied is not None:
        data = _fill_implied(data, implied, add)
    slug = data.get("slug")
    if not isinstance(slug, str) or not SLUG_PATTERN.match(slug):
        add("slug", f"slug must name a prompt, matching [A-Za-z0-9._-]{{1,64}} (got {slug!r})")
    samples = _samples(data, "samples", "", add)
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        add("model", f"model must be a model name such as gpt-4o-mini (got {model!r})")
    tenant = _name(data, "tenant", "", "", add)
    variant = _name(data, "variant", "", "", add)
    cases = _cases(data.get("cases"), add)
    if problems:
        return None, problems
    draft = Suite(
        slug=str(slug),
        cases=cases,
        samples=DEFAULT_SAMPLES if samples is None else samples,
        model=model,
        tenant=tenant,
        variant=variant,
        sha256="",
        source=source,
    )
    digest = hashlib.sha256(orjson.dumps(draft.to_dict(), option=orjson.OPT_SORT_KEYS))
    return replace(draft, sha256=digest.hexdigest()), []


def _fill_implied(data: dict[Any, Any], implied: _Implied, add: AddProblem) -> dict[Any, Any]:
    filled = dict(data)
    for key, value in (
        ("slug", implied.slug),
        ("variant", implied.variant),
        ("tenant", implied.tenant),
    ):
        if key not in data:
            if value is not None:
                filled[key] = value
        elif value is not None and data[key] != value:
            where = "folder" if key == "tenant" else "file name"
            add(key, f"{key} {data[key]!r} disagrees with the {where} ({implied.name}): {value!r}")
    return filled


def _cases(raw: Any, add: AddProblem) -> tuple[Case, ...]:
    if not isinstance(raw, list) or not raw:
        add("cases", "cases must be a list of at least one case (name, messages, assert)")
        return ()
    if len(raw) > MAX_CASES:
        add("cases", f"a suite holds at most {MAX_CASES} cases (this one has {len(raw)})")
    cases: list[Case] = []
    first: dict[str, int] = {}
    for index, item in enumerate(raw):
        path = f"cases[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            if name in first:
                message = f"case {name!r}: the name is also that of cases[{first[name]}]"
                add(f"{path}.name", message)
            first.setdefault(name, index)
        case = _case(item, path, add)
        if case is not None:
            cases.append(case)
    return tuple(cases)


def _case(raw: Any, path: str, add: AddProblem) -> Case | None:
    if not isinstance(raw, dict):
        add(path, f"{path}: a case is a mapping: name, messages, assert (and variables, ...)")
        return None
    counted = Counted(add)
    name = raw.get("name")
    label = f"case {name!r}" if _good_name(name) else path
    if not _good_name(name):
        got = "nothing" if name is None else repr(name)
        message = f"one line of text, at most {_MAX_NAME} characters"
        counted(f"{path}.name", f"{path}: every case needs a name, {message} (got {got})")
    for key in raw:
        if key not in _CASE_KEYS:
            counted(f"{path}.{key}", f"{label}: {_unknown_key(key, _CASE_KEYS, 'a case')}")
    variables = _json_mapping(raw, "variables", path, label, counted)
    params = _json_mapping(raw, "params", path, label, counted)
    for key in sorted(_RESERVED_PARAMS.keys() & params.keys()):
        why = _RESERVED_PARAMS[key]
        counted(f"{path}.params.{key}", f"{label}: params may not set {key!r}: {why}")
    messages = _messages(raw.get("messages"), path, label, counted)
    assertions = _assertions(raw.get("assert"), path, label, counted)
    samples = _samples(raw, "samples", f"{path}.", counted, label)
    tenant = _name(raw, "tenant", f"{path}.", f"{label}: ", counted)
    variant = _name(raw, "variant", f"{path}.", f"{label}: ", counted)
    if counted.count:
        return None
    return Case(
        name=str(name),
        variables=variables,
        messages=messages,
        assertions=assertions,
        tenant=tenant,
        variant=variant,
        samples=samples,
        params=params,
    )


def _good_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and len(name.strip()) > 0
        and len(name) <= _MAX_NAME
        and ("\n" not in name)
    )


def _json_mapping(
    raw: dict[Any, Any], key: str, path: str, label: str, add: AddProblem
) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        add(f"{path}.{key}", f"{label}: {key} must be a mapping (name: value)")
        return {}
    if (why := json_problem(value)) is not None:
        add(f"{path}.{key}", f"{label}: {key}{why}")
        return {}
    return dict(copy_json(value))


def _messages(raw: Any, path: str, label: str, add: AddProblem) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list) or not raw:
        message = (
            "messages must be a list of at least one message, e.g. [{role: user, content: Hi}]"
        )
        add(f"{path}.messages", f"{label}: {message}")
        return ()
    messages: list[Mapping[str, Any]] = []
    for index, message in enumerate(raw):
        where = f"{path}.messages[{index}]"
        named = f"{label} messages[{index}]"
        if not isinstance(message, dict):
            add(where, f"{named}: a message is a mapping: {{role: user, content: TEXT}}")
            continue
        role = message.get("role")
        if role not in ROLES:
            add(f"{where}.role", f"{named}: role must be one of {', '.join(sorted(ROLES))}")
        content = message.get("content")
        tool_calls = role == "assistant" and "tool_calls" in message
        if not (isinstance(content, str | list) or (content is None and tool_calls)):
            add(f"{where}.content", f"{named}: content must be text (or a list of parts)")
        if (why := json_problem(message)) is not None:
            add(where, f"{named}: message{why}")
            continue
        messages.append(copy_json(message))
    return tuple(messages)


def _assertions(raw: Any, path: str, label: str, add: AddProblem) -> tuple[Assertion, ...]:
    if not isinstance(raw, list) or not raw:
        message = "assert must be a list of at least one assertion, e.g. [contains: TEXT]"
        add(f"{path}.assert", f"{label}: {message}")
        return ()
    found: list[Assertion] = []
    for index, item in enumerate(raw):
        assertion = parse_assertion(
            item, f"{path}.assert[{index}]", f"{label} assert[{index}]", add
        )
        if assertion is not None:
            found.append(assertion)
    return tuple(found)


def _samples(
    raw: dict[Any, Any], key: str, prefix: str, add: AddProblem, label: str = ""
) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SAMPLES:
        lead = f"{label}: " if label else ""
        add(f"{prefix}{key}", f"{lead}samples must be a whole number from 1 to {MAX_SAMPLES}")
        return None
    return value


def _name(raw: dict[Any, Any], key: str, prefix: str, lead: str, add: AddProblem) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        add(f"{prefix}{key}", f"{lead}{key} must match [A-Za-z0-9._-]{{1,64}} (got {value!r})")
        return None
    return value


def _unknown_key(key: Any, allowed: frozenset[str], what: str) -> str:
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
    if key in ("assertions", "asserts"):
        close = ["assert"]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{message}{hint}; {what} has {', '.join(sorted(allowed))}"


# -- YAML: lines ----------------------------------------------------------------------------


def _node_lines(root: yaml.Node | None) -> dict[str, int]:
    """1-based line of every place: ``cases[0]`` (the item), ``cases[0].assert[1].pattern``
    (the key)."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str]] = [] if root is None else [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    inner = f"{path}.{key.value}" if path else str(key.value)
                    lines.setdefault(inner, key.start_mark.line + 1)
                    stack.append((value, inner))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                inner = f"{path}[{index}]"
                lines.setdefault(inner, item.start_mark.line + 1)
                stack.append((item, inner))
    return lines


_LAST_STEP = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def _line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path``, else of the nearest enclosing place written in the file."""
    while path:
        if path in lines:
            return lines[path]
        trimmed = _LAST_STEP.sub("", path)
        if trimmed == path:  # a top-level key not written in the file
            break
        path = trimmed
    return None


def _duplicate_keys(root: yaml.Node | None) -> list[tuple[int | None, str]]:
    # PyYAML keeps the last of two equal keys silently; a suite should not.
    found: list[tuple[int | None, str]] = []
    for node, path in _mappings(root, ""):
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                where = f" in {path}" if path else ""
                found.append((key.start_mark.line + 1, f"key {key.value!r} appears twice{where}"))
            seen.add(key.value)
    return found


def _mappings(node: yaml.Node | None, path: str) -> Iterator[tuple[yaml.MappingNode, str]]:
    if isinstance(node, yaml.MappingNode):
        yield node, path
        for key, value in node.value:
            inner = f"{path}.{key.value}" if path else str(key.value)
            yield from _mappings(value, inner)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _mappings(item, f"{path}[{index}]")
