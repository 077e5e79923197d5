"""Gates before prod, as the registry sees them: what a version must have passed before it
is promoted or its rollout starts (``GateCheck``: the evals layer answers, from its stored
runs), the 409 that names each missing or failing gate, and the audited override.

Rollback and abort are never gated: going back to what served before must always work.
A rollout's promote is not re-gated: its candidate passed its gates when the rollout
started, and the canary analysis since (docs/gates.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import Conflict, InvalidRequest
from proxy.prompt_key import PromptKey

GATES_CODE = "gates_not_passed"


@dataclass(frozen=True, slots=True)
class GateProblem:
    """Why one gate does not pass: ``gate`` is its name (``eval``, ``judge``)."""

    gate: str
    message: str

    def describe(self) -> str:
        return f"{self.gate}: {self.message}"


class GateCheck(Protocol):
    async def problems(self, key: PromptKey, version: int, prod: int | None) -> list[GateProblem]:
        """Every gate ``version`` of ``key`` is required to pass and does not, given the
        version that is prod now (None: none yet); empty when it may serve. Never raises
        for a store it cannot read: that is a problem of each gate it stops deciding, so
        an operator can still override it."""
        ...


def check_override_reason(override: bool, reason: str) -> None:
    """An override of the gates needs a reason: 400 otherwise, before anything is checked."""
    if override and not reason.strip():
        raise InvalidRequest(
            "An override of the gates needs a reason: it is kept in the audit log.",
            param="reason",
            code="reason_required",
        )


def gated_reason(
    key: PromptKey,
    version: int,
    problems: Sequence[GateProblem],
    override: bool,
    reason: str,
    what: str,
) -> str:
    """The reason to audit for ``version`` passing its gates: unchanged when nothing is
    missing; with an override, the reason and every problem it overrode; else a 409 naming
    each (``what``: "promote", "start the rollout")."""
    if not problems:
        return reason
    listed = "; ".join(problem.describe() for problem in problems)
    if override:
        return f"{reason} [gates overridden: {listed}]"
    raise Conflict(
        f"{key} v{version} has not passed its gates: {listed}. Satisfy them, or {what} "
        "with override_gates and a reason (kept in the audit log).",
        param="version",
        code=GATES_CODE,
    )
