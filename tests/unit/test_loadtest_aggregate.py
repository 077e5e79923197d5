"""How the benchmark turns rounds into the figures it checks against the issue's targets."""

from __future__ import annotations

import pytest

from loadtest import aggregate, report


def _run(target: str, cpu: float, round_: int) -> dict[str, object]:
    return {
        "scenario": "nonstream_0ms",
        "target": target,
        "round": round_,
        "requested": 10,
        "ok": 10,
        "errors": 0,
        "error_samples": [],
        "stopped_early": None,
        "rps": 100.0,
        "cpu_us_per_req": {"target": cpu},
        "peak_rss_mib": 10.0,
    }


def test_cpu_against_minimal_is_taken_round_by_round() -> None:
    # The machine got twice as slow between rounds: the ratio of per-target medians
    # (240 / 100) says 2.4, while in two rounds of three promptproxy cost 1.2x what
    # minimal cost in the same round.
    minimal = [100.0, 100.0, 200.0]
    mine = [120.0, 240.0, 240.0]
    runs = [_run("minimal", cpu, r) for r, cpu in enumerate(minimal)]
    runs += [_run("promptproxy", cpu, r) for r, cpu in enumerate(mine)]
    runs += [_run("promptproxy_swap", cpu * 1.1, r) for r, cpu in enumerate(mine)]
    cells = aggregate.combine(runs)
    assert aggregate.cpu_ratios(cells) == {"nonstream_0ms": pytest.approx(1.2)}
    checks = {c["name"]: c for c in report.bench_checks(cells, clients=16)}
    swap = checks["CPU/request swap-in / minimal, nonstream_0ms"]
    assert swap["value"] == pytest.approx(1.32)
    assert swap["met"] is False
    assert checks["CPU/request promptproxy / minimal, nonstream_0ms"]["met"] is True


def test_results_written_before_the_paired_ratio_still_read() -> None:
    cells = aggregate.combine([_run("minimal", 100.0, 0), _run("promptproxy", 150.0, 0)])
    for cell in cells:
        del cell["cpu_vs_minimal"]
    assert aggregate.cpu_ratios(cells) == {"nonstream_0ms": pytest.approx(1.5)}


def test_translation_is_checked_against_the_pass_through_round_by_round() -> None:
    plain = [100.0, 200.0, 200.0]
    runs = [_run("promptproxy", cpu, r) for r, cpu in enumerate(plain)]
    runs += [_run("promptproxy_claude", cpu * 1.25, r) for r, cpu in enumerate(plain)]
    runs += [_run("minimal", 80.0, r) for r in range(3)]
    cells = aggregate.combine(runs)
    cost = aggregate.translation_cost(cells)["nonstream_0ms"]
    assert cost["cpu_us_per_req_passthrough"] == pytest.approx(200.0)
    assert cost["cpu_ratio"] == pytest.approx(1.25)
    checks = {c["name"]: c for c in report.bench_checks(cells, clients=16)}
    assert checks["CPU/request promptproxy_claude / promptproxy, nonstream_0ms"]["met"] is True
