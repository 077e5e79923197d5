"""Prompt files: a ``prompts/`` folder kept in an application's repository.

A base prompt is ``<slug>.md`` (YAML front matter between ``---`` lines, then the template)
or ``<slug>.yaml``/``.yml`` (the same keys plus ``template:``). A tier's or tenant's
override of a slug is a file in the folder of its layer, ``tiers/<tier>/<slug>.yaml`` or
``tenants/<tenant>/<slug>.yaml``: the folder names the layer, so where a file is reviewed is
what it overrides. A ``tier:`` or ``tenant:`` key may say it again, and must then agree.
A model variant is named by the file name the same way: ``<slug>@<variant>.md`` is the
variant's base (it declares ``match:``, the models it serves), and the same name in a
layer's folder is that layer's override of the variant.

``config/prompts/README.md`` documents the format for users. Loading is offline and reports
every problem it finds, each with the file's own line number, so ``promptproxy prompts
lint`` can fail CI with all of them. A folder is also checked as a whole
(``proxy.registry.fleet_lint``): every override against its base beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from proxy.models import SLUG_PATTERN
from proxy.prompt_key import (
    NAME_PATTERN,
    RESERVED_PREFIX,
    InvalidPromptKey,
    Layer,
    LayerKind,
    PromptKey,
)
from proxy.registry.fleet_lint import (
    FleetProblem,
    LoadedPrompt,
    field_line,
    fleet_problems,
    variant_warnings,
)
from proxy.registry.layer_checks import base_problems
from proxy.registry.models import (
    CALLER_SYSTEM,
    CALLER_SYSTEM_DROP,
    BlockSpec,
    VariableSpec,
    VersionDraft,
    unstorable_value,
)
from proxy.registry.models import caller_system as as_caller_system
from proxy.registry.reserved import reserved_problem
from proxy.registry.safety_gate import version_findings, version_parts
from proxy.registry.templates import template_problems
from proxy.safety import SafetyPolicy

SUFFIXES = (".md", ".yaml", ".yml")
#: Eval suites (``proxy.evals.suite``) live beside the prompt files and are never prompts.
SUITE_SUFFIXES = (".eval.yaml", ".eval.yml")
#: A folder of this name holds one folder per tier (tenant), each holding its overrides.
LAYER_FOLDERS: Mapping[str, LayerKind] = MappingProxyType({"tiers": "tier", "tenants": "tenant"})
_LAYER_KEYS: tuple[LayerKind, ...] = ("tier", "tenant")
_COMMON_KEYS = frozenset({"slug", "params", "author", "changelog"})
_KEYS = _COMMON_KEYS | {"variables", "model", "caller_system", "blocks", "param_bounds", "match"}
_OVERRIDE_KEYS = _COMMON_KEYS | {"fills", "defaults", *_LAYER_KEYS}
#: What only a base holds; named in the refusal of an override that sets one.
_BASE_ONLY = (_KEYS - _COMMON_KEYS) | {"template"}
_VARIABLE_KEYS = frozenset({"name", "type", "default", "description"})
_BLOCK_KEYS = frozenset({"default", "max_chars", "description"})
# These come from elsewhere: the pin, the request's messages, the caller's variables.
_RESERVED_PARAMS = frozenset({"model", "messages", "prompt_variables"})
#: Keys whose entries are checked one by one, so a repeated entry is a mistake to report.
_ENTRY_MAPPINGS = frozenset({"blocks", "param_bounds", "fills", "defaults"})

# A problem inside one file: (1-based line or None, message).
_Problem = tuple[int | None, str]
# What a file's folder makes it: a base (None), an override of a layer, or a bad folder name.
_Folder = Layer | str | None
#: Separates a variant from the slug in a file name, as in a key's text (``support@claude``).
VARIANT_MARK = "@"


class PromptFileError(Exception):
    """Every problem found, each formatted ``file:line: message`` (``file: message``)."""

    def __init__(self, path: Path, problems: list[str]):
        super().__init__("\n".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True, slots=True)
class _Loaded:
    prompt: LoadedPrompt | None
    problems: list[_Problem]
    #: The key the file defines, as far as it could be read (also when it has problems).
    key: PromptKey | None


def load_prompt_file(path: Path) -> VersionDraft:
    """One file on its own; an override's layer comes from its folder. Checking it against
    its base is the registry's at push (or ``lint_prompt_dir`` of the folder's)."""
    loaded = _load(path)
    if loaded.prompt is None or loaded.problems:
        raise PromptFileError(path, [_format(path, p) for p in loaded.problems])
    return loaded.prompt.draft


def load_prompt_dir(path: Path) -> list[tuple[Path, VersionDraft]]:
    """All prompt files under ``path``: the bases (of every variant), then the tiers'
    overrides, then the tenants', each in path order, so a push creates every base before
    an override needs it. Raises with the problems of every file and of the folder as a
    whole."""
    loaded, problems, _ = _load_dir(path)
    if problems:
        raise PromptFileError(path, problems)
    ordered = sorted(loaded, key=_push_rank)
    return [(p.path, p.draft) for p in ordered]


def _push_rank(prompt: LoadedPrompt) -> int:
    layer = prompt.draft.key.layer
    return 0 if layer is None else 1 if layer.kind == "tier" else 2


def lint_prompt_dir(path: Path) -> list[str]:
    """Every problem as ``file:line: message``; empty when the folder (or file) is clean."""
    return lint_prompts(path).problems


@dataclass(frozen=True, slots=True)
class Lint:
    """What ``prompts lint`` reports, each as ``file:line: message``."""

    #: What a push would refuse: lint fails.
    problems: list[str]
    #: What a push accepts but is likely a mistake (two variants only a name orders),
    #: each ``file:line: warning: message``.
    warnings: list[str]


def lint_prompts(path: Path, safety: SafetyPolicy | None = None) -> Lint:
    """The problems and warnings of a folder (or a file, which has no warnings: they are
    about the folder as a whole). With ``safety``, each file that loads is also checked
    against that policy, as a push would be, its findings at the file's lines."""
    if path.is_file():
        loaded = _load(path)
        problems = [_format(path, p) for p in loaded.problems]
        if safety is not None and loaded.prompt is not None and not loaded.problems:
            problems += [_format(path, p) for p in safety_problems(safety, loaded.prompt)]
        return Lint(problems, [])
    if not path.is_dir():
        return Lint([f"{path}: not a file or directory"], [])
    if not any(True for _ in _prompt_files(path)):
        return Lint([f"{path}: no prompt files ({', '.join('*' + s for s in SUFFIXES)}) found"], [])
    prompts, problems, warnings = _load_dir(path)
    if safety is not None:
        for prompt in prompts:
            problems += [_format(prompt.path, p) for p in safety_problems(safety, prompt)]
    return Lint(problems, warnings)


def safety_problems(policy: SafetyPolicy, prompt: LoadedPrompt) -> list[_Problem]:
    """The findings of ``policy`` on a loaded file, each at its line in the file where the
    file says where its text starts (the template, a block's or fill's text), else at its
    field's key."""
    texts = {part.field: part.text for part in version_parts(prompt.draft)}
    found: list[_Problem] = []
    for finding in version_findings(policy, prompt.draft):
        line = field_line(prompt.lines, finding.field)
        if finding.line is not None:
            if finding.field == "template" and "template!" in prompt.lines:
                line = prompt.lines["template!"] + finding.line - 1
            elif line is not None and "\n" in texts.get(finding.field, ""):
                # A text over several lines is a block scalar ('|'): it starts on the line
                # after its key.
                line += finding.line
        found.append((line, f"{finding.rule} ({finding.field}): {finding.message}"))
    return found


def _load_dir(root: Path) -> tuple[list[LoadedPrompt], list[str], list[str]]:
    files = list(_prompt_files(root))
    order = {file: index for index, file in enumerate(files)}
    found: list[FleetProblem] = []
    loaded: list[LoadedPrompt] = []
    first_file: dict[PromptKey, Path] = {}
    broken_bases: set[PromptKey] = set()
    for file in files:
        result = _load(file, root)
        found.extend((file, line, message) for line, message in result.problems)
        if result.prompt is None or result.problems:
            if result.key is not None and result.key.layer is None:
                broken_bases.add(result.key)
            continue
        key = result.prompt.draft.key
        if key in first_file:
            message = f"slug {key.text!r} is also defined in {first_file[key]}"
            found.append((file, None, message))
            continue
        first_file[key] = file
        loaded.append(result.prompt)
    found.extend(fleet_problems(loaded, root, broken_bases))
    warned = [
        (file, line, f"warning: {text}") for file, line, text in variant_warnings(loaded, root)
    ]

    def listed(problems: list[FleetProblem]) -> list[str]:
        # Each file's problems together, by line, in the order the files are listed.
        problems.sort(key=lambda p: (order[p[0]], p[1] or 0))
        return [_format(path, (line, message)) for path, line, message in problems]

    return loaded, listed(found), listed(warned)


def _prompt_files(root: Path) -> Iterator[Path]:
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).parts
        hidden = any(part.startswith(".") for part in relative)
        readme = file.name.lower() == "readme.md"
        suite = file.name.endswith(SUITE_SUFFIXES)
        if file.suffix in SUFFIXES and file.is_file() and not (hidden or readme or suite):
            yield file


def _format(path: Path, problem: _Problem) -> str:
    line, message = problem
    return f"{path}: {message}" if line is None else f"{path}:{line}: {message}"


def _folder_layer(path: Path) -> _Folder:
    """``tenants/acme/x.yaml`` is tenant acme's override of ``x``, wherever the prompts
    folder is: a single file pushed on its own is read as the same layer as in its folder."""
    folder = path.absolute().parent
    kind = LAYER_FOLDERS.get(folder.parent.name)
    if kind is None:
        return None
    try:
        return Layer(kind, folder.name)
    except InvalidPromptKey:
        return (
            f"the folder {folder.name!r} names the {kind} of this override, and a {kind} "
            "name must match [A-Za-z0-9._-]{1,64}"
        )


def _misplaced(path: Path, root: Path) -> str | None:
    """A file under ``tiers/`` or ``tenants/`` but not in one layer's folder of it: read as
    a base it would silently become one, which its author did not mean."""
    folders = path.relative_to(root).parts[:-1]
    if not any(name in LAYER_FOLDERS for name in folders):
        return None
    return (
        "an override file goes directly in its layer's folder, tiers/<tier>/<slug>.yaml or "
        "tenants/<tenant>/<slug>.yaml; this one is not, so it is neither a base nor an override"
    )


def _file_name(path: Path) -> tuple[str, str | None] | str:
    """(the slug, the variant or None) a file's name gives, or why it gives none."""
    stem, mark, variant = path.stem.partition(VARIANT_MARK)
    if not mark:
        return stem, None
    if not NAME_PATTERN.match(stem) or not NAME_PATTERN.match(variant):
        return (
            f"the file name {path.name!r} names a model variant, so it must be "
            f"<slug>@<variant>{path.suffix}, each part matching [A-Za-z0-9._-]{{1,64}}"
        )
    return stem, variant


def _load(path: Path, root: Path | None = None) -> _Loaded:
    folder = _folder_layer(path)
    name = _file_name(path)
    guess = None
    if folder is None and not isinstance(name, str) and NAME_PATTERN.match(name[0]):
        guess = PromptKey(name[0], None, name[1])
    if path.suffix not in SUFFIXES:
        return _Loaded(None, [(None, f"not a prompt file (expected {', '.join(SUFFIXES)})")], None)
    if root is not None and folder is None and (misplaced := _misplaced(path, root)):
        return _Loaded(None, [(None, misplaced)], None)
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except OSError as exc:
        return _Loaded(None, [(None, f"cannot read: {exc.strerror or exc}")], guess)
    except UnicodeDecodeError as exc:
        return _Loaded(None, [(None, f"not UTF-8 text (byte {exc.start})")], guess)
    if path.suffix == ".md":
        split = _split_front_matter(text)
        if isinstance(split, str):
            return _Loaded(None, [(1, split)], guess)
        front, body, body_line = split
        return _build(path, folder, name, front, 1, body, body_line, guess)
    return _build(path, folder, name, text, 0, None, 0, guess)


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
    folder: _Folder,
    name_parts: tuple[str, str | None] | str,
    source: str,
    offset: int,
    body: str | None,
    body_line: int,
    guess: PromptKey | None,
) -> _Loaded:
    """``offset`` is the number of file lines before ``source`` starts; ``body`` is a
    Markdown file's text after the front matter (None for YAML)."""
    try:
        root, data = parse_yaml(source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1 + offset
        return _Loaded(None, [(line, f"invalid YAML: {exc.problem or exc}")], guess)
    except yaml.YAMLError as exc:
        return _Loaded(None, [(None, f"invalid YAML: {exc}")], guess)
    if data is None and body is not None:
        data = {}  # empty front matter: every key is optional
    if not isinstance(data, dict):
        expected = "expected a mapping of keys (slug, variables, ...)"
        return _Loaded(None, [(offset + 1, expected)], guess)
    mapping = root if isinstance(root, yaml.MappingNode) else None
    lines = {} if mapping is None else _node_lines(mapping, offset)
    problems = [] if mapping is None else _duplicate_keys(mapping, offset)

    def problem(key: str, message: str) -> None:
        problems.append((field_line(lines, key), message))

    override = folder is not None
    if isinstance(folder, str):
        problems.append((None, folder))
    bad_name = isinstance(name_parts, str)
    if isinstance(name_parts, str):
        problems.append((None, name_parts))
        stem, variant = path.stem.partition(VARIANT_MARK)[0], None
    else:
        stem, variant = name_parts
    allowed = _OVERRIDE_KEYS if override else _KEYS | ({"template"} if body is None else set())
    for name in data:
        # A base's tier: or tenant: key gets its own answer (_layer_key_problems).
        if name not in allowed and (override or name not in _LAYER_KEYS):
            problem(str(name), _key_refused(str(name), override, allowed))
    _layer_key_problems(data, path, folder, variant, problem)
    slug = data.get("slug", stem)
    key: PromptKey | None = None
    if not isinstance(slug, str) or not SLUG_PATTERN.match(slug):
        if "slug" in data or not bad_name:  # else the file name's problem says it
            problem("slug", _bad_slug(slug, path))
    elif not isinstance(folder, str) and not bad_name:
        key = PromptKey(slug, folder, variant)
    author, changelog = data.get("author") or "", data.get("changelog") or ""
    for name, value in (("author", author), ("changelog", changelog)):
        if not isinstance(value, str):
            problem(name, f"{name} must be text (quote it)")
    common = VersionDraft(
        # A file whose slug or folder is bad has problems and yields no draft: the
        # stand-in key only lets the remaining checks run, to report everything at once.
        key=key or PromptKey("unnamed"),
        template="",
        params=_params(data.get("params"), problem),
        author=str(author),
        changelog=str(changelog),
    )
    if override:
        draft = _override(common, key, data, body, body_line, lines, problems)
    else:
        # A malformed file name leaves it unsaid whether this is a variant's base, which
        # decides whether `match` is required or refused.
        draft = _base(common, key, data, body, body_line, lines, problems, bad_name)
    if problems:
        return _Loaded(None, sorted(problems, key=lambda p: p[0] or 0), key or guess)
    return _Loaded(LoadedPrompt(path, draft, lines), [], key)


def _bad_slug(slug: Any, path: Path) -> str:
    message = f"bad slug {slug!r}: must match [A-Za-z0-9._-]{{1,64}}"
    if isinstance(slug, str) and VARIANT_MARK in slug:
        # What the author meant is a variant, which only the file name can say.
        message += f"; a model variant is named by the file name: {slug}{path.suffix}"
    return message


def parse_yaml(source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data, parsed once (prompt files and eval
    suites alike). libyaml's parser is many
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


def _base(
    common: VersionDraft,
    key: PromptKey | None,
    data: dict[Any, Any],
    body: str | None,
    body_line: int,
    lines: dict[str, int],
    problems: list[_Problem],
    unknown_variant: bool,
) -> VersionDraft:
    def problem(name: str, message: str) -> None:
        problems.append((field_line(lines, name), message))

    variables = _variables(data.get("variables"), lines, problems)
    blocks = _blocks(data.get("blocks"), lines, problems)
    given = body if body is not None else data.get("template")
    # A template that is not text is reported below; "-" keeps the template checks quiet.
    template = given if isinstance(given, str) else "-"
    if key is not None and key.slug.startswith(RESERVED_PREFIX):
        # What a push would refuse, found by lint: the same check (``reserved``).
        reserved = reserved_problem(key, given if isinstance(given, str) else "", variables)
        if reserved is not None:
            problem(reserved.field.split("[")[0].split(".")[0], reserved.message)
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        problem("model", "model must be a model name such as gpt-4o-2024-08-06")
    caller_system = as_caller_system(data.get("caller_system", CALLER_SYSTEM_DROP))
    if caller_system is None:
        problem("caller_system", f"caller_system must be one of {', '.join(CALLER_SYSTEM)}")
        caller_system = CALLER_SYSTEM_DROP
    empty_line: int | None = body_line
    if body is not None:
        lines["template!"] = body_line  # where a Markdown file's template starts
    if body is None:
        body_line, empty_line = lines.get("template!", 1), lines.get("template")
        if not isinstance(given, str):
            problem("template", "template must be text (use 'template: |' and indent it)")
    if not template.strip():
        problems.append((empty_line, "template is empty"))
    names = {v.name for v in variables}
    for found in template_problems(template, variables, blocks):
        if found.variable is not None:
            # A declaration's problem: a variable's, or a block's (declared, never read).
            kind = "variables" if found.variable in names else "blocks"
            line = field_line(lines, f"{kind}.{found.variable}")
        else:
            line = None if found.line is None else body_line + found.line - 1
        problems.append((line, found.message))
    match = _match(data.get("match"), lines, problems)
    draft = replace(
        common,
        template=template,
        variables=variables,
        model=model,
        caller_system=caller_system,
        blocks=blocks,
        param_bounds=_param_bounds(data.get("param_bounds"), lines, problems),
        match=match or (),
    )
    # Whether ``match`` is required (a variant's base) or refused (the default variant),
    # and each pattern's alphabet, are the push's own checks; a `match` already reported
    # as malformed would only be called missing again.
    skip_match = unknown_variant or match is None
    for found_layer in base_problems(draft):
        about_match = found_layer.field.split("[")[0] == "match"
        if skip_match and about_match:
            continue
        message = found_layer.message
        if about_match and draft.key.variant is None:
            # The registry's words name the API's variant=; a file names it in its name.
            message += f"; a variant's base is a file named {draft.key.slug}@<variant>"
        problem(found_layer.field, message)
    return draft


def _override(
    common: VersionDraft,
    key: PromptKey | None,
    data: dict[Any, Any],
    body: str | None,
    body_line: int,
    lines: dict[str, int],
    problems: list[_Problem],
) -> VersionDraft:
    if key is not None and key.slug.startswith(RESERVED_PREFIX):
        reserved = reserved_problem(key, "", ())
        if reserved is not None:
            problems.append((field_line(lines, "slug"), reserved.message))
    if body is not None and body.strip():
        problems.append(
            (
                body_line,
                "an override has no template: its text goes in `fills` of the base's "
                "blocks, and the text below the front matter must be empty",
            )
        )
    return replace(
        common,
        fills=_fills(data.get("fills"), lines, problems),
        defaults=_defaults(data.get("defaults"), lines, problems),
    )


def _key_refused(name: str, override: bool, allowed: frozenset[str]) -> str:
    if name == "variant":
        return (
            "`variant` is not a key: the file name names the model variant, "
            "<slug>@<variant>.md or .yaml (also in tiers/<tier>/ and tenants/<tenant>/)"
        )
    if override and name in _BASE_ONLY:
        hint = " (an override fills the base's blocks with `fills:`)" if name == "blocks" else ""
        return (
            f"`{name}` belongs to the base, not to an override: an override holds only "
            f"fills, defaults and params (and author, changelog){hint}"
        )
    if not override and name in ("fills", "defaults"):
        return (
            f"`{name}` belongs to a tier's or tenant's override: put it in a file "
            "tiers/<tier>/<slug>.yaml or tenants/<tenant>/<slug>.yaml"
        )
    return f"unknown key {name!r} (allowed: {', '.join(sorted(allowed))})"


def _layer_key_problems(
    data: dict[Any, Any],
    path: Path,
    folder: _Folder,
    variant: str | None,
    problem: Callable[[str, str], None],
) -> None:
    """A ``tier:``/``tenant:`` key only repeats what the file's folder says."""
    given = [kind for kind in _LAYER_KEYS if kind in data]
    if len(given) > 1:
        problem("tenant", "give `tier` or `tenant`, not both: a file is one layer's override")
        return
    if not given:
        return
    kind = given[0]
    name = data[kind]
    slug = data.get("slug")
    stem = path.stem
    if isinstance(slug, str) and SLUG_PATTERN.match(slug):
        stem = slug if variant is None else f"{slug}{VARIANT_MARK}{variant}"
    if folder is None:
        problem(
            kind,
            f"`{kind}: {name}` makes this an override, and an override's layer is its "
            f"folder: move the file to {kind}s/{name}/{stem}{path.suffix} in the prompts "
            "folder",
        )
    elif isinstance(folder, Layer) and (folder.kind, folder.name) != (kind, name):
        problem(
            kind,
            f"`{kind}: {name}` disagrees with the folder, which makes this file the "
            f"override of {folder.kind} {folder.name} ({folder.kind}s/{folder.name}/): the "
            "folder names the layer, so move the file or correct the key",
        )


def _params(raw: Any, problem: Callable[[str, str], None]) -> dict[str, Any]:
    params = raw or {}
    if not isinstance(params, dict) or not _is_json(params):
        problem("params", "params must be a mapping of JSON values (e.g. temperature: 0.2)")
        return {}
    if (unstorable := unstorable_value(params, "params")) is not None:
        where, why = unstorable
        problem("params", f"{where}: {why}")
    for name in sorted(_RESERVED_PARAMS & params.keys()):
        problem("params", f"params may not set {name!r}")
    return params


def _blocks(raw: Any, lines: dict[str, int], problems: list[_Problem]) -> tuple[BlockSpec, ...]:
    """A mapping name -> default text, or name -> ``{default, max_chars, description}``.
    A malformed entry still declares its name, so the template check does not also call
    ``block.NAME`` undeclared."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        message = "blocks must be a mapping: name -> default text, or name -> {default, max_chars}"
        problems.append((lines.get("blocks"), message))
        return ()
    specs: list[BlockSpec] = []
    for name, spec in raw.items():
        line = field_line(lines, f"blocks.{name}")
        if not isinstance(name, str):
            problems.append((line, f"block names are text (got {name!r})"))
            continue
        if spec is None or isinstance(spec, str):
            specs.append(BlockSpec(name, spec or ""))
            continue
        if not isinstance(spec, dict):
            message = f"block {name!r} must be its default text or {{default, max_chars}}"
            problems.append((line, message))
            specs.append(BlockSpec(name))
            continue
        unknown = sorted(str(k) for k in spec if k not in _BLOCK_KEYS)
        if unknown:
            allowed = ", ".join(sorted(_BLOCK_KEYS))
            message = f"block {name!r}: unknown keys {', '.join(unknown)} (allowed: {allowed})"
            problems.append((line, message))
        default = spec.get("default")
        if default is not None and not isinstance(default, str):
            message = f"the default of block {name!r} must be text (quote it)"
            problems.append((field_line(lines, f"blocks.{name}.default"), message))
        limit: dict[str, int] = {}
        if "max_chars" in spec:
            max_chars = spec["max_chars"]
            if isinstance(max_chars, int) and not isinstance(max_chars, bool):
                limit["max_chars"] = max_chars
            else:
                message = f"max_chars of block {name!r} must be a whole number"
                problems.append((field_line(lines, f"blocks.{name}.max_chars"), message))
        specs.append(BlockSpec(name, default if isinstance(default, str) else "", **limit))
    return tuple(specs)


def _param_bounds(
    raw: Any, lines: dict[str, int], problems: list[_Problem]
) -> dict[str, tuple[float, float]]:
    """name -> ``[low, high]``; whether they are numbers in order is ``base_problems``'s."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        message = "param_bounds must be a mapping: parameter -> [low, high]"
        problems.append((lines.get("param_bounds"), message))
        return {}
    bounds: dict[str, tuple[float, float]] = {}
    for name, pair in raw.items():
        line = field_line(lines, f"param_bounds.{name}")
        if not isinstance(name, str):
            problems.append((line, f"parameter names are text (got {name!r})"))
        elif not isinstance(pair, list) or len(pair) != 2:
            problems.append((line, f"the bounds of {name!r} must be [low, high]"))
        else:
            bounds[name] = (pair[0], pair[1])
    return bounds


def _match(raw: Any, lines: dict[str, int], problems: list[_Problem]) -> tuple[str, ...] | None:
    """A variant's model patterns, as a list of text (None: not a list of text, reported);
    a bad pattern is ``base_problems``'s."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        message = (
            "match must be a list of model patterns, e.g. [claude-*] (quote one that starts "
            'with *: ["*-mini"])'
        )
        problems.append((lines.get("match"), message))
        return None
    return tuple(raw)


def _fills(raw: Any, lines: dict[str, int], problems: list[_Problem]) -> dict[str, str]:
    """Block name -> text; whether the base declares the block is the folder's check."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append((lines.get("fills"), "fills must be a mapping: block name -> text"))
        return {}
    fills: dict[str, str] = {}
    for name, text in raw.items():
        line = field_line(lines, f"fills.{name}")
        if not isinstance(name, str):
            problems.append((line, f"block names are text (got {name!r})"))
        elif not isinstance(text, str):
            message = f"the fill of block {name!r} must be text ('' to leave it empty)"
            problems.append((line, message))
        else:
            fills[name] = text
    return fills


def _defaults(raw: Any, lines: dict[str, int], problems: list[_Problem]) -> dict[str, Any]:
    """Variable name -> value; whether the base declares it, and its type, is the folder's
    check."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        message = "defaults must be a mapping: variable name -> value"
        problems.append((lines.get("defaults"), message))
        return {}
    defaults: dict[str, Any] = {}
    for name, value in raw.items():
        line = field_line(lines, f"defaults.{name}")
        if not isinstance(name, str):
            problems.append((line, f"variable names are text (got {name!r})"))
        elif not _is_json(value):
            problems.append((line, f"the default of {name!r} must be a JSON value"))
        elif (unstorable := unstorable_value(value, "default")) is not None:
            message = f"the default of {name!r} must be a JSON value: {unstorable[1]}"
            problems.append((line, message))
        else:
            defaults[name] = value
    return defaults


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
    """1-based file lines of top-level keys and of the keys nested in them (two levels:
    ``blocks.tone``, ``blocks.tone.max_chars``), of each variable also in the list form
    ("variables.<name>"), and of the first line of the template text ("template!")."""
    lines: dict[str, int] = {}

    def visit(node: yaml.Node, prefix: str, depth: int) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            name = f"{prefix}{key.value}"
            lines.setdefault(name, key.start_mark.line + 1 + offset)
            if depth:
                visit(value, f"{name}.", depth - 1)

    visit(root, "", 2)
    for key, value in root.value:
        name = str(key.value)
        if name == "template" and isinstance(value, yaml.ScalarNode):
            # A block scalar ('|') starts on the line after its indicator.
            block = value.style in ("|", ">")
            lines["template!"] = value.start_mark.line + 1 + offset + (1 if block else 0)
        if name == "variables" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                var = item.value if isinstance(item, yaml.ScalarNode) else None
                if isinstance(item, yaml.MappingNode):
                    var = next((v.value for k, v in item.value if k.value == "name"), None)
                if isinstance(var, str):
                    lines.setdefault(f"variables.{var}", item.start_mark.line + 1 + offset)
    return lines


def _duplicate_keys(root: yaml.MappingNode, offset: int) -> list[_Problem]:
    # PyYAML keeps the last of two equal keys silently; a prompt file should not.
    found: list[_Problem] = []

    def check(node: yaml.MappingNode, prefix: str) -> None:
        seen: set[str] = set()
        for key, _ in node.value:
            if key.value in seen:
                line = key.start_mark.line + 1 + offset
                found.append((line, f"key {prefix + str(key.value)!r} appears twice"))
            seen.add(key.value)

    check(root, "")
    for key, value in root.value:
        if key.value in _ENTRY_MAPPINGS and isinstance(value, yaml.MappingNode):
            check(value, f"{key.value}.")
    return found


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
