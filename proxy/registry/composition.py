"""A base version composed with its tier's and tenant's overrides: pure data, built once.

The guardrails are not part of it: they are their own message (``pipeline.render``). What
is composed is the base's template with its blocks filled (the tenant's fill over the
tier's over the base's default), its variables' defaults (the overrides' over the base's)
and its parameters (the base's, then the tier's, then the tenant's). An override is
checked against the base when it is pushed; a part of one that no longer fits the base
serving now (a block it no longer declares, a fill reading a variable it dropped, a
parameter out of its bounds) is left out, so the tenant gets the base's own text there
rather than a failing request, and ``ignored`` says what was left out.

``composition`` looks a composition up in the snapshot's memo, building it on the first
request that needs it: a request does a few dict lookups.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from proxy.registry.models import (
    PromptVersion,
    RegistrySnapshot,
    Tenant,
    VariableSpec,
    within_bounds,
)
from proxy.registry.templates import VARIABLE_TYPES, BlockFill, names_read


def layer_label(version: PromptVersion) -> str:
    """``base@3``, ``tier:enterprise@1``, ``tenant:acme@4``; a model variant's line adds
    its name, ``base[claude]@2``, ``tenant:acme[claude]@1`` (a default variant's override
    composed into a variant keeps its own label)."""
    key = version.key
    layer = key.layer
    name = "base" if layer is None else f"{layer.kind}:{layer.name}"
    variant = "" if key.variant is None else f"[{key.variant}]"
    return f"{name}{variant}@{version.version}"


@dataclass(frozen=True, slots=True)
class Misfit:
    """A part of an override that does not fit the base it is composed with."""

    #: The override's label (``tenant:acme@4``).
    layer: str
    problem: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.problem}"


@dataclass(frozen=True, slots=True)
class Composition:
    base: PromptVersion
    #: The overrides composed, tier's first.
    overrides: tuple[PromptVersion, ...]
    #: Names the whole composition for the renderer's cache.
    render_key: str
    variables: tuple[VariableSpec, ...]
    blocks: tuple[BlockFill, ...]
    params: dict[str, Any]
    #: block name -> the layer whose text fills it; parameter name -> the layer that set it
    block_sources: dict[str, str]
    param_sources: dict[str, str]
    #: ``base@3,tier:enterprise@1,tenant:acme@4``
    layers: str
    #: What of the overrides does not fit this base and was left out.
    ignored: tuple[Misfit, ...] = ()


def compose(
    base: PromptVersion,
    tier: PromptVersion | None = None,
    tenant: PromptVersion | None = None,
) -> Composition:
    overrides = tuple(v for v in (tier, tenant) if v is not None)
    base_label = layer_label(base)
    declared = {v.name: v for v in base.variables}
    names = frozenset(declared)
    ignored: list[Misfit] = []

    defaults: dict[str, Any] = {}
    fills: dict[str, tuple[str, str, str]] = {
        b.name: (b.default, _text_key(b.default), base_label) for b in base.blocks
    }
    limits = {b.name: b.max_chars for b in base.blocks}
    params = dict(base.params)
    param_sources = dict.fromkeys(base.params, base_label)
    for override in overrides:
        label = layer_label(override)
        for name, value in override.defaults.items():
            spec = declared.get(name)
            if spec is None:
                ignored.append(
                    Misfit(label, f"default {name!r}: {base_label} has no such variable")
                )
            elif not VARIABLE_TYPES.get(spec.type, _never)(value):
                ignored.append(Misfit(label, f"default {name!r}: {base_label} wants a {spec.type}"))
            else:
                defaults[name] = value
        for name, text in override.fills.items():
            why = _fill_misfit(name, text, limits, names)
            if why is not None:
                ignored.append(Misfit(label, f"fill of block {name!r}: {why.format(base_label)}"))
            else:
                fills[name] = (text, _text_key(text), label)
        for name, value in override.params.items():
            bounds = base.param_bounds.get(name)
            if bounds is None:
                ignored.append(Misfit(label, f"parameter {name!r}: {base_label} does not bound it"))
            elif not within_bounds(value, bounds):
                ignored.append(
                    Misfit(
                        label,
                        f"parameter {name!r}: {value!r} is outside {base_label}'s bounds "
                        f"[{bounds[0]:g}, {bounds[1]:g}]",
                    )
                )
            else:
                params[name] = value
                param_sources[name] = label

    variables = tuple(
        VariableSpec(v.name, v.type, defaults[v.name], True) if v.name in defaults else v
        for v in base.variables
    )
    return Composition(
        base=base,
        overrides=overrides,
        render_key="+".join([base.sha256, *(v.sha256 for v in overrides)]),
        variables=variables,
        blocks=tuple((name, key, text) for name, (text, key, _) in fills.items()),
        params=params,
        block_sources={name: source for name, (_, _, source) in fills.items()},
        param_sources=param_sources,
        layers=",".join([base_label, *(layer_label(v) for v in overrides)]),
        ignored=tuple(ignored),
    )


def composition(
    snapshot: RegistrySnapshot,
    version: PromptVersion,
    tenant: Tenant | None,
    override: PromptVersion | None = None,
) -> Composition | None:
    """What ``version`` composes to for ``tenant``'s requests in this snapshot; None when
    nothing is composed (no blocks, no override): the version renders as it is.
    ``override``: a rollout's candidate of the tenant's (or its tier's) override, in place
    of that layer's prod version."""
    layered = snapshot.overrides.get(version.key)
    tier_v = tenant_v = None
    if layered is not None and tenant is not None:
        tier_v = layered.tiers.get(tenant.tier)
        tenant_v = layered.tenants.get(tenant.id)
    if override is not None and override.key.layer is not None:
        if override.key.layer.kind == "tier":
            tier_v = override
        else:
            tenant_v = override
    if tier_v is None and tenant_v is None and not version.blocks:
        return None
    memo = (
        version.key,
        version.version,
        None if tier_v is None else tier_v.key,
        None if tier_v is None else tier_v.version,
        None if tenant_v is None else tenant_v.key,
        None if tenant_v is None else tenant_v.version,
    )
    found: Composition | None = snapshot.compositions.get(memo)
    if found is None:
        found = snapshot.compositions[memo] = compose(version, tier_v, tenant_v)
    return found


def carry_over(old: RegistrySnapshot, new: RegistrySnapshot) -> int:
    """Keep ``old``'s compositions that ``new`` still serves: versions never change, so a
    composition of the same base and override versions is the same, and an admin write
    (one new snapshot) does not make every tenant's first request compose again (half a
    millisecond each, a template parse per fill). Returns how many were kept."""
    kept = 0
    for memo, composed in old.compositions.items():
        base_key, base_number, tier_key, tier_number, tenant_key, tenant_number = memo
        if not _serves(new, base_key, base_number):
            continue
        if tier_key is not None and new.prod.get(tier_key) != tier_number:
            continue
        if tenant_key is not None and new.prod.get(tenant_key) != tenant_number:
            continue
        # Numbers are immutable within a registry; a restore of an older copy can reuse one
        # for other content, so the content must be the same too.
        if any(_content(new, v) != v.sha256 for v in (composed.base, *composed.overrides)):
            continue
        new.compositions.setdefault(memo, composed)
        kept += 1
    return kept


def _content(snapshot: RegistrySnapshot, version: PromptVersion) -> str | None:
    found = snapshot.versions.get(version.key, {}).get(version.version)
    return None if found is None else found.sha256


def _serves(snapshot: RegistrySnapshot, key: Any, number: int) -> bool:
    """``number`` is the prod version of ``key`` or its rollout's candidate."""
    if snapshot.prod.get(key) == number:
        return True
    rollout = snapshot.rollouts.get(key)
    return rollout is not None and rollout.candidate == number


def _fill_misfit(name: str, text: str, limits: dict[str, int], names: frozenset[str]) -> str | None:
    """Why a fill does not fit the base (``{}`` stands for the base's label), or None."""
    if name not in limits:
        return "{} does not declare it"
    if len(text) > limits[name]:
        return f"{len(text)} characters, over the {limits[name]} {{}} allows"
    read = names_read(text)
    if read is None:
        return "it does not parse"
    if unknown := sorted(read - names):
        return f"it reads {', '.join(map(repr, unknown))}, which {{}} does not declare"
    return None


def _text_key(text: str) -> str:
    return "fill:" + hashlib.sha256(text.encode()).hexdigest()


def _never(value: Any) -> bool:
    return False
