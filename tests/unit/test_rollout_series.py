"""The series the console's charts draw (proxy/analysis/series.py): pooled one-second slots
added up into points, with the figures the verdicts read."""

from __future__ import annotations

import pytest

from proxy.analysis.judge import JUDGE_SCORE
from proxy.analysis.series import (
    Span,
    bucket,
    default_step,
    figures,
    series_arms,
    span,
)
from proxy.analysis.window import ArmStats


def calls(
    n: int,
    *,
    failed: int = 0,
    duration: float = 0.2,
    truncated: int = 0,
    tokens: int = 100,
    ttft: float | None = None,
) -> ArmStats:
    stats = ArmStats()
    for i in range(n):
        stats.add_call(
            failed=i < failed,
            duration=duration,
            ttft=ttft,
            output_tokens=tokens,
            finish_reason="length" if i < failed + truncated else "stop",
        )
    return stats


def test_the_span_starts_at_a_multiple_of_step_within_since_and_ends_after_this_second() -> None:
    cut = span(1_767_000_899.7, 900, 15)
    assert (cut.start, cut.end, cut.step) == (1_767_000_000, 1_767_000_900, 15)
    assert len(cut.points) == 60
    # Mid-step: the first point moves up to the next multiple (never older than since),
    # the last one is cut short after the current second.
    cut = span(1_767_000_907.2, 900, 15)
    assert (cut.start, cut.end) == (1_767_000_015, 1_767_000_908)
    assert list(cut.points)[-1] == 1_767_000_900
    assert len(cut.points) == 60
    # One step of the whole since: one point.
    assert len(span(1_767_000_450.0, 900, 900).points) == 1
    assert len(span(1_767_000_899.0, 900, 900).points) == 1


def test_the_default_step_gives_about_sixty_points() -> None:
    assert default_step(900) == 15
    assert default_step(60) == 1
    assert default_step(1) == 1
    assert default_step(100) == 2  # 50 points


def test_slot_edges_belong_to_the_point_they_start_and_nothing_outside_counts() -> None:
    cut = Span(1000, 1030, 10)
    slots = {
        999: {"stable": calls(100)},  # before start: left out
        1000: {"stable": calls(1)},  # first point, inclusive
        1009: {"stable": calls(2)},  # first point, its last second
        1010: {"stable": calls(4)},  # second point, inclusive
        1029: {"stable": calls(8)},  # last point
        1030: {"stable": calls(100)},  # the end is exclusive
    }
    points = bucket(slots, ["stable", "canary"], cut)
    assert [p["at"] for p in points] == [1000, 1010, 1020]
    assert [p["arms"]["stable"]["requests"] for p in points] == [3, 4, 8]


def test_an_empty_point_has_every_arm_with_zero_requests_and_nulls() -> None:
    points = bucket({}, ["stable", "shadow", "rerun"], Span(0, 4, 2))
    assert len(points) == 2
    for point in points:
        assert list(point["arms"]) == ["stable", "shadow", "rerun"]
        for figs in point["arms"].values():
            assert figs == {
                "requests": 0,
                "errors": 0,
                "error_rate": None,
                "p95_latency": None,
                "p95_ttft": None,
                "length_share": None,
                "answer_tokens": None,
                "judge": None,
            }


def test_tier_arms_and_arms_not_charted_are_left_out() -> None:
    slots = {5: {"canary": calls(3), "canary@enterprise": calls(3), "stable": calls(1)}}
    (point,) = bucket(slots, ["stable", "canary"], Span(0, 10, 10))
    assert set(point["arms"]) == {"stable", "canary"}
    assert point["arms"]["canary"]["requests"] == 3


def test_shares_are_of_their_own_population() -> None:
    stats = calls(10, failed=2, truncated=3)
    figs = figures(stats)
    assert figs["requests"] == 10
    assert figs["errors"] == 2
    assert figs["error_rate"] == 0.2
    # Failed calls stop before their finish reason is counted: 3 cut of 8 finished.
    assert figs["length_share"] == 0.375
    assert figs["answer_tokens"] == 100.0


def test_p95_is_read_off_the_bins_like_the_verdicts() -> None:
    stats = calls(95, duration=0.1)
    stats.merge(calls(5, duration=2.0, ttft=None))
    figs = figures(stats)
    # 95 of 100 at 100 ms: the p95 lies in 100 ms's bin (10 % wide), never near 2 s.
    assert figs["p95_latency"] == pytest.approx(0.1, rel=0.1)
    assert figs["p95_latency"] == float(f"{stats.quantile(0.95):.4g}")
    assert figs["p95_ttft"] is None  # no stream
    streamed = figures(calls(20, duration=1.0, ttft=0.3))
    assert streamed["p95_ttft"] == pytest.approx(0.3, rel=0.1)


def test_the_judge_figure_is_the_mean_score_over_the_point() -> None:
    first, second = ArmStats(), ArmStats()
    first.add_feedback(JUDGE_SCORE, 1.0)
    first.add_feedback(JUDGE_SCORE, 0.5)
    second.add_feedback(JUDGE_SCORE, 0.0)
    first.add_feedback("thumbs_up", 1.0)  # other feedback is not the judge's
    (point,) = bucket({0: {"canary": first}, 1: {"canary": second}}, ["canary"], Span(0, 2, 2))
    assert point["arms"]["canary"]["judge"] == 0.5
    assert figures(calls(3))["judge"] is None


def test_a_series_has_its_modes_arms_then_any_other_the_pool_holds() -> None:
    assert series_arms("canary", set()) == ["stable", "canary"]
    assert series_arms("shadow", {"stable"}) == ["stable", "shadow", "rerun"]
    # Counts of an arm the mode does not name are charted after its own.
    assert series_arms("canary", {"shadow", "stable"}) == ["stable", "canary", "shadow"]


def test_figures_keep_four_significant_digits() -> None:
    stats = calls(3, failed=1)
    assert figures(stats)["error_rate"] == 0.3333
