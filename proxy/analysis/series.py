"""A rollout's pooled counts as a time series: what the console's live charts draw. Pure.

The pool holds every replica's counts per arm and second (``window``); the series route
(``GET /admin/v1/prompts/{slug}/rollout/series``) reads the last ``since`` seconds added up
per ``step`` (``StatsPool.read_buckets``: in the server where the store can) and makes one
point per ``step`` seconds and arm of them here. The figures are those the verdicts judge
(``judge``), from the same counts: an error share, a p95 read off the latency bins, the
share of answers cut by the token limit, the mean answer length and the mean online-judge
score, so a chart and a verdict over the same seconds agree.

Points start at multiples of ``step`` (unix seconds), so successive reads cut the same
buckets and a chart does not wobble as it refreshes. A point at ``at`` holds the slots of
``[at, at + step)`` that also lie in ``[start, end)``: the first starts at or after
``end - since`` (never before what the pool keeps), and the last may be cut short by
``end``, the second after the current one: the current second is in, still counting, as
are the last ``analysis.flush_seconds`` of other replicas, which have not flushed them yet.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.analysis.judge import JUDGE_SCORE
from proxy.analysis.window import SLOT_SECONDS, ArmStats, WindowArm

#: The pool keeps a rollout's slots at least this long (``analyser``), whatever its analysis
#: interval, and a series reaches back at most this far.
SERIES_SECONDS = 900
#: About this many points when the caller names no ``step``.
DEFAULT_POINTS = 60

#: The arms a series has: those the rollout's mode serves or shadows (per-tier arms are the
#: verdicts' business, not the charts').
KNOWN_ARMS: tuple[str, ...] = tuple(arm.value for arm in WindowArm)
_MODE_ARMS: dict[str, tuple[str, ...]] = {
    "canary": (WindowArm.STABLE.value, WindowArm.CANARY.value),
    "shadow": (WindowArm.STABLE.value, WindowArm.SHADOW.value, WindowArm.RERUN.value),
}


@dataclass(frozen=True, slots=True)
class Span:
    """The seconds a series covers, ``[start, end)``, cut into points ``step`` apart."""

    start: int
    end: int
    step: int

    @property
    def points(self) -> range:
        """Each point's ``at``."""
        return range(self.start, self.end, self.step)


def default_step(since: int) -> int:
    return max(1, math.ceil(since / DEFAULT_POINTS))


def span(now: float, since: int, step: int) -> Span:
    """The last ``since`` seconds up to ``now``'s, from the first multiple of ``step`` in
    them. ``1 <= step <= since`` (the route checks it)."""
    end = (int(now) // SLOT_SECONDS + 1) * SLOT_SECONDS
    start = -((since - end) // step) * step  # ceil((end - since) / step) * step
    return Span(start, end, step)


def series_arms(mode: str, present: Collection[str]) -> list[str]:
    """The mode's arms, then any other arm the pool holds (in ``WindowArm`` order)."""
    implied = _MODE_ARMS.get(mode, ())
    return [*implied, *(arm for arm in KNOWN_ARMS if arm in present and arm not in implied)]


def figures(stats: ArmStats) -> dict[str, Any]:
    """One arm's figures over one point: counts, and null for what they cannot say."""
    judge = stats.feedback.get(JUDGE_SCORE)
    return {
        "requests": stats.requests,
        "errors": stats.errors,
        "error_rate": _round(stats.error_rate),
        "p95_latency": _round(stats.quantile(0.95, "latency")),
        "p95_ttft": _round(stats.quantile(0.95, "ttft")),
        "length_share": _round(stats.truncated_share),
        "answer_tokens": _round(stats.answer_tokens.mean),
        "judge": _round(None if judge is None else judge.mean),
    }


def bucket(
    slots: Mapping[int, Mapping[str, ArmStats]], arms: Sequence[str], cut: Span
) -> list[dict[str, Any]]:
    """One point per ``cut.step``, each with every arm of ``arms`` (an arm without a
    request there has ``requests: 0`` and nulls), from ``slots``: seconds, or buckets the
    pool already added up (keyed by their first second). Slots outside the span are left
    out."""
    totals = [{arm: ArmStats() for arm in arms} for _ in cut.points]
    for slot, by_arm in slots.items():
        if not cut.start <= slot < cut.end:
            continue
        point = totals[(slot - cut.start) // cut.step]
        for arm, stats in by_arm.items():
            if arm in point:
                point[arm].merge(stats)
    return [
        {"at": at, "arms": {arm: figures(stats) for arm, stats in point.items()}}
        for at, point in zip(cut.points, totals, strict=True)
    ]


def _round(value: float | None) -> float | None:
    # As the verdicts' checks print their figures: four significant digits.
    return None if value is None else float(f"{value:.4g}")
