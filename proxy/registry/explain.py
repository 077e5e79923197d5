"""What a tenant's request is composed of, segment by segment: ``prompts explain``.

The composed prompt is rendered twice: once as a request would get it, and once with each
block's value replaced by a marker, so the base's own text can be told apart from each
block's and every segment named by the layer that wrote it. When the markers do not come
through unchanged (a base that filters a block, ``{{ block.tone | upper }}``), the whole
text is one segment of the base; what a request gets is still shown exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from proxy.registry.composition import Composition, compose, layer_label
from proxy.registry.models import PromptVersion, RegistrySnapshot, VariableSpec
from proxy.registry.templates import PromptRenderer, RenderError, TemplateProblem

# Private-use code points: no prompt text holds them, and Jinja passes them through.
_MARK = "\ue000{}\ue001"
_MARKS = re.compile("\ue000([0-9]+)\ue001")


@dataclass(frozen=True, slots=True)
class Segment:
    layer: str
    #: The block the text fills; None for the base's own text.
    block: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Explanation:
    slug: str
    tenant: str | None
    tier: str | None
    layers: str
    #: (layer, text) of each system message the proxy puts first, in order.
    messages: list[tuple[str, str]]
    segments: list[Segment]
    #: name -> (value, layer that set it)
    params: dict[str, tuple[Any, str]]
    model: str | None
    #: Variables with no value here (shown as ``{{ name }}``).
    variables: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class ExplainFailed(Exception):
    """The composition does not render with defaults and placeholders alone."""


def explain(
    snapshot: RegistrySnapshot,
    base: PromptVersion,
    tenant: str | None,
    tier: str | None,
) -> Explanation:
    """``base`` composed for ``tenant`` (its override, if any) in ``tier`` (its tier's)."""
    layered = snapshot.overrides.get(base.key)
    tier_v = None if layered is None or tier is None else layered.tiers.get(tier)
    tenant_v = None if layered is None or tenant is None else layered.tenants.get(tenant)
    composed = compose(base, tier_v, tenant_v)
    variables, missing = with_placeholders(composed.variables)
    renderer = PromptRenderer(max_cached=8)
    text = _render(renderer, composed, variables, composed.blocks)
    marked = tuple(
        (name, f"mark:{index}", _MARK.format(index))
        for index, (name, _, _) in enumerate(composed.blocks)
    )
    segments = _segments(
        _render(renderer, composed, variables, marked, "marked"), composed, renderer, variables
    )
    if "".join(s.text for s in segments) != text:
        segments = [Segment(layer_label(base), None, text)]
    messages: list[tuple[str, str]] = []
    if (rules := snapshot.guardrails) is not None:
        try:
            rules_text = renderer.render(rules.sha256, rules.template, rules.variables, {})
        except (RenderError, TemplateProblem) as exc:
            rules_text = f"(the guardrails cannot be rendered: {exc})"
        messages.append((f"guardrails@{rules.version}", rules_text))
    messages.append((composed.layers, text))
    layers = ",".join([*(label for label, _ in messages[:-1]), composed.layers])
    return Explanation(
        slug=base.key.text,
        tenant=tenant,
        tier=tier,
        layers=layers,
        messages=messages,
        segments=[s for s in segments if s.text],
        params={
            name: (value, composed.param_sources[name]) for name, value in composed.params.items()
        },
        model=base.model,
        variables=missing,
        ignored=[str(misfit) for misfit in composed.ignored],
    )


def with_placeholders(
    variables: tuple[VariableSpec, ...],
) -> tuple[tuple[VariableSpec, ...], list[str]]:
    """Each variable without a default gets ``{{ name }}`` as one (untyped, so any type's
    variable takes it): the explanation shows where the caller's value goes."""
    missing = [v.name for v in variables if not v.has_default]
    return (
        tuple(
            v if v.has_default else VariableSpec(v.name, None, "{{ " + v.name + " }}", True)
            for v in variables
        ),
        missing,
    )


def _render(
    renderer: PromptRenderer,
    composed: Composition,
    variables: tuple[VariableSpec, ...],
    blocks: tuple[tuple[str, str, str], ...],
    kind: str = "text",
) -> str:
    base = composed.base
    try:
        return renderer.render(
            f"{kind}:{composed.render_key}",
            base.template,
            variables,
            {},
            blocks,
            template_key=base.sha256,
        )
    except (RenderError, TemplateProblem) as exc:
        raise ExplainFailed(
            f"{composed.layers} does not render with its defaults and a placeholder for each "
            f"variable without one: {exc}"
        ) from None


def _segments(
    marked: str,
    composed: Composition,
    renderer: PromptRenderer,
    variables: tuple[VariableSpec, ...],
) -> list[Segment]:
    base_label = layer_label(composed.base)
    names = [name for name, _, _ in composed.blocks]
    fills = _fill_texts(composed, renderer, variables)
    segments: list[Segment] = []
    cursor = 0
    for match in _MARKS.finditer(marked):
        segments.append(Segment(base_label, None, marked[cursor : match.start()]))
        index = int(match.group(1))
        if index >= len(names):
            return []
        name = names[index]
        segments.append(Segment(composed.block_sources[name], name, fills[name]))
        cursor = match.end()
    segments.append(Segment(base_label, None, marked[cursor:]))
    return segments


def _fill_texts(
    composed: Composition, renderer: PromptRenderer, variables: tuple[VariableSpec, ...]
) -> dict[str, str]:
    """Each block's rendered text, as the base receives it."""
    texts: dict[str, str] = {}
    for name, key, text in composed.blocks:
        try:
            texts[name] = renderer.render(f"fill:{key}", text, variables, {})
        except (RenderError, TemplateProblem) as exc:
            raise ExplainFailed(f"block {name!r} does not render: {exc}") from None
    return texts
