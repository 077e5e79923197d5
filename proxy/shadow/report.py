"""The shadow report: over one rollout's recorded pairs, does the candidate diverge from
stable more than stable diverges from itself?

Per measure, the stable-vs-stable pairs (the noise: stable run twice) against the
stable-vs-candidate pairs, by a one-sided Mann-Whitney U test (``compare.shadow_verdict``),
with each side's mean, p50 and p95 and its counts per bin (what a chart draws). The admin
API computes it (``GET /admin/v1/prompts/{slug}/shadow/report``); ``promptproxy shadow
report`` prints it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.prompt_key import PromptKey
from proxy.shadow.compare import (
    MEASURES,
    Divergence,
    DivergenceCounts,
    MeasureVerdict,
    ShadowVerdict,
    divergence,
    shadow_verdict,
)
from proxy.shadow.models import ArmResult, ShadowKind, ToolCall
from proxy.shadow.pairs import PairSink

#: Pairs read from the sink at a time.
REPORT_PAGE = 1000


def _arm(data: Mapping[str, Any]) -> ArmResult:
    return ArmResult(
        version=int(data.get("version") or 0),
        status=int(data.get("status") or 0),
        text=data.get("text") or "",
        tool_calls=[
            ToolCall(call.get("name") or "", call.get("arguments") or "")
            for call in data.get("tool_calls") or []
        ],
        finish_reason=data.get("finish_reason"),
        truncated=bool(data.get("truncated")),
    )


def _answered(arm: Mapping[str, Any]) -> bool:
    return not arm.get("error_class") and 200 <= (arm.get("status") or 0) < 300


def pair_divergence(pair: Mapping[str, Any]) -> Divergence | None:
    """The pair's divergence: the one the runner stored with it, else computed from its
    halves. None when it cannot be compared: no primary, or a half that failed (errors
    are the error-rate check's business; a failed answer's text says nothing)."""
    primary, shadow = pair.get("primary"), pair.get("shadow")
    if primary is None or shadow is None or not (_answered(primary) and _answered(shadow)):
        return None
    stored = pair.get("divergence")
    if isinstance(stored, Mapping):
        return Divergence.from_dict(stored)
    # A pair does not record whether its request asked for JSON; unless it says so,
    # json_invalid stays not applicable rather than flagging every prose answer.
    return divergence(_arm(primary), _arm(shadow), expect_json=pair.get("expect_json") is True)


def quantile(values: list[float], q: float) -> float | None:
    # Linear between order statistics (numpy's default): exact, the pairs are at hand.
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(slots=True)
class Side:
    """One kind of pair: how many, counts per bin, and every value (for the quantiles)."""

    counts: DivergenceCounts = field(default_factory=DivergenceCounts)
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MEASURES})
    pairs: int = 0

    def add(self, d: Divergence) -> None:
        self.pairs += 1
        self.counts.add(d)
        for name in MEASURES:
            value = d.get(name)
            if value is not None:
                self.values[name].append(value)


@dataclass(frozen=True, slots=True)
class MeasureRow:
    verdict: MeasureVerdict
    noise_p50: float | None
    noise_p95: float | None
    candidate_p50: float | None
    candidate_p95: float | None
    noise_bins: list[int]
    candidate_bins: list[int]


@dataclass(frozen=True, slots=True)
class ShadowReport:
    key: PromptKey
    rollout_id: str
    #: None when the rollout was named rather than chosen as the latest.
    rollout_running: bool | None
    #: As the caller wrote it (``1h``).
    since: str
    noise: Side
    candidate: Side
    skipped: int
    verdict: ShadowVerdict
    alpha: float
    margin: float
    min_pairs: int

    def rows(self) -> list[MeasureRow]:
        return [
            MeasureRow(
                verdict=m,
                noise_p50=quantile(self.noise.values[m.measure], 0.5),
                noise_p95=quantile(self.noise.values[m.measure], 0.95),
                candidate_p50=quantile(self.candidate.values[m.measure], 0.5),
                candidate_p95=quantile(self.candidate.values[m.measure], 0.95),
                noise_bins=list(self.noise.counts.bins[m.measure]),
                candidate_bins=list(self.candidate.counts.bins[m.measure]),
            )
            for m in self.verdict.measures
        ]


@dataclass(slots=True)
class ReportBuilder:
    """Pairs in, a report out; pairs of another kind, unpaired or failed are skipped."""

    noise: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)
    skipped: int = 0

    def add(self, pairs: Iterable[Mapping[str, Any]]) -> None:
        sides = {ShadowKind.STABLE.value: self.noise, ShadowKind.CANDIDATE.value: self.candidate}
        for pair in pairs:
            chosen = sides.get(pair.get("kind") or "")
            d = pair_divergence(pair) if chosen is not None else None
            if chosen is None or d is None:
                self.skipped += 1
                continue
            chosen.add(d)

    def build(
        self,
        key: PromptKey,
        rollout_id: str,
        rollout_running: bool | None,
        since: str,
        *,
        alpha: float,
        margin: float,
        min_pairs: int,
    ) -> ShadowReport:
        verdict = shadow_verdict(
            self.noise.counts,
            self.candidate.counts,
            alpha=alpha,
            margin=margin,
            min_pairs=min_pairs,
        )
        return ShadowReport(
            key,
            rollout_id,
            rollout_running,
            since,
            self.noise,
            self.candidate,
            self.skipped,
            verdict,
            alpha,
            margin,
            min_pairs,
        )


async def read_pairs(
    sink: PairSink, key: PromptKey, since: float | None, limit: int | None, rollout_id: str
) -> AsyncIterator[list[dict[str, Any]]]:
    """The pairs of one rollout of ``key`` recorded since ``since``, oldest first, each
    once, at most ``limit``, a page at a time (``SinkUnavailable`` when the sink cannot be
    read). The next page starts at the time of the last pair yielded; pairs recorded at
    that same instant and already yielded are skipped there."""
    cursor = since
    boundary: set[str] = set()  # pairs at the cursor's instant, already yielded
    written = 0
    while limit is None or written < limit:
        want = REPORT_PAGE if limit is None else min(REPORT_PAGE, limit - written)
        ask = want + len(boundary)
        page = await sink.read(key, cursor, ask, rollout_id)
        fresh = [p for p in page if p["pair_id"] not in boundary][:want]
        if fresh:
            yield fresh
        written += len(fresh)
        if not fresh or len(page) < ask:
            return
        last = fresh[-1]["ts"]
        done = boundary | {p["pair_id"] for p in fresh}
        boundary = {p["pair_id"] for p in page if p["ts"] == last and p["pair_id"] in done}
        cursor = float(last)


async def make_report(
    sink: PairSink,
    key: PromptKey,
    rollout_id: str,
    rollout_running: bool | None,
    since_text: str,
    since: float | None,
    limit: int | None,
    *,
    alpha: float,
    margin: float,
    min_pairs: int,
) -> ShadowReport:
    builder = ReportBuilder()
    async for page in read_pairs(sink, key, since, limit, rollout_id):
        # Off the event loop between pages: a pair without a stored divergence is compared
        # here (rapidfuzz holds the GIL, but the loop gets its turns between pairs).
        await asyncio.to_thread(builder.add, page)
    return builder.build(
        key,
        rollout_id,
        rollout_running,
        since_text,
        alpha=alpha,
        margin=margin,
        min_pairs=min_pairs,
    )
