"""The gates' rules on stored eval runs (proxy/evals/gates.py), the per-slug policy of the
config's `gates` section, and the registry's refusal and override (proxy/registry/gates.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, GatePolicyConfig, GatesConfig
from proxy.errors import Conflict, InvalidRequest
from proxy.evals.gates import EvalGates, gate_problems
from proxy.evals.runs import EvalRun, EvalRunsUnavailable, RunList
from proxy.prompt_key import PromptKey
from proxy.registry.gates import GateProblem, check_override_reason, gated_reason
from tests.support import make_settings

NOW = 1_800_000_000.0
HOUR = 3600.0
KEY = PromptKey("support")
BOTH = GatePolicyConfig.model_validate(
    {"require": ["eval", "judge"], "judge": {"min_score": 0.7, "max_drop": 0.05}}
)


def run(
    candidate: int = 2,
    baseline: int | None = 1,
    *,
    run_id: str = "r-new",
    age_hours: float = 1.0,
    pass_rate: float = 1.0,
    difference: float = 0.0,
    judge: float | None = 0.9,
    prod_judge: float | None = 0.9,
    kind: str = "eval",
    drift: dict[str, Any] | None = None,
) -> EvalRun:
    candidate_side: dict[str, Any] = {"version": candidate, "pass_rate": pass_rate, "samples": 30}
    summary: dict[str, Any] = {"candidate": candidate_side}
    if judge is not None:
        candidate_side["judge"] = {"mean": judge, "n": 30}
    if baseline is not None:
        summary["baseline"] = {"version": baseline, "pass_rate": 1.0}
        summary["difference"] = {"value": difference, "interval": [difference, difference]}
        if prod_judge is not None:
            summary["baseline"]["judge"] = {"mean": prod_judge, "n": 10}
            if judge is not None:
                summary["judge_difference"] = {"value": judge - prod_judge, "interval": [0, 0]}
    if drift is not None:
        summary["drift"] = drift
    finished = NOW - age_hours * HOUR
    return EvalRun(
        id=run_id,
        slug=str(KEY),
        candidate=candidate,
        baseline=baseline,
        kind=kind,
        actor="admin",
        started_at=finished - 60,
        finished_at=finished,
        suite_name="support.eval.yaml",
        suite_sha256="0" * 64,
        judges=(),
        passed=True,
        summary=summary,
        detail={},
    )


def problems(
    runs: list[EvalRun], prod: int | None = 1, policy: GatePolicyConfig = BOTH
) -> list[str]:
    return [p.describe() for p in gate_problems(policy, KEY, 2, prod, runs, NOW)]


def test_a_passing_run_passes_both_gates() -> None:
    assert problems([run()]) == []


def test_no_run_fails_every_required_gate_and_says_what_to_run() -> None:
    assert problems([]) == [
        "eval: no eval run of v2 against prod v1 in the last 168 h; "
        "run `promptproxy eval support --candidate 2`",
        "judge: no eval run of v2 against prod v1 in the last 168 h; "
        "run `promptproxy eval support --candidate 2`",
    ]


def test_runs_of_other_versions_and_kinds_do_not_count() -> None:
    others = [run(candidate=3), run(kind="replay")]
    assert problems(others)[0].startswith("eval: no eval run of v2 against prod v1")


def test_a_run_older_than_max_age_does_not_count() -> None:
    said = problems([run(age_hours=200)])
    assert said[0] == (
        "eval: no eval run of v2 against prod v1 in the last 168 h (the newest, r-new, "
        "finished 200 h ago); run `promptproxy eval support --candidate 2`"
    )
    policy = BOTH.model_copy(update={"eval": BOTH.eval.model_copy(update={"max_age_hours": 300})})
    assert problems([run(age_hours=200)], policy=policy) == []


def test_a_run_against_another_baseline_does_not_count() -> None:
    said = problems([run(baseline=3)])
    assert "(the newest, r-new, is against v3)" in said[0]
    assert "(the newest, r-new, is against none)" in problems([run(baseline=None)])[0]


def test_without_prod_any_baseline_counts_and_the_command_says_baseline_none() -> None:
    assert problems([run(baseline=None, judge=0.8)], prod=None) == []
    said = problems([], prod=None)
    assert said[0] == (
        "eval: no eval run of v2 in the last 168 h; "
        "run `promptproxy eval support --candidate 2 --baseline none`"
    )


def test_the_command_names_the_variant() -> None:
    key = PromptKey("support", variant="claude")
    (said, _) = gate_problems(BOTH, key, 2, 1, [], NOW)
    assert said.message.endswith("run `promptproxy eval support --candidate 2 --variant claude`")


def test_the_newest_run_counts_even_if_an_older_one_passed() -> None:
    older = run(run_id="r-old", age_hours=5)
    newer = run(run_id="r-new", age_hours=1, pass_rate=0.8)
    assert problems([older, newer]) == ["eval: run r-new: pass rate 80.0% < 100.0%"]


def test_a_failing_pass_rate_is_named() -> None:
    policy = BOTH.model_copy(update={"require": ("eval",)})
    assert problems([run(pass_rate=0.9)], policy=policy) == [
        "eval: run r-new: pass rate 90.0% < 100.0%"
    ]


def test_a_drop_against_prod_beyond_max_drop_is_named() -> None:
    policy = GatePolicyConfig.model_validate(
        {"require": ["eval"], "eval": {"min_pass_rate": 0.5, "max_drop": 0.1}}
    )
    assert problems([run(pass_rate=0.8, difference=-0.1)], policy=policy) == []
    assert problems([run(pass_rate=0.8, difference=-0.2)], policy=policy) == [
        "eval: run r-new: pass rate 20.0 pp below prod v1's, more than the 10.0 pp allowed"
    ]


def test_a_judge_score_below_the_minimum_is_named() -> None:
    assert problems([run(judge=0.61, prod_judge=None)]) == [
        "judge: run r-new: judge score 0.61 < 0.70"
    ]


def test_a_judge_drop_against_prod_is_named_even_above_the_minimum() -> None:
    assert problems([run(judge=0.78, prod_judge=0.9)]) == [
        "judge: run r-new: judge score 0.78 is 0.12 below prod v1's (0.90), more than the "
        "0.05 allowed"
    ]
    assert problems([run(judge=0.86, prod_judge=0.9)]) == []


def test_the_seed_incident_every_assertion_passes_but_the_judge_scores_lower() -> None:
    said = problems([run(pass_rate=1.0, difference=0.0, judge=0.6, prod_judge=0.9)])
    assert said == [
        "judge: run r-new: judge score 0.60 < 0.70",
        "judge: run r-new: judge score 0.60 is 0.30 below prod v1's (0.90), more than the "
        "0.05 allowed",
    ]


def test_a_run_without_judge_scores_fails_the_judge_gate_only() -> None:
    assert problems([run(judge=None)]) == [
        "judge: run r-new has no judge scores of v2 (its suite has no judge assertions, or "
        "none was scored)"
    ]


def test_nothing_required_is_never_a_problem() -> None:
    assert problems([], policy=GatePolicyConfig()) == []


def test_a_summary_missing_figures_fails_rather_than_passes() -> None:
    broken = EvalRun.from_dict({**run().head_dict(), "summary": {"candidate": {}}})
    assert problems([broken]) == [
        "eval: run r-new has 0 samples of v2, the gate needs 20 (more cases or samples in the "
        "suite)",
        "eval: run r-new: its summary has no candidate pass rate",
        "eval: run r-new: its summary has no difference to v1",
        "judge: run r-new has no judge scores of v2 (its suite has no judge assertions, or "
        "none was scored)",
    ]


class _Runs:
    def __init__(self, runs: RunList | None) -> None:
        self._runs = runs
        self.asked: list[tuple[str, int | None]] = []

    async def list(self, slug: str, *, candidate: int | None = None, limit: int = 50) -> RunList:
        self.asked.append((slug, candidate))
        if self._runs is None:
            raise EvalRunsUnavailable("redis: connection refused")
        return [r for r in self._runs if r.slug == slug and r.candidate == candidate]


def _gates(runs: RunList | None, **gates: Any) -> tuple[EvalGates, _Runs]:
    store = _Runs(runs)
    config = GatesConfig.model_validate(gates)
    return EvalGates(config, store, clock=lambda: NOW), store  # type: ignore[arg-type]


async def test_eval_gates_read_the_keys_runs_and_apply_its_policy() -> None:
    gates, store = _gates([run(judge=0.6)], default={"require": ["judge"]})
    assert [p.gate for p in await gates.problems(KEY, 2, 1)] == ["judge"]
    assert store.asked == [("support", 2)]


async def test_a_store_that_cannot_be_read_fails_each_required_gate() -> None:
    gates, _ = _gates(None, default={"require": ["eval", "judge"]})
    found = await gates.problems(KEY, 2, 1)
    assert [p.describe() for p in found] == [
        "eval: the stored eval runs could not be read (redis: connection refused)",
        "judge: the stored eval runs could not be read (redis: connection refused)",
    ]


async def test_overrides_and_ungated_slugs_are_not_read() -> None:
    gates, store = _gates([], slugs=[{"match": "billing-*", "require": ["eval"]}])
    assert await gates.problems(KEY, 2, 1) == []
    override = PromptKey.parse("tier=pro/billing-faq")
    assert override.layer is not None
    assert await gates.problems(override, 2, 1) == []
    assert store.asked == []
    assert [p.gate for p in await gates.problems(PromptKey("billing-faq"), 2, 1)] == ["eval"]


def test_the_first_matching_slug_policy_wins_over_the_default() -> None:
    config = GatesConfig.model_validate(
        {
            "default": {"require": ["eval"], "judge": {"min_score": 0.5}},
            "slugs": [
                {"match": "support-vip", "require": []},
                {"match": "support-*", "require": ["eval", "judge"]},
                {"match": "*", "require": ["judge"]},
            ],
        }
    )
    assert config.policy_for("support-vip").require == ()
    support = config.policy_for("support-reply")
    assert support.require == ("eval", "judge")
    assert support.judge.min_score == 0.5  # the default policy's, the rule left it out
    assert config.policy_for("billing").require == ("judge",)
    assert GatesConfig().policy_for("anything").require == ()


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ({"default": {"require": ["safety"]}}, "gates.default.require: 'safety' is the `safety`"),
        ({"default": {"require": ["evals"]}}, "gates.default.require: no gate 'evals'"),
        ({"default": {"require": ["eval", "eval"]}}, "gates.default.require: each gate is listed"),
        ({"default": {"eval": {"min_pass_rate": 1.5}}}, "gates.default.eval.min_pass_rate: "),
        ({"default": {"eval": {"max_age_hours": 0}}}, "gates.default.eval.max_age_hours: "),
        ({"slugs": [{"match": "a*", "judge": {"max_drop": -1}}]}, "gates.slugs.0.judge.max_drop"),
        ({"slugs": [{"match": "a/b"}]}, "gates.slugs.0.match: "),
        ({"slugs": [{"require": ["eval"]}]}, "gates.slugs.0.match: "),
        ({"default": {"requires": ["eval"]}}, "gates.default.requires: "),
    ],
)
def test_a_bad_gates_section_names_the_key(section: dict[str, Any], said: str) -> None:
    overrides = {f"gates.{name}": value for name, value in section.items()}
    with pytest.raises(ConfigError) as raised:
        make_settings(**overrides)
    assert any(problem.startswith(said) for problem in raised.value.problems), raised.value


def test_the_refusal_names_each_problem_and_the_override_audits_them() -> None:
    found = [GateProblem("eval", "no run"), GateProblem("judge", "score 0.6 < 0.7")]
    with pytest.raises(Conflict) as refused:
        gated_reason(KEY, 2, found, False, "", "promote")
    assert refused.value.code == "gates_not_passed"
    assert "support v2 has not passed its gates: eval: no run; judge: score 0.6 < 0.7." in str(
        refused.value
    )
    assert gated_reason(KEY, 2, found, True, "CR-7", "promote") == (
        "CR-7 [gates overridden: eval: no run; judge: score 0.6 < 0.7]"
    )
    assert gated_reason(KEY, 2, [], False, "CR-7", "promote") == "CR-7"
    with pytest.raises(InvalidRequest):
        check_override_reason(True, "  ")
    check_override_reason(False, "")


DRIFT = GatePolicyConfig.model_validate({"require": ["drift"]})


def _drift(result: str, *failed: str) -> dict[str, Any]:
    measures = [{"measure": m, "result": "fail"} for m in failed]
    measures.append({"measure": "finish_reason_changed", "result": "pass"})
    return {"result": result, "candidate_pairs": 6, "noise_pairs": 6, "measures": measures}


def test_the_drift_gate_reads_the_runs_drift_verdict() -> None:
    assert problems([run(drift=_drift("pass"))], policy=DRIFT) == []
    assert problems([run(drift=_drift("fail", "length_drift", "text_distance"))], policy=DRIFT) == [
        "drift: run r-new: answers drift from prod v1's beyond its own noise "
        "(length_drift, text_distance)"
    ]
    (inconclusive,) = problems([run(drift=_drift("inconclusive"))], policy=DRIFT)
    assert "too few pairs" in inconclusive
    assert "raise the suite's samples" in inconclusive
    (unmeasured,) = problems([run()], policy=DRIFT)
    assert "no drift verdict" in unmeasured


def test_a_run_too_small_to_prove_anything_does_not_open_the_gates() -> None:
    small = run()
    small = EvalRun.from_dict(
        {
            **small.to_dict(),
            "summary": {
                **small.summary,
                "candidate": {
                    **small.summary["candidate"],
                    "samples": 3,
                    "judge": {"mean": 1.0, "n": 3},
                },
            },
        }
    )
    found = problems([small])
    assert "eval: run r-new has 3 samples of v2, the gate needs 20" in found[0]
    assert any(
        p.startswith("judge: run r-new has 3 judge scores of v2, the gate needs 20") for p in found
    )
