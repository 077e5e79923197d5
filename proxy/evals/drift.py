"""Drift: does the candidate answer a suite differently from the baseline by more than the
baseline differs from itself?

The shadow comparison's measures and test (``shadow/compare.py``), on an eval run's samples
instead of live pairs: each candidate sample of a case is paired with the baseline sample
of the same index (candidate pairs), and each baseline sample with the next one of the same
case (noise pairs: the baseline against itself, as a shadow rollout's stable re-runs). A
measure drifts when candidate pairs diverge more than noise pairs by a one-sided
Mann-Whitney U test at ``alpha`` and by more than ``margin``. Refusals, which the shadow
measures do not count, are compared as rates by a one-sided Fisher exact test.

So a prompt edit that changes nothing a model would answer differently passes, and one
that makes answers longer, refuse more, break their JSON or call other tools does not,
however its functional assertions fare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.evals.report import BASELINE, CANDIDATE, CaseResult, SampleResult
from proxy.evals.runner import MAX_TEXT_CHARS
from proxy.evals.suite import Case
from proxy.shadow.compare import (
    Divergence,
    DivergenceCounts,
    divergence,
    expects_json,
    shadow_verdict,
)
from proxy.shadow.models import ArmResult, ToolCall
from proxy.stats import fisher_less


@dataclass(frozen=True, slots=True)
class DriftPolicy:
    alpha: float = 0.01
    margin: float = 0.05
    #: Pairs each side needs for a measure's verdict; fewer: inconclusive.
    min_pairs: int = 10


def _arm(sample: SampleResult, version: int) -> ArmResult:
    return ArmResult(
        version=version,
        status=sample.status,
        text=sample.text,
        tool_calls=[ToolCall(name, arguments) for name, arguments in sample.tool_calls],
        finish_reason=sample.finish_reason,
        truncated=len(sample.text) >= MAX_TEXT_CHARS,
    )


def _answered(samples: Sequence[SampleResult]) -> list[SampleResult]:
    return [s for s in samples if s.error is None]


def pairs(
    cases: Sequence[CaseResult], suite_cases: Sequence[Case]
) -> tuple[list[Divergence], list[Divergence]]:
    """(noise pairs, candidate pairs) of a run's answered samples."""
    noise: list[Divergence] = []
    candidate: list[Divergence] = []
    json_of = {case.name: expects_json(case.params) for case in suite_cases}
    for case in cases:
        base = _answered(case.sides.get(BASELINE, ()))
        cand = _answered(case.sides.get(CANDIDATE, ()))
        expect_json = json_of.get(case.name, False)
        for i, b in enumerate(base):
            if i < len(cand):
                candidate.append(divergence(_arm(b, 0), _arm(cand[i], 0), expect_json))
            # Each sample with the next, the last with the first: distinct pairs from 3
            # samples on; of 2 samples the one pair (the measures are symmetric).
            if len(base) > 2 or (len(base) == 2 and i == 0):
                following = base[(i + 1) % len(base)]
                noise.append(divergence(_arm(b, 0), _arm(following, 0), expect_json))
    return noise, candidate


def drift(
    cases: Sequence[CaseResult], suite_cases: Sequence[Case], policy: DriftPolicy
) -> dict[str, Any]:
    noise, candidate = pairs(cases, suite_cases)
    verdict = shadow_verdict(
        DivergenceCounts.of(noise),
        DivergenceCounts.of(candidate),
        alpha=policy.alpha,
        margin=policy.margin,
        min_pairs=policy.min_pairs,
    )
    measures = [m.to_dict() for m in verdict.measures]
    measures.append(_refusals(cases, policy))
    results = [m["result"] for m in measures]
    result = verdict.result
    if result != "inconclusive" and "fail" in results:
        result = "fail"
    return {
        "result": result,
        "noise_pairs": len(noise),
        "candidate_pairs": len(candidate),
        "policy": {"alpha": policy.alpha, "margin": policy.margin, "min_pairs": policy.min_pairs},
        "measures": measures,
    }


def _refusals(cases: Sequence[CaseResult], policy: DriftPolicy) -> dict[str, Any]:
    base = [s for c in cases for s in _answered(c.sides.get(BASELINE, ()))]
    cand = [s for c in cases for s in _answered(c.sides.get(CANDIDATE, ()))]
    k_b, k_c = sum(s.refused for s in base), sum(s.refused for s in cand)
    base_rate = k_b / len(base) if base else None
    cand_rate = k_c / len(cand) if cand else None
    # Exact: refusals are rare and suites small, where a z-test calls noise significant.
    p_value = fisher_less(k_b, len(base), k_c, len(cand)) if base and cand else None
    if len(base) < policy.min_pairs or len(cand) < policy.min_pairs:
        result = "inconclusive"
    elif (
        p_value is not None
        and p_value < policy.alpha
        and base_rate is not None
        and cand_rate is not None
        and cand_rate - base_rate > policy.margin
    ):
        result = "fail"
    else:
        result = "pass"
    return {
        "measure": "refusal_rate",
        "result": result,
        "noise_mean": base_rate,
        "candidate_mean": cand_rate,
        "noise_n": len(base),
        "candidate_n": len(cand),
        "p_value": p_value,
        "effect": None,
    }
