"""A prompts folder checked as a whole: every override against its base in the same folder.

A push checks an override against the base serving in the registry; a folder in CI has
the next base beside the overrides it will meet. So each override file is checked against
its base file (``override_problems``), then composed with it as a request of that tier or
tenant would be (``compose``) and, when every variable has a default, rendered: a base
edit that drops a block a customer fills, or a fill that no longer renders over the new
template, fails the lint on the override's file, naming the base, before anything is
pushed. A tenant's tier is a registry record, unknown offline, so a tenant override is
composed without a tier override.

A model variant's override (``tenants/acme/support@claude.yaml``) is checked against the
variant's base file (``support@claude.md``), never the default variant's: the request path
composes it over the variant's base. A layer's override of the default variant is checked
against every variant base of its slug that the layer has no override of in the folder too,
since the request path falls back to it there. Two variants of a slug whose patterns can match one
model at the same specificity are a warning (``variant_warnings``): the request path then
picks by variant name, which is legal but rarely what was meant.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, product
from pathlib import Path

from proxy.prompt_key import PromptKey
from proxy.registry.composition import Composition, compose, layer_label
from proxy.registry.layer_checks import override_problems
from proxy.registry.model_globs import common_model, specificity
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
    overrides = {p.draft.key for p in prompts if p.draft.key.layer is not None}
    variants: dict[str, list[PromptKey]] = {}
    for base_key in sorted(bases):
        if base_key.variant is not None:
            variants.setdefault(base_key.slug, []).append(base_key)
    fleet = _Fleet(root, bases)
    found: list[FleetProblem] = []
    for prompt in prompts:
        key = prompt.draft.key
        if key.layer is None:
            continue
        base_key = PromptKey(key.slug, None, key.variant)
        if base_key not in bases:
            if base_key not in broken_bases:
                found.append((prompt.path, None, _no_base(base_key, root)))
            continue
        found.extend(fleet.check(prompt, base_key))
        if key.variant is not None:
            continue
        # Where a layer has no override of a variant, the request path composes its
        # default variant's override over the variant's base: it must fit there too.
        for variant_key in variants.get(key.slug, ()):
            if PromptKey(key.slug, key.layer, variant_key.variant) in overrides:
                continue
            note = (
                f" (this override also serves variant {variant_key.variant!r}, of which "
                f"{key.layer.kind} {key.layer.name} has no override of its own)"
            )
            found.extend(fleet.check(prompt, variant_key, note))
    return found


class _Fleet:
    """Each override checked against a base of the folder, sharing what every override
    of that base would compute again."""

    def __init__(self, root: Path, bases: Mapping[PromptKey, LoadedPrompt]) -> None:
        self._root = root
        self._bases = bases
        # Versions, as the checks take them; numbered 1, but named by file in every message.
        self._versions = {key: p.draft.to_version(1, 0.0) for key, p in bases.items()}
        # One renderer for the fleet: each base template compiles once for all its overrides.
        self._renderer = PromptRenderer()
        self._alone: dict[PromptKey, str | None] = {}

    def check(
        self, prompt: LoadedPrompt, base_key: PromptKey, note: str = ""
    ) -> list[FleetProblem]:
        """What ``prompt``, an override, gets wrong over the base ``base_key``; ``note``
        ends each message (why this base, when it is not the override's own)."""
        key = prompt.draft.key
        assert key.layer is not None  # only overrides are checked against a base
        base_version = self._versions[base_key]
        name = f"base {_relative(self._bases[base_key].path, self._root)}"
        label = layer_label(base_version)
        found: list[FleetProblem] = []
        problems = override_problems(prompt.draft, base_version)
        for problem in problems:
            message = _naming(problem.message, label, name) + note
            found.append((prompt.path, prompt.line_of(problem.field), message))
        if problems:
            # ``compose`` would leave out the same parts: each is reported once, above.
            return found
        override = prompt.draft.to_version(1, 0.0)
        if key.layer.kind == "tier":
            composed = compose(base_version, override, None)
        else:
            composed = compose(base_version, None, override)
        for entry in composed.ignored:
            text = _naming(entry.problem, label, name)
            found.append((prompt.path, None, f"{text} (left out when composed){note}"))
        if base_key not in self._alone:
            self._alone[base_key] = _render_failure(self._renderer, compose(base_version))
        failure = _render_failure(self._renderer, composed)
        # A base that fails alone fails every override the same way: not theirs to fix.
        if failure is not None and failure != self._alone[base_key]:
            found.append((prompt.path, None, f"composed with {name}: {failure}{note}"))
        return found


def variant_warnings(prompts: Sequence[LoadedPrompt], root: Path) -> list[FleetProblem]:
    """Pairs of variant bases of one slug that can match the same model at the same
    specificity, each reported on the later one by name (the one such a model does not
    get), at its ``match`` line, with a model both match."""
    by_slug: dict[str, list[LoadedPrompt]] = {}
    for prompt in prompts:
        key = prompt.draft.key
        if key.layer is None and key.variant is not None and prompt.draft.match:
            by_slug.setdefault(key.slug, []).append(prompt)
    found: list[FleetProblem] = []
    for variants in by_slug.values():
        variants.sort(key=lambda p: p.draft.key.variant or "")
        for first, second in combinations(variants, 2):
            level = specificity(first.draft.match)
            if level != specificity(second.draft.match):
                continue  # the more specific variant wins, as its author meant
            model = next(
                (
                    shared
                    for a, b in product(first.draft.match, second.draft.match)
                    if (shared := common_model(a, b)) is not None
                ),
                None,
            )
            if model is None:
                continue
            winner, loser = first.draft.key.variant, second.draft.key.variant
            found.append(
                (
                    second.path,
                    second.line_of("match"),
                    f"variant {loser!r} and variant {winner!r} "
                    f"({_relative(first.path, root)}) both match models such as {model!r}, "
                    f"at the same specificity ({level} literal characters in the most "
                    f"literal pattern): such a request gets {winner!r}, the first by name; "
                    "make one variant's patterns more specific, or keep them apart",
                )
            )
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
    message = (
        f"no base prompt {base_key.text!r} in {root}: an override is checked against its "
        f"base's file in the same folder ({base_key.text}.md or .yaml); lint the folder "
        "that holds both"
    )
    if base_key.variant is not None:
        # The default variant's base is no stand-in: the request path composes an
        # override of a variant over that variant's base.
        message += (
            f" (an override of variant {base_key.variant!r} is checked against that "
            f"variant's base, not {base_key.slug}'s)"
        )
    return message


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
