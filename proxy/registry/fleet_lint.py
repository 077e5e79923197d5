"""A prompts folder checked as a whole: every override against its base in the same folder.

A push checks an override against the base serving in the registry; a folder in CI has
the next base beside the overrides it will meet. So each override file is checked against
its base file (``override_problems``), then composed with it as a request of that tier or
tenant would be (``compose``) and, when every variable has a default, rendered: a base
edit that drops a block a customer fills, or a fill that no longer renders over the new
template, fails the lint on the override's file, naming the base, before anything is
pushed. A tenant's tier is a registry record, unknown offline, so a tenant override is
composed without a tier override.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.composition import Composition, compose, layer_label
from proxy.registry.layer_checks import override_problems
from proxy.registry.models import PromptVersion, VersionDraft
from proxy.registry.templates import PromptRenderer, RenderError, TemplateProblem

#: A problem of the fleet: the file it is reported on, its 1-based line or None, the text.
FleetProblem = tuple[Path, int | None, str]


@dataclass(frozen=True, slots=True)
class LoadedPrompt:
    """A prompt file that loaded without problems, with where its keys are."""

    path: Path
    draft: VersionDraft
    #: 1-based file lines by field: ``fills``, ``fills.tone``, ``blocks.tone.max_chars``
    lines: Mapping[str, int]

    def line_of(self, field: str) -> int | None:
        return field_line(self.lines, field)


def field_line(lines: Mapping[str, int], field: str) -> int | None:
    """The line of ``field`` (as the checks name it: ``fills.tone``, ``variables[0]``), else
    of the nearest enclosing key written in the file."""
    name = field.split("[")[0]
    while name:
        if name in lines:
            return lines[name]
        name = name.rpartition(".")[0]
    return None


def fleet_problems(
    prompts: Sequence[LoadedPrompt], root: Path, broken_bases: Collection[PromptKey] = ()
) -> list[FleetProblem]:
    """What the overrides among ``prompts`` get wrong against their bases among them.
    ``broken_bases`` are base keys whose file has problems of its own: their overrides
    wait for a base that loads rather than being reported as having none."""
    bases = {p.draft.key: p for p in prompts if p.draft.key.layer is None}
    # Versions, as the checks take them; numbered 1, but named by file in every message.
    versions = {key: p.draft.to_version(1, 0.0) for key, p in bases.items()}
    # One renderer for the fleet: each base template compiles once for all its overrides.
    renderer = PromptRenderer()
    alone: dict[PromptKey, str | None] = {}
    found: list[FleetProblem] = []
    for prompt in prompts:
        key = prompt.draft.key
        if key.layer is None:
            continue
        base_key = PromptKey(key.slug, None, key.variant)
        base = bases.get(base_key)
        if base is None:
            if base_key not in broken_bases:
                found.append((prompt.path, None, _no_base(base_key, root)))
            continue
        base_version = versions[base_key]
        name = f"base {_relative(base.path, root)}"
        label = layer_label(base_version)
        problems = override_problems(prompt.draft, base_version)
        for problem in problems:
            message = _naming(problem.message, label, name)
            found.append((prompt.path, prompt.line_of(problem.field), message))
        if problems:
            # ``compose`` would leave out the same parts: each is reported once, above.
            continue
        override = prompt.draft.to_version(1, 0.0)
        if key.layer.kind == "tier":
            composed = compose(base_version, override, None)
        else:
            composed = compose(base_version, None, override)
        for entry in composed.ignored:
            text = _naming(entry.problem, label, name)
            found.append((prompt.path, None, f"{text} (left out when composed)"))
        if base_key not in alone:
            alone[base_key] = _render_failure(renderer, compose(base_version))
        failure = _render_failure(renderer, composed)
        # A base that fails alone fails every override the same way: not theirs to fix.
        if failure is not None and failure != alone[base_key]:
            found.append((prompt.path, None, f"composed with {name}: {failure}"))
    return found


def _render_failure(renderer: PromptRenderer, composed: Composition) -> str | None:
    """Why ``composed`` does not render with its defaults; None when it does, or when a
    variable has no default (only a caller's values could render it)."""
    if not all(v.has_default for v in composed.variables):
        return None
    base: PromptVersion = composed.base
    try:
        renderer.render(
            composed.render_key,
            base.template,
            composed.variables,
            {},
            composed.blocks,
            template_key=base.sha256,
        )
    except (RenderError, TemplateProblem) as exc:
        return str(exc)
    return None


def _naming(message: str, label: str, name: str) -> str:
    # The checks name a base by its registry version (``base@1``); offline there is no
    # version, and the file is what the author knows.
    return message.replace(label, name)


def _no_base(base_key: PromptKey, root: Path) -> str:
    return (
        f"no base prompt {base_key.text!r} in {root}: an override is checked against its "
        f"base's file in the same folder ({base_key.text}.md or .yaml); lint the folder "
        "that holds both"
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
