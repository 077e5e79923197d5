"""What a version of each layer may hold, checked at push (and by ``prompts lint``).

A base (the plain key, or later a variant's) holds the template; it may declare ``blocks``
its overrides fill and ``param_bounds`` for the parameters they set. An override (a
``tier=``/``tenant=`` key) holds only ``fills``, ``defaults`` and ``params``, checked
against the base version it is pushed over: a fill of a block the base does not declare,
a fill reading a variable the base does not declare, a default for an unknown variable
or of the wrong type, a parameter the base does not bound or outside its bounds, each is
refused naming the field. An override holds no template, so it cannot remove, edit or
precede the guardrails, which are a message of their own (``docs/design-tenancy.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.prompt_key import GUARDRAILS_SLUG
from proxy.registry.composition import compose, layer_label
from proxy.registry.models import (
    CALLER_SYSTEM_DROP,
    MAX_BLOCK_CHARS,
    MODEL_PATTERN,
    PromptVersion,
    VersionDraft,
    finite_number,
    within_bounds,
)
from proxy.registry.override_fit import render_problem
from proxy.registry.templates import BLOCK_NAME, VARIABLE_TYPES, names_read, template_problems

_BLOCK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Parameters a layer never sets: they come from the pin, the request or the variables.
_UNBOUNDED = frozenset({"model", "messages", "input", "instructions", "prompt_variables"})


@dataclass(frozen=True, slots=True)
class LayerProblem:
    #: The field at fault, as the API names it: ``fills.tone``, ``params.temperature``.
    field: str
    message: str


def base_problems(draft: VersionDraft) -> list[LayerProblem]:
    """What a base version's layer fields get wrong (its template is checked apart)."""
    problems: list[LayerProblem] = []
    for name in ("fills", "defaults"):
        if getattr(draft, name):
            problems.append(
                LayerProblem(
                    name,
                    f"`{name}` belong to a tier's or tenant's override (push with tier= or "
                    "tenant=); a base declares `blocks` and `variables` instead.",
                )
            )
    problems.extend(_match_problems(draft))
    if draft.key.slug == GUARDRAILS_SLUG and (draft.blocks or draft.param_bounds):
        problems.append(
            LayerProblem(
                "blocks" if draft.blocks else "param_bounds",
                f"{GUARDRAILS_SLUG} has no overrides, so nothing could fill or bound them.",
            )
        )
    for block in draft.blocks:
        where = f"blocks.{block.name}"
        if not _BLOCK_NAME.fullmatch(block.name):
            problems.append(
                LayerProblem(
                    where,
                    f"block name {block.name!r} must be a letter, then "
                    "letters, digits or '_' (at most 64)",
                )
            )
            continue
        if not 1 <= block.max_chars <= MAX_BLOCK_CHARS:
            problems.append(
                LayerProblem(f"{where}.max_chars", f"max_chars must be 1 to {MAX_BLOCK_CHARS}")
            )
        elif len(block.default) > block.max_chars:
            problems.append(
                LayerProblem(
                    f"{where}.default",
                    f"the default of block {block.name!r} is {len(block.default)} characters, "
                    f"over its max_chars {block.max_chars}",
                )
            )
        found = template_problems(block.default, draft.variables)
        if found:
            problems.append(LayerProblem(f"{where}.default", f"block {block.name!r}: {found[0]}"))
    if len({b.name for b in draft.blocks}) != len(draft.blocks):
        problems.append(LayerProblem("blocks", "a block is declared twice"))
    for name, bounds in draft.param_bounds.items():
        where = f"param_bounds.{name}"
        if name in _UNBOUNDED:
            problems.append(LayerProblem(where, f"{name!r} is not a parameter a layer can set"))
            continue
        low, high = bounds
        if not (finite_number(low) and finite_number(high) and low <= high):
            problems.append(
                LayerProblem(where, f"bounds of {name!r} must be two finite numbers, low <= high")
            )
            continue
        if name in draft.params and not within_bounds(draft.params[name], bounds):
            problems.append(
                LayerProblem(
                    f"params.{name}",
                    f"the base's own {name} {draft.params[name]!r} is outside its bounds "
                    f"[{low:g}, {high:g}]",
                )
            )
    return problems


def override_problems(
    draft: VersionDraft | PromptVersion, base: PromptVersion
) -> list[LayerProblem]:
    """What an override gets wrong against ``base``, the base version it is pushed over:
    each field on its own, then the composition rendered with the defaults (a default of
    the right type can still fail the template, ``{{ products[0] }}`` with ``[]``)."""
    problems = _field_problems(draft, base)
    if problems or draft.key.layer is None:
        return problems
    override = draft if isinstance(draft, PromptVersion) else draft.to_version(1, 0.0)
    tier = override if draft.key.layer.kind == "tier" else None
    tenant = None if tier is not None else override
    failure = render_problem(compose(base, tier, tenant))
    if failure is not None and render_problem(compose(base)) is None:
        problems.append(
            LayerProblem(
                "fills" if draft.fills else "defaults",
                f"composed with {layer_label(base)} it does not render: {failure}",
            )
        )
    return problems


def _field_problems(draft: VersionDraft | PromptVersion, base: PromptVersion) -> list[LayerProblem]:
    problems: list[LayerProblem] = []
    label = layer_label(base)
    for name in base_only_fields(draft):
        problems.append(
            LayerProblem(
                name,
                f"an override holds only fills, defaults and params; `{name}` belongs to "
                "the base (the guardrails and the base's text are not an override's to "
                "change)",
            )
        )
    declared_blocks = {b.name: b for b in base.blocks}
    for name, text in draft.fills.items():
        where = f"fills.{name}"
        block = declared_blocks.get(name)
        if block is None:
            offered = ", ".join(sorted(declared_blocks)) or "none"
            problems.append(
                LayerProblem(
                    where,
                    f"block {name!r} is not declared by {label} (it declares: {offered})",
                )
            )
            continue
        if len(text) > block.max_chars:
            problems.append(
                LayerProblem(
                    where,
                    f"the fill of block {name!r} is {len(text)} characters, over the "
                    f"{block.max_chars} {label} allows",
                )
            )
            continue
        if BLOCK_NAME in (names_read(text) or ()):
            problems.append(LayerProblem(where, f"block {name!r}: a fill cannot read blocks"))
            continue
        found = template_problems(text, base.variables)
        if found:
            problems.append(LayerProblem(where, f"block {name!r}: {found[0]}"))
    variables = {v.name: v for v in base.variables}
    for name, value in draft.defaults.items():
        where = f"defaults.{name}"
        spec = variables.get(name)
        if spec is None:
            problems.append(LayerProblem(where, f"{name!r} is not a variable of {label}"))
        elif not VARIABLE_TYPES.get(spec.type, _anything)(value):
            problems.append(
                LayerProblem(where, f"the default of {name!r} must be of type {spec.type}")
            )
    for name, value in draft.params.items():
        where = f"params.{name}"
        bounds = base.param_bounds.get(name)
        if bounds is None:
            bounded = ", ".join(sorted(base.param_bounds)) or "none"
            problems.append(
                LayerProblem(
                    where,
                    f"{label} does not let overrides set {name!r} (it bounds: {bounded})",
                )
            )
        elif not within_bounds(value, bounds):
            problems.append(
                LayerProblem(
                    where,
                    f"{name} {value!r} is outside the bounds {label} declares "
                    f"[{bounds[0]:g}, {bounds[1]:g}]",
                )
            )
    return problems


def _match_problems(draft: VersionDraft | PromptVersion) -> list[LayerProblem]:
    """A variant's base says which models it serves; the default variant serves the rest."""
    if draft.key.variant is None:
        if draft.match:
            return [
                LayerProblem(
                    "match",
                    "`match` belongs to a model variant (variant=NAME); the default variant "
                    "serves every model no variant matches",
                )
            ]
        return []
    if not draft.match:
        return [
            LayerProblem(
                "match",
                f"variant {draft.key.variant!r} needs `match`: the request models it serves "
                "(glob patterns such as claude-*)",
            )
        ]
    return [
        LayerProblem(f"match[{i}]", f"{pattern!r} is not a model pattern")
        for i, pattern in enumerate(draft.match)
        if not MODEL_PATTERN.fullmatch(pattern)
    ]


def base_only_fields(draft: VersionDraft | PromptVersion) -> list[str]:
    """The fields only a base may hold that ``draft`` holds: none, for an override."""
    held = {
        "template": draft.template != "",
        "variables": bool(draft.variables),
        "model": draft.model is not None,
        "caller_system": draft.caller_system != CALLER_SYSTEM_DROP,
        "blocks": bool(draft.blocks),
        "param_bounds": bool(draft.param_bounds),
        "match": bool(draft.match),
    }
    return [name for name, present in held.items() if present]


def _anything(value: Any) -> bool:
    return True
