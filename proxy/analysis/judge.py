"""One verdict: the candidate arm against stable over the same window. Pure.

Every check compares the two arms and fails only when the difference is both beyond the
policy's limit *and* statistically supported at the policy's ``alpha`` (a one-sided test in
the direction that hurts). The limit keeps a trivial but significant shift (thousands of
samples) from aborting a rollout; the test keeps a large but lucky difference (a handful
of samples) from doing so. That is Kayenta's approach, reduced to the checks an LLM prompt
needs.

Verdict: ``inconclusive`` while either arm has fewer than ``min_samples`` requests in the
window or any check lacks data (it holds: never a pass on too little evidence); else
``fail`` if any check fails; else ``pass``. A check whose population is absent on both arms
(no streams, so no time to first token) is ``skipped``.

Per tier (``judge_tiers``): each tier with both arms in the window is judged on its own
with the same checks (but feedback, judge scores and shadow divergence, which are not kept
per tier), and
a tier's ``fail`` fails the verdict even when the whole passes: a regression confined to
the enterprise tier is caught while the average improves. A tier's ``inconclusive`` (too
few of its requests) neither fails nor holds the whole, or a small tier would stall every
rollout. Judging 1 + k populations gives k + 1 chances of a false alarm, so ``alpha`` is
split evenly over the whole and the k tiers that have ``min_samples`` per arm (only those
can fail), before each judgement splits its share over its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from proxy.analysis.window import ArmStats, WindowArm, split_tier_arm, tier_arm
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.shadow.compare import MEASURES, DivergenceCounts, shadow_verdict
from proxy.stats import (
    mann_whitney_greater,
    mean_less,
    two_proportion_greater,
)

#: The outcome the online judge's scores are kept under in the window (as feedback is:
#: per-arm moments, pooled by every backend); ``feedback.names`` may not take it.
JUDGE_SCORE = "judge_score"

Result = Literal["pass", "fail", "inconclusive", "skipped"]
Verdict = Literal["pass", "fail", "inconclusive"]

#: Sub-populations (streams, finished answers, feedback, shadow pairs) are a fraction of the
#: requests: they need fewer samples than ``min_samples``, but never fewer than this.
_MIN_SUBSAMPLE = 10
_MAX_SUBSAMPLE = 50


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    result: Result
    stable: float | None
    candidate: float | None
    limit: float | None
    p_value: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.result,
            "stable": _round(self.stable),
            "candidate": _round(self.candidate),
            "limit": self.limit,
            "p_value": None if self.p_value is None else float(f"{self.p_value:.3g}"),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    checks: tuple[Check, ...]
    samples: dict[str, int]
    #: Each tier's own judgement, by tier name (``judge_tiers``); the verdict above already
    #: counts a failing one.
    tiers: Mapping[str, Judgement] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.result == "fail")

    def summary(self) -> str:
        """One line for an audit entry: the checks that failed, with their numbers, the
        whole's first, then each failing tier's (``tier enterprise: length_finish: ...``)."""
        parts = [f"{c.name}: {c.note}" for c in self.failed]
        parts += [
            f"tier {tier}: {c.name}: {c.note}"
            for tier, judgement in self.tiers.items()
            if judgement.verdict == "fail"
            for c in judgement.failed
        ]
        return "; ".join(parts) or self.verdict


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def _subsample(policy: AnalysisPolicy) -> int:
    return max(_MIN_SUBSAMPLE, min(policy.min_samples, _MAX_SUBSAMPLE))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _proportion_check(
    name: str,
    what: str,
    limit: float | None,
    alpha: float,
    stable: tuple[int, int],
    candidate: tuple[int, int],
    needed: int,
) -> Check | None:
    if limit is None:
        return None
    (k1, n1), (k2, n2) = stable, candidate
    if n1 == 0 and n2 == 0:
        return Check(name, "skipped", None, None, limit, None, f"no {what} data")
    s = k1 / n1 if n1 else None
    c = k2 / n2 if n2 else None
    if n1 < needed or n2 < needed:
        note = f"too few samples ({n1} stable, {n2} candidate; {needed} needed)"
        return Check(name, "inconclusive", s, c, limit, None, note)
    assert s is not None
    assert c is not None
    p = two_proportion_greater(k1, n1, k2, n2)
    failed = c - s > limit and p < alpha
    note = f"{what} {_pct(c)} vs stable {_pct(s)} (limit +{limit * 100:.1f} points)"
    return Check(name, "fail" if failed else "pass", s, c, limit, p, note)


def _latency_check(
    name: str,
    which: str,
    limit: float | None,
    alpha: float,
    stable: ArmStats,
    candidate: ArmStats,
    needed: int,
) -> Check | None:
    if limit is None:
        return None
    s_counts, c_counts = stable.latency_counts(which), candidate.latency_counts(which)
    n1, n2 = sum(s_counts), sum(c_counts)
    if n1 == 0 and n2 == 0:
        return Check(name, "skipped", None, None, limit, None, "no samples on either arm")
    s, c = stable.quantile(0.95, which), candidate.quantile(0.95, which)
    if n1 < needed or n2 < needed:
        note = f"too few samples ({n1} stable, {n2} candidate; {needed} needed)"
        return Check(name, "inconclusive", s, c, limit, None, note)
    assert s is not None
    assert c is not None
    p = mann_whitney_greater(s_counts, c_counts).p_value
    ratio = c / s if s > 0 else float("inf")
    failed = ratio > limit and p < alpha
    note = f"p95 {_ms(c)} vs stable {_ms(s)}: x{ratio:.2f} (limit x{limit:g})"
    return Check(name, "fail" if failed else "pass", s, c, limit, p, note)


def _answer_length_check(
    limit: float | None, alpha: float, stable: ArmStats, candidate: ArmStats, needed: int
) -> Check | None:
    if limit is None:
        return None
    a, b = stable.answer_tokens, candidate.answer_tokens
    if a.n == 0 and b.n == 0:
        return Check("answer_length", "skipped", None, None, limit, None, "no token counts")
    s, c = a.mean, b.mean
    if a.n < needed or b.n < needed or not s:
        note = f"too few answers ({a.n:.0f} stable, {b.n:.0f} candidate; {needed} needed)"
        return Check("answer_length", "inconclusive", s, c, limit, None, note)
    assert c is not None
    drift = c / s - 1
    # Two-sided: answers that got much shorter are as suspect as ones that got longer.
    shorter = mean_less(int(a.n), a.total, a.squares, int(b.n), b.total, b.squares)
    longer = mean_less(int(b.n), b.total, b.squares, int(a.n), a.total, a.squares)
    p = min(1.0, 2 * min(shorter, longer))
    failed = abs(drift) > limit and p < alpha
    note = f"mean {c:.0f} tokens vs stable {s:.0f}: {drift:+.0%} (limit +/-{limit:.0%})"
    return Check("answer_length", "fail" if failed else "pass", s, c, limit, p, note)


def _feedback_check(
    policy: AnalysisPolicy, alpha: float, stable: ArmStats, candidate: ArmStats, needed: int
) -> Check | None:
    name, limit = policy.thresholds.feedback_name, policy.thresholds.feedback_max_drop
    if name is None or limit is None:
        return None
    return _mean_drop_check(
        f"feedback:{name}", "feedback events", name, limit, alpha, stable, candidate, needed
    )


def _judge_score_check(
    policy: AnalysisPolicy, alpha: float, stable: ArmStats, candidate: ArmStats, needed: int
) -> Check | None:
    """The online judge's scores (``evals.online``), by the feedback check's rule."""
    limit = policy.thresholds.judge_max_drop
    if limit is None:
        return None
    return _mean_drop_check(
        JUDGE_SCORE, "judge scores", JUDGE_SCORE, limit, alpha, stable, candidate, needed
    )


def _mean_drop_check(
    check: str,
    what: str,
    name: str,
    limit: float,
    alpha: float,
    stable: ArmStats,
    candidate: ArmStats,
    needed: int,
) -> Check:
    """Fails when the candidate's mean of outcome ``name`` is lower than stable's by more
    than ``limit``, and lower by a one-sided Welch test at ``alpha``."""
    a, b = stable.feedback.get(name), candidate.feedback.get(name)
    n1, n2 = (a.n if a else 0), (b.n if b else 0)
    s, c = (a.mean if a else None), (b.mean if b else None)
    if a is None or b is None or n1 < needed or n2 < needed or s is None or c is None:
        note = f"too few {what} ({n1:.0f} stable, {n2:.0f} candidate; {needed} needed)"
        return Check(check, "inconclusive", s, c, limit, None, note)
    p = mean_less(int(a.n), a.total, a.squares, int(b.n), b.total, b.squares)
    failed = s - c > limit and p < alpha
    note = f"mean {c:.3g} vs stable {s:.3g} (limit -{limit:g})"
    return Check(check, "fail" if failed else "pass", s, c, limit, p, note)


def _divergence_check(
    alpha: float, noise: DivergenceCounts, candidate: DivergenceCounts, needed: int
) -> Check:
    verdict = shadow_verdict(noise, candidate, alpha=alpha / len(MEASURES), min_pairs=needed)
    text = next(m for m in verdict.measures if m.measure == "text_distance")
    failed = [m for m in verdict.measures if m.result == "fail"]
    if verdict.result == "inconclusive":
        note = f"too few pairs ({text.noise_n} noise, {text.candidate_n} candidate)"
    elif failed:
        note = ", ".join(
            f"{m.measure} {m.candidate_mean:.3f} vs noise {m.noise_mean:.3f}"
            for m in failed
            if m.candidate_mean is not None and m.noise_mean is not None
        )
    else:
        note = "candidate diverges no more than stable from itself"
    p_values = [m.p_value for m in (failed or [text]) if m.p_value is not None]
    return Check(
        "shadow_divergence",
        verdict.result,
        text.noise_mean,
        text.candidate_mean,
        None,
        min(p_values) if p_values else None,
        note,
    )


def judge(
    policy: AnalysisPolicy,
    stable: ArmStats,
    candidate: ArmStats,
    divergence: tuple[DivergenceCounts, DivergenceCounts] | None = None,
) -> Judgement:
    """``divergence`` is (noise, candidate) pair counts for a shadow rollout, else None."""
    t = policy.thresholds
    needed = _subsample(policy)
    # Bonferroni: every check gets its share of alpha, so the chance that a candidate no
    # different from stable fails *some* check stays near alpha, not alpha times the
    # number of checks. The shadow verdict splits its share again over its measures.
    enabled = sum(
        limit is not None
        for limit in (
            t.error_rate_increase,
            t.p95_latency_ratio,
            t.p95_ttft_ratio,
            t.length_finish_increase,
            t.answer_length_drift,
            t.feedback_max_drop,
            t.judge_max_drop,
        )
    ) + int(divergence is not None and t.shadow_divergence)
    alpha = policy.alpha / max(1, enabled)
    checks = [
        _proportion_check(
            "error_rate",
            "errors",
            t.error_rate_increase,
            alpha,
            (stable.errors, stable.requests),
            (candidate.errors, candidate.requests),
            policy.min_samples,
        ),
        _latency_check(
            "p95_latency", "latency", t.p95_latency_ratio, alpha, stable, candidate, needed
        ),
        _latency_check("p95_ttft", "ttft", t.p95_ttft_ratio, alpha, stable, candidate, needed),
        _proportion_check(
            "length_finish",
            "truncated",
            t.length_finish_increase,
            alpha,
            (stable.truncated, stable.finished),
            (candidate.truncated, candidate.finished),
            needed,
        ),
        _answer_length_check(t.answer_length_drift, alpha, stable, candidate, needed),
        _feedback_check(policy, alpha, stable, candidate, needed),
        _judge_score_check(policy, alpha, stable, candidate, needed),
    ]
    if divergence is not None and t.shadow_divergence:
        checks.append(_divergence_check(alpha, *divergence, needed))
    done = tuple(c for c in checks if c is not None)
    samples = {"stable": stable.requests, "candidate": candidate.requests}
    verdict: Verdict
    if min(samples.values()) < policy.min_samples:
        verdict = "inconclusive"
    elif any(c.result == "fail" for c in done):
        verdict = "fail"
    elif any(c.result == "inconclusive" for c in done):
        verdict = "inconclusive"
    else:
        verdict = "pass"
    return Judgement(verdict, done, samples)


def judge_tiers(
    policy: AnalysisPolicy,
    arms: Mapping[str, ArmStats],
    candidate_arm: str,
    divergence: tuple[DivergenceCounts, DivergenceCounts] | None = None,
) -> Judgement:
    """The whole (``stable`` against ``candidate_arm``) and every tier whose two tier arms
    (``stable@TIER`` and the candidate's, ``canary@TIER``) are in ``arms``; see the module's
    docstring."""
    stable_arm = WindowArm.STABLE.value
    whole_stable = arms.get(stable_arm) or ArmStats()
    whole_candidate = arms.get(candidate_arm) or ArmStats()
    pairs: dict[str, tuple[ArmStats, ArmStats]] = {}
    for name in sorted(arms):
        arm, tier = split_tier_arm(name)
        if tier is None or arm != stable_arm:
            continue
        candidate = arms.get(tier_arm(candidate_arm, tier))
        if candidate is None or not candidate.requests or not arms[name].requests:
            continue
        if (
            candidate.requests == whole_candidate.requests
            and arms[name].requests == whole_stable.requests
        ):
            # The tier is all the traffic (a rollout of a tier's override, a one-tier
            # segment): judging it again would test the same data at half the alpha.
            continue
        pairs[tier] = (arms[name], candidate)
    judged = sum(min(s.requests, c.requests) >= policy.min_samples for s, c in pairs.values())
    split = replace(policy, alpha=policy.alpha / (1 + judged)) if judged else policy
    whole = judge(split, whole_stable, whole_candidate, divergence)
    if not pairs:
        return whole
    # Feedback and judge scores are not kept per tier (the request index holds no tier),
    # nor are shadow pairs: a check that could only be inconclusive would keep every tier
    # from passing.
    per_tier = replace(
        split,
        thresholds=replace(
            split.thresholds, feedback_name=None, feedback_max_drop=None, judge_max_drop=None
        ),
    )
    tiers = {tier: judge(per_tier, s, c) for tier, (s, c) in pairs.items()}
    failing = any(j.verdict == "fail" for j in tiers.values())
    verdict: Verdict = "fail" if failing else whole.verdict
    return Judgement(verdict, whole.checks, whole.samples, tiers)


def without_stable(stable: ArmStats, candidate: ArmStats) -> Judgement:
    """The verdict of a canary at 100 %: stable serves nobody, so whatever stable counts
    the window holds are leftovers from before the step, not a baseline. Never a pass or a
    fail on them: inconclusive, saying why."""
    note = (
        "the canary serves 100 %: stable has no traffic to compare with "
        f"({stable.requests} stable requests left over are not judged); "
        "promote, or lower the percentage to analyse"
    )
    check = Check("stable_traffic", "inconclusive", stable.requests, None, None, None, note)
    return Judgement(
        "inconclusive", (check,), {"stable": stable.requests, "candidate": candidate.requests}
    )
