"""Replay: captured production calls sent again to a candidate, compared as a shadow
rollout compares, without touching live traffic.

Each captured call (``proxy/capture``) of the baseline version is sent twice through this
process's own request path, pinned, as eval calls: once to the candidate and once to the
baseline again. The captured answer is the reference: candidate pairs are (captured answer,
candidate's answer), noise pairs are (captured answer, baseline's new answer), so the
baseline answering differently from itself (temperature, a provider's drift since) is the
yardstick, as stable's re-runs are in a shadow rollout. Per measure, the shadow
comparison's test and margin (``shadow/compare.py``) give the verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.capture.records import Capture
from proxy.evals.report import BASELINE, CANDIDATE, CaseResult, SampleResult
from proxy.evals.runner import MAX_TEXT_CHARS
from proxy.evals.suite import Case, Suite
from proxy.shadow.compare import (
    Divergence,
    DivergenceCounts,
    divergence,
    expects_json,
    shadow_verdict,
)
from proxy.shadow.models import ArmResult, ToolCall

#: Body fields a replay does not send again as parameters: the prompt's own, and what
#: would change the answer's shape (one whole answer is compared).
_NOT_PARAMS = frozenset({"messages", "prompt_variables", "model", "stream", "stream_options", "n"})


@dataclass(frozen=True, slots=True)
class ReplaySet:
    """The captures a replay sends again, as a suite, and those it leaves out (by why)."""

    suite: Suite
    captures: Mapping[str, Capture]
    models: Mapping[str, str]
    skipped: Mapping[str, int]


def replay_set(
    captures: Sequence[Capture],
    slug: str,
    variant: str | None,
    baseline: int,
    tenants: set[str],
    limit: int,
) -> ReplaySet:
    """The newest ``limit`` captured calls of ``baseline`` (``captures`` oldest first) as
    cases, one sample each; calls of another version, of a tenant the registry no longer
    knows, or without messages are skipped."""
    cases: list[Case] = []
    kept: dict[str, Capture] = {}
    models: dict[str, str] = {}
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for capture in captures:
        request = capture.request
        messages = request.get("messages")
        model = request.get("model") or capture.model
        if capture.version != baseline:
            skip(f"v{capture.version}")
        elif capture.tenant is not None and capture.tenant not in tenants:
            skip("tenant_gone")
        elif not isinstance(messages, list) or not messages or not isinstance(model, str):
            skip("no_messages")
        else:
            variables = request.get("prompt_variables")
            cases.append(
                Case(
                    name=capture.id,
                    variables=variables if isinstance(variables, dict) else {},
                    messages=tuple(messages),
                    assertions=(),
                    tenant=capture.tenant,
                    variant=None,
                    samples=1,
                    params={k: v for k, v in request.items() if k not in _NOT_PARAMS},
                )
            )
            kept[capture.id] = capture
            models[capture.id] = model
    if len(cases) > limit:  # the newest: a version promoted lately has its calls at the end
        skipped["over_limit"] = len(cases) - limit
        for case in cases[:-limit]:
            del kept[case.name]
            del models[case.name]
        cases = cases[-limit:]
    digest = hashlib.sha256("\n".join(kept).encode()).hexdigest()
    suite = Suite(
        slug=slug,
        cases=tuple(cases),
        samples=1,
        model=None,
        tenant=None,
        variant=variant,
        sha256=digest,
        source=f"replay of {len(cases)} captured calls",
    )
    return ReplaySet(suite, kept, models, skipped)


def _captured(capture: Capture) -> ArmResult:
    answer = capture.answer
    calls = answer.get("tool_calls")
    return ArmResult(
        version=capture.version,
        status=int(answer.get("status") or 200),
        text=str(answer.get("text") or "")[:MAX_TEXT_CHARS],
        tool_calls=[
            ToolCall(str(c.get("name")), str(c.get("arguments")))
            for c in (calls if isinstance(calls, list) else [])
            if isinstance(c, Mapping)
        ],
        finish_reason=answer.get("finish_reason"),
        truncated=bool(answer.get("cut")),
    )


def _rerun(sample: SampleResult) -> ArmResult:
    return ArmResult(
        version=0,
        status=sample.status,
        text=sample.text,
        tool_calls=[ToolCall(name, arguments) for name, arguments in sample.tool_calls],
        finish_reason=sample.finish_reason,
        truncated=len(sample.text) >= MAX_TEXT_CHARS,
    )


def compare(
    cases: Sequence[CaseResult],
    replayed: ReplaySet,
    *,
    alpha: float,
    margin: float,
    min_pairs: int,
) -> dict[str, Any]:
    """The replay's verdict: per measure, candidate pairs against noise pairs."""
    noise: list[Divergence] = []
    candidate: list[Divergence] = []
    failed = {CANDIDATE: 0, BASELINE: 0}
    suite_cases = {case.name: case for case in replayed.suite.cases}
    for case in cases:
        capture = replayed.captures[case.name]
        original = _captured(capture)
        expect_json = expects_json(suite_cases[case.name].params)
        for side, into in ((CANDIDATE, candidate), (BASELINE, noise)):
            for sample in case.sides.get(side, ()):
                if sample.error is not None:
                    failed[side] += 1
                    continue
                into.append(divergence(original, _rerun(sample), expect_json))
    verdict = shadow_verdict(
        DivergenceCounts.of(noise),
        DivergenceCounts.of(candidate),
        alpha=alpha,
        margin=margin,
        min_pairs=min_pairs,
    )
    return {
        **verdict.to_dict(),
        "captures": len(replayed.captures),
        "skipped": dict(replayed.skipped),
        "noise_pairs": len(noise),
        "candidate_pairs": len(candidate),
        "failed_calls": failed,
        "policy": {"alpha": alpha, "margin": margin, "min_pairs": min_pairs},
    }
