"""``SafetyPolicy`` (rules with names) and ``check_version``: the findings of one version's
texts against a policy.

A version is given as ``TextPart``s, each a field's text: the template, each block's
default (a base) or fill (an override), the string values of its params and variable
defaults, its changelog. Every part is searched for keys; the parts rendered into the
prompt (template, blocks, fills, variable defaults) also for denied phrases; the length
limits and the required blocks and phrases are about a base's template and blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.safety.phrases import DEFAULT_DENIED, DeniedRule
from proxy.safety.secrets import SECRET_RULE, find_secrets

DENIED_FAMILY = "denied_phrase"
REQUIRED_BLOCK_FAMILY = "required_block"
REQUIRED_PHRASE_FAMILY = "required_phrase"
MAX_TEMPLATE_RULE = "max_template_chars"
MAX_BLOCK_RULE = "max_block_chars"
#: What an exemption may name: one of these (every rule of the family), or a family and a
#: name (``denied_phrase:reveal_system_prompt``).
RULE_FAMILIES = (
    SECRET_RULE,
    DENIED_FAMILY,
    REQUIRED_BLOCK_FAMILY,
    REQUIRED_PHRASE_FAMILY,
    MAX_TEMPLATE_RULE,
    MAX_BLOCK_RULE,
)
DEFAULT_MAX_TEMPLATE_CHARS = 100_000
DEFAULT_MAX_BLOCK_CHARS = 20_000
# A finding quotes at most this much of what matched.
_QUOTE_CHARS = 80


@dataclass(frozen=True, slots=True)
class RequiredPhrase:
    """Text every base template must contain (case and runs of spaces aside)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class TextPart:
    #: The field it is, as a refusal names it: ``template``, ``blocks.tone.default``,
    #: ``fills.tone``, ``params.stop[0]``, ``variables.tone.default``, ``changelog``.
    field: str
    text: str
    #: Rendered into the prompt (denied phrases apply), not only kept with it (keys only).
    prompt: bool = True
    #: The block whose default or fill this is (``max_block_chars`` applies).
    block: str | None = None


@dataclass(frozen=True, slots=True)
class SafetyFinding:
    #: ``secret_in_template``, ``denied_phrase:NAME``, ``required_block:NAME``,
    #: ``required_phrase:NAME``, ``max_template_chars``, ``max_block_chars``.
    rule: str
    message: str
    field: str
    #: 1-based line within the field's text; None where a line means nothing (a length).
    line: int | None = None

    def describe(self) -> str:
        """``rule (field line N): message``, as a refusal lists it."""
        where = self.field if self.line is None else f"{self.field} line {self.line}"
        return f"{self.rule} ({where}): {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "field": self.field, "line": self.line}


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    enabled: bool = True
    denied: tuple[DeniedRule, ...] = DEFAULT_DENIED
    #: Blocks every base version must declare.
    required_blocks: tuple[str, ...] = ()
    required_phrases: tuple[RequiredPhrase, ...] = ()
    max_template_chars: int = DEFAULT_MAX_TEMPLATE_CHARS
    max_block_chars: int = DEFAULT_MAX_BLOCK_CHARS
    #: Rule (``RULE_FAMILIES``, or ``family:name``) -> slugs it does not apply to, every
    #: layer and variant of each (a red-team or judge prompt may quote a denied phrase).
    exempt: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def exempts(self, rule: str, slug: str) -> bool:
        family = rule.partition(":")[0]
        return slug in self.exempt.get(rule, ()) or slug in self.exempt.get(family, ())


def check_version(
    policy: SafetyPolicy,
    slug: str,
    parts: Sequence[TextPart],
    *,
    base_blocks: Sequence[str] | None = None,
) -> list[SafetyFinding]:
    """Every finding of ``parts`` (one version of ``slug``) against ``policy``, in the order
    of the parts and of their lines. ``base_blocks``: the blocks a base version declares;
    None for an override, which has no template of its own to require anything of."""
    if not policy.enabled:
        return []
    found: list[SafetyFinding] = []
    for part in parts:
        found.extend(_secrets(part))
        if part.prompt:
            found.extend(_denied(policy.denied, part))
        if part.field == "template" and len(part.text) > policy.max_template_chars:
            message = (
                f"the template is {len(part.text)} characters, above the policy's "
                f"{policy.max_template_chars} (safety.max_template_chars)"
            )
            found.append(SafetyFinding(MAX_TEMPLATE_RULE, message, part.field))
        if part.block is not None and len(part.text) > policy.max_block_chars:
            message = (
                f"block {part.block!r} is {len(part.text)} characters, above the policy's "
                f"{policy.max_block_chars} (safety.max_block_chars)"
            )
            found.append(SafetyFinding(MAX_BLOCK_RULE, message, part.field))
    if base_blocks is not None:
        found.extend(_required(policy, parts, base_blocks))
    return [f for f in found if not policy.exempts(f.rule, slug)]


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[: _QUOTE_CHARS - 3] + "..."


def _secrets(part: TextPart) -> list[SafetyFinding]:
    # The key itself is never quoted: the refusal is logged and shown.
    return [
        SafetyFinding(
            SECRET_RULE,
            f"{hit.what}: keys and tokens never go in a prompt (the provider and every "
            "log would see it); remove it and rotate the key",
            part.field,
            _line(part.text, hit.start),
        )
        for hit in find_secrets(part.text)
    ]


def _denied(rules: Sequence[DeniedRule], part: TextPart) -> list[SafetyFinding]:
    return [
        SafetyFinding(
            rule.rule,
            f"{rule.message}: {_quote(match.group(0))!r}",
            part.field,
            _line(part.text, match.start()),
        )
        for rule in rules
        for match in rule.matches(part.text)
    ]


def _required(
    policy: SafetyPolicy, parts: Sequence[TextPart], blocks: Sequence[str]
) -> list[SafetyFinding]:
    found: list[SafetyFinding] = []
    for name in policy.required_blocks:
        if name not in blocks:
            message = f"every base version must declare block {name!r} (safety.required_blocks)"
            found.append(SafetyFinding(f"{REQUIRED_BLOCK_FAMILY}:{name}", message, "blocks"))
    template = next((p.text for p in parts if p.field == "template"), "")
    flat = _normal(template)
    for phrase in policy.required_phrases:
        if _normal(phrase.text) not in flat:
            message = f"the template must contain {_quote(phrase.text)!r} (safety.required_phrases)"
            found.append(
                SafetyFinding(f"{REQUIRED_PHRASE_FAMILY}:{phrase.name}", message, "template")
            )
    return found


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()
