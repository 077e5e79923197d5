"""Composition of a base with its overrides: what fits is merged, what does not is left out
and said, and a snapshot builds each composition once."""

from __future__ import annotations

from typing import Any

from proxy.prompt_key import Layer, PromptKey
from proxy.registry.composition import carry_over, compose, composition
from proxy.registry.models import (
    BlockSpec,
    PromptVersion,
    RegistrySnapshot,
    Tenant,
    VariableSpec,
    VersionDraft,
)
from proxy.registry.templates import PromptRenderer

SLUG = PromptKey("support")


def version(key: PromptKey, number: int, **fields: Any) -> PromptVersion:
    return VersionDraft(key=key, template=fields.pop("template", ""), **fields).to_version(
        number, 0.0
    )


_BASE_FIELDS: dict[str, Any] = {
    "variables": (VariableSpec("name", "string", "you", True),),
    "blocks": (BlockSpec("tone", "Be kind."),),
    "params": {"temperature": 0.5},
    "param_bounds": {"temperature": (0.0, 1.0)},
}
BASE = version(SLUG, 1, template="Hi {{ name }}. {{ block.tone }}", **_BASE_FIELDS)
PRO = version(
    PromptKey("support", Layer("tier", "pro")),
    1,
    fills={"tone": "Be {{ name }}-focused."},
    params={"temperature": 0.1},
)
ACME = version(
    PromptKey("support", Layer("tenant", "acme")),
    3,
    fills={"tone": "Rhyme.", "missing": "x"},
    defaults={"name": "Acme", "ghost": 1},
    params={"temperature": 4},
)


def _render(base: PromptVersion, *overrides: PromptVersion | None) -> str:
    composed = compose(base, *overrides)
    return PromptRenderer().render(
        composed.render_key,
        base.template,
        composed.variables,
        {},
        composed.blocks,
        template_key=base.sha256,
    )


def test_the_tenants_fill_wins_over_its_tiers_and_the_tiers_over_the_bases() -> None:
    assert _render(BASE) == "Hi you. Be kind."
    assert _render(BASE, PRO) == "Hi you. Be you-focused."
    assert _render(BASE, PRO, ACME) == "Hi Acme. Rhyme."


def test_what_does_not_fit_the_base_is_left_out_and_said() -> None:
    composed = compose(BASE, PRO, ACME)
    assert composed.params == {"temperature": 0.1}
    assert composed.param_sources == {"temperature": "tier:pro@1"}
    assert composed.layers == "base@1,tier:pro@1,tenant:acme@3"
    assert [str(misfit) for misfit in composed.ignored] == [
        "tenant:acme@3: default 'ghost': base@1 has no such variable",
        "tenant:acme@3: fill of block 'missing': base@1 does not declare it",
        "tenant:acme@3: parameter 'temperature': 4 is outside base@1's bounds [0, 1]",
    ]


def test_a_snapshot_composes_once_per_tenant_layer_and_only_where_there_is_something() -> None:
    plain = version(PromptKey("plain"), 1, template="Plain.")
    snapshot = RegistrySnapshot(
        revision=1,
        versions={
            SLUG: {1: BASE},
            PRO.key: {1: PRO},
            ACME.key: {3: ACME},
            plain.key: {1: plain},
        },
        prod={SLUG: 1, PRO.key: 1, ACME.key: 3, plain.key: 1},
        tenants={"acme": Tenant("acme", "pro"), "bolt": Tenant("bolt", "pro")},
    )
    acme, bolt = snapshot.tenants["acme"], snapshot.tenants["bolt"]
    assert composition(snapshot, plain, acme) is None
    first = composition(snapshot, BASE, acme)
    assert first is not None
    assert first is composition(snapshot, BASE, acme)
    tier_only = composition(snapshot, BASE, bolt)
    assert tier_only is not None
    assert tier_only.layers == "base@1,tier:pro@1"
    unknown = composition(snapshot, BASE, None)
    assert unknown is not None
    assert unknown.layers == "base@1"
    assert len(snapshot.compositions) == 3


def test_a_new_snapshot_keeps_the_compositions_it_still_serves() -> None:
    acme = Tenant("acme", "pro")
    acme_v4 = version(ACME.key, 4, fills={"tone": "Sing."})

    def snapshot(tenant_version: PromptVersion) -> RegistrySnapshot:
        number = tenant_version.version
        return RegistrySnapshot(
            revision=number,
            versions={SLUG: {1: BASE}, PRO.key: {1: PRO}, ACME.key: {number: tenant_version}},
            prod={SLUG: 1, PRO.key: 1, ACME.key: number},
            tenants={"acme": acme, "bolt": Tenant("bolt", "pro")},
        )

    old = snapshot(ACME)
    for_acme = composition(old, BASE, acme)
    for_bolt = composition(old, BASE, old.tenants["bolt"])
    new = snapshot(acme_v4)
    assert carry_over(old, new) == 1  # bolt's (tier only); acme's override changed
    assert composition(new, BASE, new.tenants["bolt"]) is for_bolt
    changed = composition(new, BASE, acme)
    assert changed is not for_acme
    assert changed is not None
    assert changed.layers == "base@1,tier:pro@1,tenant:acme@4"


def test_a_version_number_reused_for_other_content_is_composed_again() -> None:
    """A restore of an older copy of the registry can give a number another content; the
    composition kept must be of the content served."""
    acme = Tenant("acme", "pro")

    def snapshot(base: PromptVersion) -> RegistrySnapshot:
        return RegistrySnapshot(
            revision=1,
            versions={SLUG: {1: base}, ACME.key: {3: ACME}},
            prod={SLUG: 1, ACME.key: 3},
            tenants={"acme": acme},
        )

    old = snapshot(BASE)
    kept = composition(old, BASE, acme)
    other = version(SLUG, 1, template="Bye {{ name }}. {{ block.tone }}", **_BASE_FIELDS)
    new = snapshot(other)
    assert carry_over(old, new) == 0
    served = composition(new, other, acme)
    assert served is not kept
    assert served is not None
    assert served.base.sha256 == other.sha256
