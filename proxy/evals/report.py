"""The figures of an eval run, from its samples: pure, so the CLI, the gates and the tests
read the same numbers.

Per version: samples passed, the pass rate and its Wilson interval. Against the baseline:
the difference of pass rates averaged over cases (each case counts once, however many
samples it has) with a bootstrap interval over cases, because samples of one case are not
independent: they share the case's difficulty, and treating them as independent would
make the interval too narrow. Per case: each version's rate and whether the candidate is
lower than the baseline beyond the noise of the samples (a one-sided Fisher exact test).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.stats import fisher_less, wilson_interval

#: A case is flagged when its drop has a one-sided p-value below this.
CASE_ALPHA = 0.05
#: Bootstrap resamples of the cases for the difference's interval.
RESAMPLES = 2000
#: Regressed cases the summary names (all are in the detail's rows).
MAX_NAMED = 20
#: Cases a difference needs for an interval: fewer give a bootstrap of (almost) no width.
MIN_CASES = 5
CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass(frozen=True, slots=True)
class Failure:
    #: The assertion's index in its case, and its type.
    index: int
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"assertion": self.index, "type": self.kind, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class JudgeScore:
    """A judge's score of one answer for one judge assertion, with the judge's version."""

    index: int
    judge: str
    version: int
    score: float | None
    reason: str
    #: Why there is no score (the judge's call failed, or it answered no score).
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "assertion": self.index,
            "judge": self.judge,
            "version": self.version,
            "score": self.score,
            "reason": self.reason,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class SampleResult:
    """One answer to one case by one version."""

    status: int
    #: Every assertion that could be decided passed, and the call did not fail.
    passed: bool
    failures: tuple[Failure, ...]
    #: Assertions left undecided (a judge rubric, before a judge scores it).
    pending: tuple[int, ...]
    text: str
    finish_reason: str | None
    latency_ms: float
    error: str | None = None
    #: The judges' scores of this answer (judge assertions).
    scores: tuple[JudgeScore, ...] = ()
    #: A judge's own suite: (the judge said pass, the label says pass) per label.
    labels: tuple[tuple[bool, bool], ...] = ()
    #: The answer's tool calls (name, arguments as sent) and whether it was a refusal:
    #: what drift compares besides the text.
    tool_calls: tuple[tuple[str, str], ...] = ()
    refused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "failures": [f.to_dict() for f in self.failures],
            "pending": list(self.pending),
            "text": self.text,
            "finish_reason": self.finish_reason,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "scores": [score.to_dict() for score in self.scores],
            "labels": [list(label) for label in self.labels],
            "tool_calls": [{"name": n, "arguments": a} for n, a in self.tool_calls],
            "refused": self.refused,
        }


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    #: Side name (``candidate``, ``baseline``) -> its samples.
    sides: Mapping[str, tuple[SampleResult, ...]]

    def passes(self, side: str) -> tuple[int, int]:
        samples = self.sides.get(side, ())
        return sum(1 for s in samples if s.passed), len(samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sides": {side: [s.to_dict() for s in samples] for side, samples in self.sides.items()},
        }


@dataclass(frozen=True, slots=True)
class Criteria:
    """What makes a run pass: the candidate's pass rate at least ``min_pass_rate``, and
    its difference to the baseline no lower than ``-max_drop``."""

    min_pass_rate: float = 1.0
    max_drop: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"min_pass_rate": self.min_pass_rate, "max_drop": self.max_drop}


def side_summary(cases: Sequence[CaseResult], side: str, version: int) -> dict[str, Any]:
    passes = samples = errors = 0
    for case in cases:
        k, n = case.passes(side)
        passes, samples = passes + k, samples + n
        errors += sum(1 for s in case.sides.get(side, ()) if s.error is not None)
    low, high = wilson_interval(passes, samples)
    found: dict[str, Any] = {
        "version": version,
        "samples": samples,
        "passed": passes,
        "errors": errors,
        "pass_rate": passes / samples if samples else 0.0,
        "interval": [low, high],
    }
    scores = [score for case in cases for score in _scores(case, side)]
    unscored = sum(
        1
        for case in cases
        for sample in case.sides.get(side, ())
        for score in sample.scores
        if score.score is None
    )
    if scores or unscored:
        # Unscored answers are out of the mean; their number says how much that hides.
        mean = sum(scores) / len(scores) if scores else None
        found["judge"] = {"mean": mean, "n": len(scores), "unscored": unscored}
    labels = [label for case in cases for s in case.sides.get(side, ()) for label in s.labels]
    if labels:
        found["agreement"] = agreement(labels)
    return found


def _scores(case: CaseResult, side: str) -> list[float]:
    return [
        score.score
        for sample in case.sides.get(side, ())
        for score in sample.scores
        if score.score is not None
    ]


def agreement(labels: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """How often a judge said what the labels say, and Cohen's kappa: the agreement beyond
    what a judge answering at random with its own pass rate would reach by chance (1:
    perfect, 0: chance, below 0: worse than chance; 0 too when chance alone agrees always,
    a constant judge on one-sided labels)."""
    n = len(labels)
    agree = sum(1 for said, label in labels if said == label)
    said_pass = sum(1 for said, _ in labels if said) / n
    label_pass = sum(1 for _, label in labels if label) / n
    chance = said_pass * label_pass + (1 - said_pass) * (1 - label_pass)
    observed = agree / n
    kappa = 0.0 if chance >= 1 else (observed - chance) / (1 - chance)
    return {"n": n, "accuracy": observed, "kappa": kappa}


def case_rows(cases: Sequence[CaseResult], with_baseline: bool) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        k_c, n_c = case.passes(CANDIDATE)
        row: dict[str, Any] = {"name": case.name, "candidate": [k_c, n_c]}
        if with_baseline:
            k_b, n_b = case.passes(BASELINE)
            row["baseline"] = [k_b, n_b]
            p = fisher_less(k_c, n_c, k_b, n_b)
            row["p_value"] = p
            row["regressed"] = p < CASE_ALPHA
            row["improved"] = fisher_less(k_b, n_b, k_c, n_c) < CASE_ALPHA
        rows.append(row)
    return rows


def _rate(k: int, n: int) -> float:
    return k / n if n else 0.0


def difference(cases: Sequence[CaseResult], seed: int) -> dict[str, Any]:
    """Candidate minus baseline pass rate, the mean of per-case differences, with a 95 %
    percentile bootstrap interval over cases (seeded: the same run reports the same)."""
    deltas = [
        _rate(*case.passes(CANDIDATE)) - _rate(*case.passes(BASELINE))
        for case in cases
        if case.sides.get(CANDIDATE) and case.sides.get(BASELINE)
    ]
    return _mean_with_interval(deltas, seed)


def judge_difference(cases: Sequence[CaseResult], seed: int) -> dict[str, Any] | None:
    """Candidate minus baseline mean judge score, over the cases both have scores for, as
    ``difference`` does for pass rates; None without such cases."""
    deltas = []
    for case in cases:
        candidate, baseline = _scores(case, CANDIDATE), _scores(case, BASELINE)
        if candidate and baseline:
            deltas.append(sum(candidate) / len(candidate) - sum(baseline) / len(baseline))
    return _mean_with_interval(deltas, seed) if deltas else None


def _mean_with_interval(deltas: Sequence[float], seed: int) -> dict[str, Any]:
    if not deltas:
        return {"value": 0.0, "interval": [-1.0, 1.0], "cases": 0}
    m = len(deltas)
    # Rounded: float sums of equal rates must give 0, not -1.8e-17 (a failed max_drop 0).
    value = round(sum(deltas) / m, 12)
    if m < MIN_CASES:
        # A bootstrap over one or two cases has (almost) no width: no interval at all
        # rather than a false certainty.
        return {"value": value, "interval": [-1.0, 1.0], "cases": m, "too_few_cases": True}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(deltas, k=m)) / m for _ in range(RESAMPLES))
    low = round(means[int(0.025 * RESAMPLES)], 12)
    high = round(means[int(0.975 * RESAMPLES) - 1], 12)
    return {"value": value, "interval": [low, high], "cases": m}


def summarize(
    cases: Sequence[CaseResult],
    candidate: int,
    baseline: int | None,
    criteria: Criteria,
    seed: int,
) -> tuple[bool, dict[str, Any]]:
    """The run's verdict by ``criteria`` and its summary (what is stored and shown)."""
    rows = case_rows(cases, baseline is not None)
    regressed = [row["name"] for row in rows if row.get("regressed")]
    # Per-case rows are the detail's (``case_rows``): a summary stays small, whatever the
    # number of cases, so every run can be stored and listed.
    summary: dict[str, Any] = {
        "candidate": side_summary(cases, CANDIDATE, candidate),
        "criteria": criteria.to_dict(),
        "case_count": len(rows),
        "regressed_count": len(regressed),
        "regressed": regressed[:MAX_NAMED],
    }
    passed = summary["candidate"]["pass_rate"] >= criteria.min_pass_rate
    if baseline is not None:
        summary["baseline"] = side_summary(cases, BASELINE, baseline)
        diff = difference(cases, seed)
        # A drop is significant when the whole interval is below zero.
        diff["significant_drop"] = diff["interval"][1] < 0
        summary["difference"] = diff
        passed = passed and diff["value"] >= -criteria.max_drop
        judged = judge_difference(cases, seed)
        if judged is not None:
            judged["significant_drop"] = judged["interval"][1] < 0
            summary["judge_difference"] = judged
    summary["passed"] = passed
    return passed, summary
