"""The platform's own slugs (``_guardrails``): what a version of one must be, checked the
same way at push and at import, so no path stores a version the request path cannot serve.

The guardrails are rendered into every swapped-in prompt without the caller's values, so
a version must render with none: every variable has a default, and a trial render with
those defaults succeeds (``{{ 1/0 }}`` would otherwise fail every prompt request of every
tenant on every replica).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from proxy.prompt_key import GUARDRAILS_SLUG, RESERVED_PREFIX, RESERVED_SLUGS, PromptKey
from proxy.registry.models import RegistrySnapshot, VariableSpec
from proxy.registry.templates import PromptRenderer, RenderError, TemplateProblem


@dataclass(frozen=True, slots=True)
class ReservedProblem:
    message: str
    #: The field at fault, relative to the version (``slug``, ``variables[0].default``...)
    field: str


def reserved_problem(
    key: PromptKey, template: str, variables: tuple[VariableSpec, ...]
) -> ReservedProblem | None:
    slug = key.slug
    if not slug.startswith(RESERVED_PREFIX):
        return None
    if slug not in RESERVED_SLUGS:
        return ReservedProblem(
            f"Slugs starting with {RESERVED_PREFIX!r} are reserved for the platform "
            f"({', '.join(sorted(RESERVED_SLUGS))}); {slug!r} is not one of them.",
            "slug",
        )
    if not key.is_plain:
        return ReservedProblem(
            f"{GUARDRAILS_SLUG} is the platform's layer: it has no tier, tenant or variant "
            "versions.",
            "slug",
        )
    for index, variable in enumerate(variables):
        if not variable.has_default:
            return ReservedProblem(
                f"{GUARDRAILS_SLUG} is rendered without the caller's values: variable "
                f"{variable.name!r} needs a default.",
                f"variables[{index}].default",
            )
    try:
        PromptRenderer(max_cached=1).render("trial", template, variables, {})
    except (RenderError, TemplateProblem) as exc:
        return ReservedProblem(
            f"{GUARDRAILS_SLUG} must render with its defaults alone, and this one fails: {exc}",
            "template",
        )
    return None


def startup_notices(snapshot: RegistrySnapshot) -> list[tuple[int, str]]:
    """What an operator must hear at start about the platform's slugs, with a logging
    level. A registry written before they were reserved may hold a `_guardrails` (now
    composed into every prompt) or another `_`-slug (now refused to callers)."""
    notices: list[tuple[int, str]] = []
    if (rules := snapshot.guardrails) is not None:
        notices.append(
            (
                logging.INFO,
                f"{GUARDRAILS_SLUG} v{rules.version} is composed first into every swapped-in "
                "prompt (docs/registry.md#guardrails)",
            )
        )
    others = sorted(
        key.text
        for key in snapshot.versions
        if key.slug.startswith(RESERVED_PREFIX) and key.slug not in RESERVED_SLUGS
    )
    if others:
        notices.append(
            (
                logging.WARNING,
                f"the registry holds prompts with reserved slugs ({', '.join(others)}): "
                "requests naming them are refused (reserved_slug); push them under another "
                "slug",
            )
        )
    return notices
