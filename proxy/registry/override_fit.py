"""Does a base version fit every override in use? Checked before it can serve anyone.

A base change that helps the median customer can break the customers at the edges: a
block an override fills is gone, a fill reads a variable the base dropped, a bound moved
under an override's parameter, or the composition no longer renders. Each tier's override,
and each tenant's override (with its tier's, as its requests get them), is composed with
the base and rendered with the defaults and a placeholder for each variable without one;
what breaks is reported by layer. A push reports it; starting a rollout of the base or
promoting it is refused with breakage unless forced with a reason (``RegistryService``).

A guardrail cannot be displaced by any override (an override holds no template, and the
guardrails are a message of their own), so there is nothing to check for that here.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.prompt_key import PromptKey
from proxy.registry.composition import Composition, compose, layer_label
from proxy.registry.explain import with_placeholders
from proxy.registry.models import LayerOverrides, PromptVersion, RegistrySnapshot
from proxy.registry.templates import PromptRenderer, RenderError, TemplateProblem


@dataclass(frozen=True, slots=True)
class Breakage:
    #: The override's label (``tenant:acme@4``).
    layer: str
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FitReport:
    #: The base's label (``base@5``).
    base: str
    #: Overrides composed with it.
    checked: int
    broken: tuple[Breakage, ...] = ()

    def summary(self) -> str:
        return "; ".join(f"{b.layer} ({'; '.join(b.problems)})" for b in self.broken)


def fit_report(snapshot: RegistrySnapshot, base: PromptVersion) -> FitReport:
    """``base`` against the prod overrides of its key in ``snapshot``."""
    layered = layered_overrides(snapshot, base.key)
    label = layer_label(base)
    if layered is None:
        return FitReport(label, 0)
    renderer = PromptRenderer()
    renders_alone = render_problem(compose(base), renderer) is None
    found: dict[str, list[str]] = {}
    compositions = [compose(base, v) for _, v in sorted(layered.tiers.items())]
    for tenant_id, override in sorted(layered.tenants.items()):
        record = snapshot.tenants.get(tenant_id)
        tier = None if record is None else layered.tiers.get(record.tier)
        compositions.append(compose(base, tier, override))
    for composed in compositions:
        own = layer_label(composed.overrides[-1])
        for misfit in composed.ignored:
            # A tenant's composition also holds its tier's misfits, reported under the tier.
            if misfit.layer == own:
                found.setdefault(own, []).append(misfit.problem)
        if renders_alone and (problem := render_problem(composed, renderer)) is not None:
            found.setdefault(own, []).append(f"does not render with {label}: {problem}")
    broken = tuple(Breakage(layer, tuple(problems)) for layer, problems in found.items())
    return FitReport(label, len(compositions), broken)


def layered_overrides(snapshot: RegistrySnapshot, key: PromptKey) -> LayerOverrides | None:
    """The prod overrides ``key``'s requests compose: for a variant, its own over its default
    variant's, whether or not the variant serves yet (its first version is checked too)."""
    own = snapshot.overrides.get(key)
    if key.variant is None:
        return own
    inherited = snapshot.overrides.get(PromptKey(key.slug))
    if inherited is None:
        return own
    own = own or LayerOverrides()
    return LayerOverrides({**inherited.tiers, **own.tiers}, {**inherited.tenants, **own.tenants})


def render_problem(composed: Composition, renderer: PromptRenderer | None = None) -> str | None:
    """Why ``composed`` does not render with its defaults and a placeholder for each
    variable without one; None when it does."""
    renderer = renderer or PromptRenderer(max_cached=8)
    base = composed.base
    variables, _ = with_placeholders(composed.variables)
    try:
        renderer.render(
            f"fit:{composed.render_key}",
            base.template,
            variables,
            {},
            composed.blocks,
            template_key=base.sha256,
        )
    except (RenderError, TemplateProblem) as exc:
        return str(exc)
    return None
