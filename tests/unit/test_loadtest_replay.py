"""How the replay scenarios vary their callers and turn replays into the figures."""

from __future__ import annotations

from typing import Any

import orjson

from loadtest.replay_scenarios import (
    ReplayResult,
    call_body,
    results_json,
    row,
    summarize,
    written_of,
)


def _replay(scenario: str, result: str, excess: float, seconds: float, run: int) -> ReplayResult:
    measures: dict[str, dict[str, Any]] = {
        "text_distance": {
            "result": result,
            "noise_mean": 0.25,
            "candidate_mean": 0.25 + excess,
            "p_value": 0.5 if result == "pass" else 1e-6,
            "effect": 0.5,
            "noise_n": 30,
            "candidate_n": 30,
        }
    }
    return ReplayResult(
        scenario=scenario,
        run=run,
        calls=30,
        slug="replay-x",
        candidate=2,
        result=result,
        failed=[] if result != "fail" else ["text_distance"],
        measures=measures,
        captures=30,
        skipped={},
        noise_pairs=30,
        candidate_pairs=30,
        failed_calls={"candidate": 0, "baseline": 0},
        seconds=seconds,
    )


def test_sixty_calls_are_sixty_different_requests() -> None:
    # A replay of one request sixty times would measure one answer's noise, not traffic's.
    bodies = [call_body(n) for n in range(60)]
    keys = {
        orjson.dumps([b["messages"], b["prompt_variables"]], option=orjson.OPT_SORT_KEYS)
        for b in bodies
    }
    assert len(keys) == 60


def test_written_captures_are_read_from_the_metrics() -> None:
    text = (
        "# HELP promptproxy_captures_total Captured calls\n"
        'promptproxy_captures_total{result="queue_full"} 3.0\n'
        'promptproxy_captures_total{result="written"} 120.0\n'
    )
    assert written_of(text) == 120
    assert written_of("promptproxy_requests_total 5.0\n") == 0


def test_each_scenario_counts_its_verdicts_and_the_excess_over_the_noise() -> None:
    results = [
        _replay("noise-only", "pass", 0.01, 0.2, 1),
        _replay("noise-only", "pass", -0.01, 0.4, 2),
        _replay("longer-3x", "fail", 0.4, 0.3, 1),
        _replay("longer-3x", "inconclusive", 0.0, 0.1, 2),
    ]
    summary = summarize(results)
    assert list(summary) == ["noise-only", "longer-3x"]
    noise = summary["noise-only"]
    assert (noise["runs"], noise["passed"], noise["flagged"]) == (2, 2, 0)
    assert noise["median_seconds"] == 0.3
    excess = noise["measures"]["text_distance"]["excess"]
    assert excess["mean"] == 0.0
    assert excess["max"] == 0.01
    longer = summary["longer-3x"]
    assert (longer["flagged"], longer["inconclusive"]) == (1, 1)
    assert longer["failing_measures"] == {"text_distance": 1}


def test_the_results_file_is_json_with_one_replay_a_line() -> None:
    rows = [row(_replay("noise-only", "pass", 0.0, 0.1, n)) for n in (1, 2)]
    raw = results_json({"runs": 2}, rows)
    assert orjson.loads(raw) == {"runs": 2, "rows": rows}
    assert len(raw.splitlines()) == 3 + 2 + 2  # {, "runs", "rows": [, two rows, ], }
    assert orjson.loads(results_json({}, [])) == {"rows": []}
