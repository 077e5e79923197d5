"""A registry the size the tenancy issue names: T tenants x S slugs x V variants, each a
base with blocks, an override per tier and one per tenant, as one export image to import.

The benchmark's prompt ``bench`` is one of the slugs; its base renders to a system prompt
of the plain benchmark prompt's shape and size, and each tenant's fill of its block is as
long as the base's default, so a composed request and a plain swapped-in one send bodies
of the same size.
"""

from __future__ import annotations

import dataclasses

from proxy.prompt_key import Layer, PromptKey
from proxy.registry.backup import RegistryImage
from proxy.registry.models import (
    BlockSpec,
    PromptVersion,
    Status,
    Tenant,
    VariableSpec,
    VersionDraft,
)

TIERS = ("free", "pro", "enterprise")
BENCH_SLUG = "bench"
_VARIABLES = (
    VariableSpec("shop", "string", "an online bookshop", True),
    VariableSpec("sentences", "string", "three", True),
)
_TEMPLATE = "You are a concise assistant for {{ shop }}. {{ block.rules }}"
_RULES = "Answer in at most {{ sentences }} sentences and never invent titles."


def tenant_id(n: int) -> str:
    return f"t{n:03d}"


def _prod(draft: VersionDraft) -> PromptVersion:
    return dataclasses.replace(draft.to_version(1, 1.0), status=Status.PROD)


#: The variants of each slug: the default (None) and one per model family.
VARIANTS: dict[str | None, tuple[str, ...]] = {None: (), "claude": ("claude-*",)}


def fleet_image(tenants: int = 200, slugs: int = 15, variants: int = 2) -> RegistryImage:
    names = [BENCH_SLUG, *(f"feature-{i:02d}" for i in range(1, slugs))]
    versions: dict[PromptKey, dict[int, PromptVersion]] = {}
    for slug in names:
        for variant in list(VARIANTS)[:variants]:
            _slug_versions(versions, slug, variant, tenants)
    records = {tenant_id(n): Tenant(tenant_id(n), TIERS[n % len(TIERS)]) for n in range(tenants)}
    return RegistryImage("bench-fleet", 1, versions, tenants=records)


def _slug_versions(
    versions: dict[PromptKey, dict[int, PromptVersion]],
    slug: str,
    variant: str | None,
    tenants: int,
) -> None:
    """A base of ``slug``'s ``variant`` with an override per tier and per tenant."""
    base = VersionDraft(
        key=PromptKey(slug, None, variant),
        template=_TEMPLATE,
        variables=_VARIABLES,
        blocks=(BlockSpec("rules", _RULES, 400),),
        params={"temperature": 0.3},
        param_bounds={"temperature": (0.0, 1.0)},
        match=VARIANTS[variant],
    )
    versions[base.key] = {1: _prod(base)}
    for tier in TIERS:
        key = PromptKey(slug, Layer("tier", tier), variant)
        fill = f"Answer in at most {{{{ sentences }}}} sentences; {tier} tier, no titles."
        versions[key] = {1: _prod(VersionDraft(key=key, template="", fills={"rules": fill}))}
    for n in range(tenants):
        key = PromptKey(slug, Layer("tenant", tenant_id(n)), variant)
        fill = f"Reply in at most {{{{ sentences }}}} sentences for {tenant_id(n)}; no titles."
        override = VersionDraft(
            key=key,
            template="",
            fills={"rules": fill},
            defaults={"shop": f"shop {tenant_id(n)}"},
            params={"temperature": 0.2},
        )
        versions[key] = {1: _prod(override)}
