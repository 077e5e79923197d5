"""Prompt files: a ``prompts/`` folder kept in an application's repository.

``<slug>.md`` is YAML front matter between ``---`` lines followed by the template;
``<slug>.yaml``/``.yml`` holds the same keys plus ``template:``. ``config/prompts/README.md``
documents the format for users. Loading is offline and reports every problem it finds, each
with the file's own line number, so ``promptproxy prompts lint`` can fail CI with all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from proxy.models import SLUG_PATTERN
from proxy.prompt_key import NAME_PATTERN, RESERVED_PREFIX, PromptKey
from proxy.registry.models import (
    CALLER_SYSTEM,
    CALLER_SYSTEM_DROP,
    VariableSpec,
    VersionDraft,
    unstorable_value,
)
from proxy.registry.models import caller_system as as_caller_system
from proxy.registry.reserved import reserved_problem
from proxy.registry.templates import template_problems

SUFFIXES = (".md", ".yaml", ".yml")
_KEYS = frozenset({"slug", "variables", "model", "params", "author", "changelog", "caller_system"})
_VARIABLE_KEYS = frozenset({"name", "type", "default", "description"})
# These come from elsewhere: the pin, the request's messages, the caller's variables.
_RESERVED_PARAMS = frozenset({"model", "messages", "prompt_variables"})

# A problem inside one file: (1-based line or None, message).
_Problem = tuple[int | None, str]


class PromptFileError(Exception):
    """Every problem found, each formatted ``file:line: message`` (``file: message``)."""

    def __init__(self, path: Path, problems: list[str]):
        super().__init__("\n".join(problems))
        self.path = path
        self.problems = problems


def load_prompt_file(path: Path) -> VersionDraft:
    draft, problems = _load(path)
    if draft is None or problems:
        raise PromptFileError(path, [_format(path, p) for p in problems])
    return draft


def load_prompt_dir(path: Path) -> list[tuple[Path, VersionDraft]]:
    """All prompt files under ``path``, sorted; raises with the problems of every file."""
    loaded: list[tuple[Path, VersionDraft]] = []
    problems: list[str] = []
    first_file: dict[PromptKey, Path] = {}
    for file in _prompt_files(path):
        draft, found = _load(file)
        problems.extend(_format(file, p) for p in found)
        if draft is None or found:
            continue
        if draft.key in first_file:
            message = f"slug {draft.key.text!r} is also defined in {first_file[draft.key]}"
            problems.append(_format(file, (None, message)))
            continue
        first_file[draft.key] = file
        loaded.append((file, draft))
    if problems:
        raise PromptFileError(path, problems)
    return loaded


def lint_prompt_dir(path: Path) -> list[str]:
    """Every problem as ``file:line: message``; empty when the folder (or file) is clean."""
    if path.is_file():
        return [_format(path, p) for p in _load(path)[1]]
    if not path.is_dir():
        return [f"{path}: not a file or directory"]
    if not any(True for _ in _prompt_files(path)):
        return [f"{path}: no prompt files ({', '.join('*' + s for s in SUFFIXES)}) found"]
    try:
        load_prompt_dir(path)
    except PromptFileError as exc:
        return exc.problems
    return []


def _prompt_files(root: Path) -> Iterator[Path]:
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).parts
        hidden = any(part.startswith(".") for part in relative)
        readme = file.name.lower() == "readme.md"
        if file.suffix in SUFFIXES and file.is_file() and not hidden and not readme:
            yield file


def _format(path: Path, problem: _Problem) -> str:
    line, message = problem
    return f"{path}: {message}" if line is None else f"{path}:{line}: {message}"


def _load(path: Path) -> tuple[VersionDraft | None, list[_Problem]]:
    if path.suffix not in SUFFIXES:
        return None, [(None, f"not a prompt file (expected {', '.join(SUFFIXES)})")]
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except OSError as exc:
        return None, [(None, f"cannot read: {exc.strerror or exc}")]
    except UnicodeDecodeError as exc:
        return None, [(None, f"not UTF-8 text (byte {exc.start})")]
    if path.suffix == ".md":
        split = _split_front_matter(text)
        if isinstance(split, str):
            return None, [(1, split)]
        front, body, body_line = split
        return _build(path, front, 1, _KEYS, body, body_line)
    return _build(path, text, 0, _KEYS | {"template"}, None, 0)


def _split_front_matter(text: str) -> tuple[str, str, int] | str:
    """(front matter, body, body's first line); the closing ``---`` line ends with its own
    newline, so exactly one newline is dropped and the body is kept byte for byte."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip() != "---":
        return "front matter missing: the file must start with a line '---'"
    for index in range(1, len(lines)):
        if lines[index].rstrip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :]), index + 2
    return "front matter is not closed: add a line '---' after it"


def _build(
    path: Path,
    source: str,
    offset: int,
    allowed: frozenset[str],
    body: str | None,
    body_line: int,
) -> tuple[VersionDraft | None, list[_Problem]]:
    """``offset`` is the number of file lines before ``source`` starts."""
    try:
        root, data = _parse_yaml(source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1 + offset
        return None, [(line, f"invalid YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return None, [(None, f"invalid YAML: {exc}")]
    if data is None and body is not None:
        data = {}  # empty front matter: every key is optional
    if not isinstance(data, dict):
        return None, [(offset + 1, "expected a mapping of keys (slug, variables, ...)")]
    mapping = root if isinstance(root, yaml.MappingNode) else None
    lines = {} if mapping is None else _node_lines(mapping, offset)
    problems = [] if mapping is None else _duplicate_keys(mapping, offset)

    def problem(key: str, message: str) -> None:
        problems.append((lines.get(key), message))

    for key in data:
        if key not in allowed:
            problem(str(key), f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    slug = data.get("slug", path.stem)
    if not isinstance(slug, str) or not SLUG_PATTERN.match(slug):
        problem("slug", f"bad slug {slug!r}: must match [A-Za-z0-9._-]{{1,64}}")
    variables = _variables(data.get("variables"), lines, problems)
    if isinstance(slug, str) and slug.startswith(RESERVED_PREFIX) and NAME_PATTERN.match(slug):
        # What a push would refuse, found by lint: the same check (``reserved``).
        template_text = body if body is not None else data.get("template")
        reserved = reserved_problem(
            PromptKey(slug), template_text if isinstance(template_text, str) else "", variables
        )
        if reserved is not None:
            problem(reserved.field.split("[")[0].split(".")[0], reserved.message)
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        problem("model", "model must be a model name such as gpt-4o-2024-08-06")
    params = data.get("params") or {}
    if not isinstance(params, dict) or not _is_json(params):
        problem("params", "params must be a mapping of JSON values (e.g. temperature: 0.2)")
        params = {}
    elif (unstorable := unstorable_value(params, "params")) is not None:
        where, why = unstorable
        problem("params", f"{where}: {why}")
    for name in sorted(_RESERVED_PARAMS & params.keys()):
        problem("params", f"params may not set {name!r}")
    caller_system = as_caller_system(data.get("caller_system", CALLER_SYSTEM_DROP))
    if caller_system is None:
        problem("caller_system", f"caller_system must be one of {', '.join(CALLER_SYSTEM)}")
        caller_system = CALLER_SYSTEM_DROP
    author, changelog = data.get("author") or "", data.get("changelog") or ""
    for key, value in (("author", author), ("changelog", changelog)):
        if not isinstance(value, str):
            problem(key, f"{key} must be text (quote it)")
    empty_line: int | None = body_line
    if body is None:
        body, body_line = data.get("template"), lines.get("template!", 1)
        empty_line = lines.get("template")
        if not isinstance(body, str):
            problem("template", "template must be text (use 'template: |' and indent it)")
            body = "-"  # reported already; keeps the template checks quiet
    if not body.strip():
        problems.append((empty_line, "template is empty"))
    for found in template_problems(body, variables):
        if found.variable is not None:
            line = lines.get(f"variables.{found.variable}", lines.get("variables"))
        else:
            line = None if found.line is None else body_line + found.line - 1
        problems.append((line, found.message))
    if problems:
        return None, sorted(problems, key=lambda p: p[0] or 0)
    draft = VersionDraft(
        key=PromptKey(str(slug)),
        template=body,
        variables=variables,
        model=model,
        params=params,
        author=str(author),
        changelog=str(changelog),
        caller_system=caller_system,
    )
    return draft, []


def _parse_yaml(source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data, parsed once. libyaml's parser is many
    times faster (a fleet of 200 overrides is linted in CI); PyYAML's own says what is
    wrong in the words users know, so a text libyaml refuses is parsed again by it."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return _parse_with(fast, source)
        except yaml.YAMLError:
            pass
    return _parse_with(yaml.SafeLoader, source)


def _parse_with(loader_class: Any, source: str) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(source)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _variables(
    raw: Any, lines: dict[str, int], problems: list[_Problem]
) -> tuple[VariableSpec, ...]:
    """Accepts a list of names or ``{name, type?, default?}`` entries, or a mapping
    name -> type | {type?, default?}."""
    entries: list[tuple[str, Any]] = []
    if raw is None:
        return ()
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                entries.append((str(item.get("name", "")), item))
            else:
                entries.append((str(item), {"name": item}))
    elif isinstance(raw, dict):
        for name, spec in raw.items():
            spec = {"type": spec} if spec is None or isinstance(spec, str) else spec
            entries.append((str(name), {**spec, "name": name} if isinstance(spec, dict) else spec))
    else:
        problems.append((lines.get("variables"), "variables must be a list or a mapping"))
        return ()
    specs: list[VariableSpec] = []
    for name, entry in entries:
        line = lines.get(f"variables.{name}", lines.get("variables"))
        if not isinstance(entry, dict):
            problems.append((line, f"variable {name!r} must be a type name or a mapping"))
            continue
        unknown = sorted(str(k) for k in entry if k not in _VARIABLE_KEYS)
        if unknown:
            problems.append((line, f"variable {name!r}: unknown keys {', '.join(unknown)}"))
        if not isinstance(entry.get("name"), str):
            given = entry.get("name")
            message = "each variable needs a name" if given in (None, "") else "names are text"
            problems.append((line, f"{message} (got {given!r})"))
            continue
        if "default" in entry:
            if not _is_json(entry["default"]):
                problems.append((line, f"default of variable {name!r} must be a JSON value"))
            elif (unstorable := unstorable_value(entry["default"], "default")) is not None:
                problems.append(
                    (line, f"default of variable {name!r} must be a JSON value: {unstorable[1]}")
                )
        specs.append(
            VariableSpec(
                name=entry["name"],
                type=entry.get("type"),
                default=entry.get("default"),
                has_default="default" in entry,
            )
        )
    return tuple(specs)


def _node_lines(root: yaml.MappingNode, offset: int) -> dict[str, int]:
    """1-based file lines of top-level keys, of each variable ("variables.<name>"), and of
    the first line of the template text ("template!")."""
    lines: dict[str, int] = {}
    for key, value in root.value:
        name = str(key.value)
        lines.setdefault(name, key.start_mark.line + 1 + offset)
        if name == "template" and isinstance(value, yaml.ScalarNode):
            # A block scalar ('|') starts on the line after its indicator.
            block = value.style in ("|", ">")
            lines["template!"] = value.start_mark.line + 1 + offset + (1 if block else 0)
        if name != "variables":
            continue
        if isinstance(value, yaml.SequenceNode):
            for item in value.value:
                var = item.value if isinstance(item, yaml.ScalarNode) else None
                if isinstance(item, yaml.MappingNode):
                    var = next((v.value for k, v in item.value if k.value == "name"), None)
                if isinstance(var, str):
                    lines.setdefault(f"variables.{var}", item.start_mark.line + 1 + offset)
        elif isinstance(value, yaml.MappingNode):
            for var_key, _ in value.value:
                lines.setdefault(f"variables.{var_key.value}", var_key.start_mark.line + 1 + offset)
    return lines


def _duplicate_keys(root: yaml.MappingNode, offset: int) -> list[_Problem]:
    # PyYAML keeps the last of two equal keys silently; a prompt file should not.
    seen: set[str] = set()
    found: list[_Problem] = []
    for key, _ in root.value:
        if key.value in seen:
            found.append((key.start_mark.line + 1 + offset, f"key {key.value!r} appears twice"))
        seen.add(key.value)
    return found


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
