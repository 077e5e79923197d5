"""``AnalysisPolicy``: the JSON shape an operator writes, its defaults, and every refusal
naming the field at fault (the admin API answers 400 with that ``param``)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.registry.analysis_policy import AnalysisPolicy, PolicyError, Thresholds

DEFAULT_JSON = {
    "interval": 60.0,
    "min_samples": 100,
    "failure_limit": 0,
    "steps": [],
    "alpha": 0.01,
    "thresholds": {
        "error_rate_increase": 0.02,
        "p95_latency_ratio": 1.5,
        "p95_ttft_ratio": 1.5,
        "length_finish_increase": 0.05,
        "answer_length_drift": 0.3,
        "shadow_divergence": True,
        "feedback_drop": None,
    },
}


def test_an_empty_object_is_the_default_policy() -> None:
    policy = AnalysisPolicy.from_dict({})
    assert policy == AnalysisPolicy()
    assert policy.to_dict() == DEFAULT_JSON
    assert AnalysisPolicy.from_dict({"thresholds": {}}) == policy


def test_the_spec_example_reads_as_written() -> None:
    policy = AnalysisPolicy.from_dict(
        {
            "interval": 30,
            "min_samples": 200,
            "failure_limit": 1,
            "steps": [1, 5, 25, 50],
            "alpha": 0.05,
            "thresholds": {
                "error_rate_increase": None,
                "p95_latency_ratio": 2,
                "shadow_divergence": False,
                "feedback_drop": {"name": "thumbs_up", "max_drop": 0.1},
            },
        }
    )
    assert policy == AnalysisPolicy(
        interval=30.0,
        min_samples=200,
        failure_limit=1,
        steps=(100, 500, 2500, 5000),  # basis points, like Rollout.basis_points
        alpha=0.05,
        thresholds=Thresholds(
            error_rate_increase=None,
            p95_latency_ratio=2.0,
            shadow_divergence=False,
            feedback_name="thumbs_up",
            feedback_max_drop=0.1,
        ),
    )
    assert policy.step_percents == (1.0, 5.0, 25.0, 50.0)
    assert policy.to_dict()["steps"] == [1.0, 5.0, 25.0, 50.0]
    assert policy.to_dict()["thresholds"]["feedback_drop"] == {"name": "thumbs_up", "max_drop": 0.1}


@pytest.mark.parametrize(
    "policy",
    [
        AnalysisPolicy(),
        AnalysisPolicy(steps=(1, 2, 3333, 9999)),
        AnalysisPolicy(
            interval=3_600.0,
            min_samples=1,
            failure_limit=7,
            alpha=0.5,
            thresholds=Thresholds(None, None, None, None, None, False, "csat", 0.0),
        ),
        AnalysisPolicy(interval=1.0, thresholds=Thresholds(error_rate_increase=0.0)),
    ],
    ids=["defaults", "fine-steps", "extremes", "zero-increase"],
)
def test_to_dict_round_trips(policy: AnalysisPolicy) -> None:
    assert AnalysisPolicy.from_dict(policy.to_dict()) == policy


def test_shadow_divergence_null_turns_the_check_off() -> None:
    policy = AnalysisPolicy.from_dict({"thresholds": {"shadow_divergence": None}})
    assert policy.thresholds.shadow_divergence is False


@pytest.mark.parametrize(
    ("data", "param", "says"),
    [
        ([1, 2], "analysis", "must be an object"),
        ({"cadence": 5}, "analysis.cadence", "unknown field 'cadence'"),
        ({"interval": 0}, "analysis.interval", "1 to 3600"),
        ({"interval": 3_601}, "analysis.interval", "1 to 3600"),
        ({"interval": "60"}, "analysis.interval", "must be a number"),
        ({"interval": True}, "analysis.interval", "must be a number"),
        ({"interval": None}, "analysis.interval", "must be a number"),
        ({"interval": float("inf")}, "analysis.interval", "finite"),
        ({"min_samples": 0}, "analysis.min_samples", "at least 1"),
        ({"min_samples": 10.5}, "analysis.min_samples", "must be an integer"),
        ({"min_samples": True}, "analysis.min_samples", "must be an integer"),
        ({"failure_limit": -1}, "analysis.failure_limit", "at least 0"),
        ({"steps": "1,5"}, "analysis.steps", "list of percents"),
        ({"steps": 5}, "analysis.steps", "list of percents"),
        ({"steps": [1, 5, "25"]}, "analysis.steps[2]", "must be a number"),
        ({"steps": [1, 5, 5]}, "analysis.steps[2]", "strictly ascending"),
        ({"steps": [1, 25, 5]}, "analysis.steps[2]", "strictly ascending"),
        ({"steps": [0, 5]}, "analysis.steps[0]", "above 0"),
        ({"steps": [-1]}, "analysis.steps[0]", "between 0 and 100"),
        ({"steps": [5, 100.5]}, "analysis.steps[1]", "between 0 and 100"),
        ({"steps": [1, 2.005]}, "analysis.steps[1]", "steps of 0.01"),
        ({"steps": [5, 25, 100]}, "analysis.steps[2]", "below 100 percent"),
        ({"steps": [100]}, "analysis.steps[0]", "promoted when the last step passes"),
        ({"alpha": 0}, "analysis.alpha", "above 0"),
        ({"alpha": 0.6}, "analysis.alpha", "at most 0.5"),
        ({"thresholds": None}, "analysis.thresholds", "must be an object"),
        ({"thresholds": {"p99": 2}}, "analysis.thresholds.p99", "unknown field 'p99'"),
        (
            {"thresholds": {"p95_latency_ratio": 0.9}},
            "analysis.thresholds.p95_latency_ratio",
            "at least 1",
        ),
        (
            {"thresholds": {"p95_ttft_ratio": "fast"}},
            "analysis.thresholds.p95_ttft_ratio",
            "must be a number",
        ),
        (
            {"thresholds": {"error_rate_increase": 2}},
            "analysis.thresholds.error_rate_increase",
            "between 0 and 1",
        ),
        (
            {"thresholds": {"length_finish_increase": -0.1}},
            "analysis.thresholds.length_finish_increase",
            "between 0 and 1",
        ),
        (
            {"thresholds": {"answer_length_drift": 0}},
            "analysis.thresholds.answer_length_drift",
            "above 0",
        ),
        (
            {"thresholds": {"shadow_divergence": "yes"}},
            "analysis.thresholds.shadow_divergence",
            "true, false or null",
        ),
        (
            {"thresholds": {"feedback_drop": "thumbs_up"}},
            "analysis.thresholds.feedback_drop",
            "must be an object",
        ),
        (
            {"thresholds": {"feedback_drop": {"name": "thumbs_up"}}},
            "analysis.thresholds.feedback_drop.max_drop",
            "needs 'max_drop'",
        ),
        (
            {"thresholds": {"feedback_drop": {"max_drop": 0.1}}},
            "analysis.thresholds.feedback_drop.name",
            "needs 'name'",
        ),
        (
            {"thresholds": {"feedback_drop": {"name": "a b", "max_drop": 0.1}}},
            "analysis.thresholds.feedback_drop.name",
            "letters, digits",
        ),
        (
            {"thresholds": {"feedback_drop": {"name": "x", "max_drop": -1}}},
            "analysis.thresholds.feedback_drop.max_drop",
            "at least 0",
        ),
        (
            {"thresholds": {"feedback_drop": {"name": "x", "max_drop": 1, "min": 0}}},
            "analysis.thresholds.feedback_drop.min",
            "unknown field 'min'",
        ),
    ],
)
def test_each_refusal_names_its_field(data: Any, param: str, says: str) -> None:
    with pytest.raises(PolicyError) as info:
        AnalysisPolicy.from_dict(data)
    assert info.value.param == param
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_policy_built_in_code_is_checked_too() -> None:
    with pytest.raises(PolicyError) as info:
        AnalysisPolicy(steps=(500, 100))
    assert info.value.param == "analysis.steps[1]"
    with pytest.raises(PolicyError) as info:
        Thresholds(feedback_name="thumbs_up")
    assert info.value.param == "analysis.thresholds.feedback_drop.max_drop"


def test_a_step_of_100_percent_is_refused_in_code_too() -> None:
    """At 100 % stable serves nobody: a verdict there would judge leftovers."""
    with pytest.raises(PolicyError) as info:
        AnalysisPolicy(steps=(500, 10_000))
    assert info.value.param == "analysis.steps[1]"
    assert "below 100 percent" in str(info.value)


def test_a_stored_last_step_of_100_percent_is_dropped_so_old_rollouts_still_load() -> None:
    """Rollouts started before the refusal carry a last step of 100: the registry must still
    read them, and their ramp ends where promotion now follows."""
    stored = AnalysisPolicy(steps=(500, 2500)).to_dict() | {"steps": [5.0, 25.0, 100.0]}
    assert AnalysisPolicy.from_stored(stored).steps == (500, 2500)
    assert AnalysisPolicy.from_stored({"steps": [100]}).steps == ()
    with pytest.raises(PolicyError):
        AnalysisPolicy.from_dict(stored)


def test_a_policy_without_the_judge_check_is_stored_as_before_it_existed() -> None:
    # A replica of the release before refuses an unknown key in a stored policy, and would
    # stop following the registry: the key is written only when the check is used.
    stored = AnalysisPolicy.from_dict({"interval": 60}).to_dict()
    assert "judge_drop" not in stored["thresholds"]
    judged = AnalysisPolicy.from_dict({"thresholds": {"judge_drop": {"max_drop": 0.1}}})
    assert judged.to_dict()["thresholds"]["judge_drop"] == {"max_drop": 0.1}
