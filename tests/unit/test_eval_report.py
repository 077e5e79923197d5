"""The figures of an eval run (proxy.evals.report) and where the runner calls its own
data plane (proxy.server.loopback_url)."""

from __future__ import annotations

import orjson
import pytest

from proxy.evals.report import (
    BASELINE,
    CANDIDATE,
    CaseResult,
    Criteria,
    SampleResult,
    case_rows,
    difference,
    summarize,
)
from proxy.server import loopback_url


def _samples(passed: int, n: int) -> tuple[SampleResult, ...]:
    return tuple(SampleResult(200, i < passed, (), (), "text", "stop", 1.0) for i in range(n))


def _case(name: str, candidate: tuple[int, int], baseline: tuple[int, int]) -> CaseResult:
    return CaseResult(name, {CANDIDATE: _samples(*candidate), BASELINE: _samples(*baseline)})


def test_the_difference_weighs_each_case_once_whatever_its_samples() -> None:
    # One case with many samples must not outweigh the others.
    cases = [
        _case("big", (50, 50), (50, 50)),
        _case("a", (0, 2), (2, 2)),
        _case("b", (0, 2), (2, 2)),
    ]
    diff = difference(cases, seed=1)
    assert diff["value"] == pytest.approx(-2 / 3)
    assert diff["cases"] == 3
    low, high = diff["interval"]
    assert low <= diff["value"] <= high


def test_equal_versions_differ_by_exactly_nothing_and_pass_at_no_drop() -> None:
    # 1/3 - 1/3 summed over cases in floating point is -1.8e-17, not 0, unless rounded.
    cases = [_case(str(i), (k, 3), (k, 3)) for i, k in enumerate((1, 2, 1, 0, 2, 1, 1))]
    passed, summary = summarize(cases, 2, 1, Criteria(min_pass_rate=0.0, max_drop=0.0), seed=1)
    assert summary["difference"]["value"] == 0.0
    assert passed is True


def test_too_few_cases_give_no_interval() -> None:
    diff = difference([_case("a", (0, 3), (3, 3)), _case("b", (3, 3), (3, 3))], seed=1)
    assert diff["too_few_cases"] is True
    assert diff["interval"] == [-1.0, 1.0]
    _, summary = summarize([_case("a", (0, 9), (9, 9))], 2, 1, Criteria(), seed=1)
    assert summary["difference"]["significant_drop"] is False


def test_the_interval_is_the_same_for_the_same_seed_and_narrows_with_more_cases() -> None:
    few = [_case(str(i), (2 if i % 2 else 3, 3), (3, 3)) for i in range(6)]
    many = [_case(str(i), (2 if i % 2 else 3, 3), (3, 3)) for i in range(60)]
    assert difference(few, 7) == difference(few, 7)
    width = lambda d: d["interval"][1] - d["interval"][0]  # noqa: E731
    assert width(difference(many, 7)) < width(difference(few, 7))


def test_a_run_passes_only_within_its_criteria() -> None:
    cases = [_case(str(i), (3, 3) if i else (2, 3), (3, 3)) for i in range(10)]
    passed, summary = summarize(cases, 2, 1, Criteria(min_pass_rate=0.9, max_drop=0.05), seed=3)
    assert summary["candidate"]["pass_rate"] == pytest.approx(29 / 30)
    assert summary["difference"]["value"] == pytest.approx(-1 / 30)
    assert passed is True
    assert summary["passed"] is True
    passed, _ = summarize(cases, 2, 1, Criteria(min_pass_rate=0.9, max_drop=0.0), seed=3)
    assert passed is False
    passed, _ = summarize(cases, 2, 1, Criteria(min_pass_rate=1.0, max_drop=0.5), seed=3)
    assert passed is False


def _three() -> list[CaseResult]:
    return [
        _case("cut", (0, 6), (6, 6)),
        _case("wobble", (5, 6), (6, 6)),
        _case("few", (1, 3), (3, 3)),  # p = 0.2 by Fisher's exact test: not a finding
    ]


def test_a_case_regresses_only_beyond_the_noise_of_its_samples() -> None:
    _, summary = summarize(
        _three(),
        2,
        1,
        Criteria(),
        seed=0,
    )
    assert summary["regressed"] == ["cut"]
    rows = {row["name"]: row for row in case_rows(_three(), with_baseline=True)}
    assert rows["cut"]["regressed"] is True
    assert rows["wobble"]["regressed"] is False
    assert rows["few"]["regressed"] is False
    assert not any(row["improved"] for row in rows.values())


def test_without_a_baseline_there_is_no_difference() -> None:
    cases = [CaseResult("x", {CANDIDATE: _samples(1, 2)})]
    passed, summary = summarize(cases, 2, None, Criteria(min_pass_rate=0.5), seed=0)
    assert passed is True
    assert "difference" not in summary
    assert "baseline" not in summary
    assert "regressed" not in case_rows(cases, with_baseline=False)[0]


@pytest.mark.parametrize(
    ("bound", "url"),
    [
        (("127.0.0.1", 8080), "http://127.0.0.1:8080"),
        (("0.0.0.0", 8080), "http://127.0.0.1:8080"),
        (("::", 9000, 0, 0), "http://[::1]:9000"),
        (("10.1.2.3", 8080), "http://10.1.2.3:8080"),
    ],
)
def test_the_runner_reaches_the_data_plane_where_it_is_bound(
    bound: tuple[object, ...], url: str
) -> None:
    assert loopback_url([bound]) == url


def test_the_summary_of_the_largest_suite_fits_what_a_store_keeps() -> None:
    # 500 cases, all regressed: the rows are the detail's, the summary names 20.
    cases = [
        _case(f"case-{i:03d}-with-a-long-descriptive-name", (0, 6), (6, 6)) for i in range(500)
    ]
    _, summary = summarize(cases, 2, 1, Criteria(), seed=1)
    assert summary["regressed_count"] == 500
    assert len(summary["regressed"]) == 20
    assert len(orjson.dumps(summary)) < 16 * 1024
