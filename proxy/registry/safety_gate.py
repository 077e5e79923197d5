"""The safety policy (``proxy.safety``) applied to registry versions: a version's texts as
``TextPart``s, and the refusal a finding makes (400 at push and import, 409 when a version
stored before the policy tightened would start serving).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from proxy.errors import Conflict, InvalidRequest
from proxy.registry.models import PromptVersion, VersionDraft
from proxy.safety import SafetyFinding, SafetyPolicy, TextPart, check_version

SAFETY_CODE = "safety_violation"


def version_parts(version: VersionDraft | PromptVersion) -> list[TextPart]:
    """Every text of ``version`` the policy reads, by field: what is rendered into the
    prompt (template, block defaults or fills, variable defaults) and what is only kept
    with it (params, changelog; searched for keys only)."""
    parts = [TextPart("template", version.template)] if version.template else []
    for block in version.blocks:
        parts.append(TextPart(f"blocks.{block.name}.default", block.default, block=block.name))
    for name, fill in version.fills.items():
        parts.append(TextPart(f"fills.{name}", fill, block=name))
    for variable in version.variables:
        if variable.has_default:
            parts.extend(_strings(variable.default, f"variables.{variable.name}.default", True))
    for name, value in version.defaults.items():
        parts.extend(_strings(value, f"defaults.{name}", True))
    parts.extend(_strings(dict(version.params), "params", False))
    if version.changelog:
        parts.append(TextPart("changelog", version.changelog, prompt=False))
    return parts


def _strings(value: Any, where: str, prompt: bool) -> Iterator[TextPart]:
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:  # a loop: a params object's depth is the pusher's choice
        item, at = stack.pop()
        if isinstance(item, str):
            yield TextPart(at, item, prompt=prompt)
        elif isinstance(item, Mapping):
            stack.extend(reversed([(v, f"{at}.{k}") for k, v in item.items()]))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(v, f"{at}[{i}]") for i, v in enumerate(item)]))


def version_findings(
    policy: SafetyPolicy, version: VersionDraft | PromptVersion
) -> list[SafetyFinding]:
    base = None if version.key.layer is not None else [b.name for b in version.blocks]
    return check_version(policy, version.key.slug, version_parts(version), base_blocks=base)


def _listed(findings: Sequence[SafetyFinding]) -> str:
    return "; ".join(f.describe() for f in findings)


def refuse_push(policy: SafetyPolicy, draft: VersionDraft) -> None:
    """A 400 naming every finding of a version being pushed."""
    findings = version_findings(policy, draft)
    if findings:
        raise InvalidRequest(
            f"Version rejected by the safety policy: {_listed(findings)}.",
            param=findings[0].field,
            code=SAFETY_CODE,
        )


def refuse_serving(policy: SafetyPolicy, version: PromptVersion, what: str) -> None:
    """A 409 for a stored version that fails the current policy and was about to serve
    (``what``: "promoted", "the candidate of a rollout"): pushed before the policy
    tightened, or while it was off."""
    findings = version_findings(policy, version)
    if findings:
        raise Conflict(
            f"{version.key} v{version.version} cannot be {what}: it fails the current "
            f"safety policy: {_listed(findings)}. Push a version that passes (rollback "
            "is never checked).",
            param="version",
            code=SAFETY_CODE,
        )


def refuse_import(policy: SafetyPolicy, serving: Iterable[PromptVersion]) -> None:
    """A 400 naming every finding of the versions an import would make serve (prod, and
    running rollouts' candidates). The others are history: kept as they are, and checked
    if they are ever promoted."""
    problems = [
        f"{version.key} v{version.version}: {finding.describe()}"
        for version in serving
        for finding in version_findings(policy, version)
    ]
    if problems:
        raise InvalidRequest(
            "Import rejected by the safety policy, for versions it would make serve: "
            + "; ".join(problems)
            + ". Fix them in the file (a new version in the registry after import), or "
            "exempt their slugs (safety.exempt).",
            param="versions",
            code=SAFETY_CODE,
        )
