"""What names one line of prompt versions: a slug, and later a layer and a model variant.

Today every prompt is the base layer of its slug with the default variant. Tenants and tiers
(their overrides are layers of a slug) and per-model variants each get their own version
line, status, rollout, analysis window and pairs; a ``PromptKey`` names that line everywhere
(snapshot, stores, leases, windows, pairs, API), so adding them changes what a key holds,
not every signature that carries one.

The text form is what stores and logs hold: ``[KIND=NAME/]SLUG[@VARIANT]``, where KIND is
``tier`` or ``tenant``. Slugs, names and variants use the slug alphabet, which has none of
``=``, ``/`` and ``@``, so the text parses back unambiguously. The base key of the default
variant is the bare slug: every key written before keys existed reads back as itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

_NAME = r"[A-Za-z0-9._-]{1,64}"
NAME_PATTERN = re.compile(rf"^{_NAME}$")
_TEXT = re.compile(
    rf"^(?:(?P<kind>tier|tenant)=(?P<name>{_NAME})/)?(?P<slug>{_NAME})(?:@(?P<variant>{_NAME}))?$"
)

LayerKind = Literal["tier", "tenant"]

#: The platform's guardrails: a prompt like any other in the registry (versions, audit,
#: promote, rollback), composed first into every swapped-in prompt, never named by a request.
GUARDRAILS_SLUG = "_guardrails"
#: Slugs starting with this are the platform's own; a push may use only the ones it knows.
RESERVED_PREFIX = "_"
#: Not a prompt: the audit of the tenant records is filed under ``tenant=ID/_tenants``.
TENANTS_SLUG = "_tenants"
RESERVED_SLUGS = frozenset({GUARDRAILS_SLUG})


class InvalidPromptKey(ValueError):
    """A slug, layer name or variant outside the alphabet, or a malformed key text."""


@dataclass(frozen=True, slots=True)
class Layer:
    """An override layer of a slug: a tier's (``tier=enterprise``) or a tenant's."""

    kind: LayerKind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("tier", "tenant"):
            raise InvalidPromptKey(f"layer kind must be tier or tenant, not {self.kind!r}")
        if not NAME_PATTERN.match(self.name):
            raise InvalidPromptKey(f"{self.kind} name {self.name!r} must match {_NAME}")

    def __str__(self) -> str:
        return f"{self.kind}={self.name}"


@dataclass(frozen=True, slots=True)
class PromptKey:
    slug: str
    layer: Layer | None = None
    variant: str | None = None
    # A request looks its key up in several tables (snapshot, rollouts, metric labels,
    # windows): the generated __hash__ built a tuple and hashed it each time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.slug):
            raise InvalidPromptKey(f"slug {self.slug!r} must match {_NAME}")
        if self.variant is not None and not NAME_PATTERN.match(self.variant):
            raise InvalidPromptKey(f"variant {self.variant!r} must match {_NAME}")
        object.__setattr__(self, "_hash", hash((self.slug, self.layer, self.variant)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not PromptKey:
            return NotImplemented
        return (
            self._hash == other._hash
            and self.slug == other.slug
            and self.variant == other.variant
            and self.layer == other.layer
        )

    @property
    def is_plain(self) -> bool:
        """The base layer of the default variant: what a bare slug names."""
        return self.layer is None and self.variant is None

    @property
    def text(self) -> str:
        layer = "" if self.layer is None else f"{self.layer}/"
        variant = "" if self.variant is None else f"@{self.variant}"
        return f"{layer}{self.slug}{variant}"

    def __str__(self) -> str:
        return self.text

    def __lt__(self, other: PromptKey) -> bool:
        return self._order() < other._order()

    def _order(self) -> tuple[str, str, str, str]:
        # Grouped by slug, base before its overrides, default variant first.
        layer = ("", "") if self.layer is None else (self.layer.kind, self.layer.name)
        return (self.slug, *layer, self.variant or "")

    @classmethod
    def parse(cls, text: str) -> PromptKey:
        match = _TEXT.match(text)
        if match is None:
            raise InvalidPromptKey(
                f"{text!r} is not a prompt key ([tier=|tenant=NAME/]SLUG[@VARIANT])"
            )
        kind, name = match["kind"], match["name"]
        layer = None if kind is None else Layer("tier" if kind == "tier" else "tenant", name)
        return cls(match["slug"], layer, match["variant"])
