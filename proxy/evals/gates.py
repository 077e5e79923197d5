"""``EvalGates``: the registry's ``GateCheck`` answered from stored eval runs
(docs/gates.md).

Both gates read one run: the newest eval run of the version against the current prod (any
baseline, or none, while the prompt has no prod) that finished within
``gates.*.eval.max_age_hours``. The newest, not the best: a run that passed last week says
little once a newer one of the same version against the same prod has failed.

- ``eval``: its candidate pass rate is at least ``min_pass_rate``, and its difference to
  prod's pass rate is no lower than ``-max_drop``;
- ``judge``: it has judge scores, their mean is at least ``min_score``, and (when prod was
  scored in the same run) no more than ``max_drop`` below prod's.

The rules are pure functions of the runs (``gate_problems``); ``EvalGates`` only reads the
store, and a store it cannot read fails each required gate, saying so (a 409 an operator
can override, not a 500).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config import GatePolicyConfig, GatesConfig
from proxy.evals.runs import EvalRun, EvalRunError, EvalRunStore
from proxy.prompt_key import PromptKey
from proxy.registry.gates import GateProblem
from proxy.registry.store import StoreUnavailable

#: Runs of one version read to find the one that counts: newest first, so the fresh ones.
RUNS_READ = 500
#: Figures are means of rates: a limit met exactly must not fail by a rounding error.
_EPSILON = 1e-9


class EvalGates:
    """``GateCheck`` from ``runs`` by ``config``'s policy for each slug."""

    def __init__(
        self,
        config: GatesConfig,
        runs: EvalRunStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._runs = runs
        self._clock = clock

    async def problems(self, key: PromptKey, version: int, prod: int | None) -> list[GateProblem]:
        # An eval run is of a base or variant line (an override is run as its tenant, on
        # its base's versions): an override's own versions cannot have one, so are not gated.
        if key.layer is not None:
            return []
        policy = self._config.policy_for(key.slug)
        if not policy.require:
            return []
        try:
            runs = await self._runs.list(str(key), candidate=version, limit=RUNS_READ)
        except (StoreUnavailable, EvalRunError) as exc:
            return [
                GateProblem(gate, f"the stored eval runs could not be read ({exc})")
                for gate in policy.require
            ]
        return gate_problems(policy, key, version, prod, runs, self._clock())


def gate_problems(
    policy: GatePolicyConfig,
    key: PromptKey,
    version: int,
    prod: int | None,
    runs: Sequence[EvalRun],
    now: float,
) -> list[GateProblem]:
    """Every problem of the gates ``policy`` requires, in its order, for ``version`` of
    ``key`` given ``runs`` (any order; others than the version's are ignored)."""
    if not policy.require:
        return []
    run = counting_run(runs, version, prod, policy.eval.max_age_hours, now)
    if run is None:
        missing = _missing(runs, key, version, prod, policy.eval.max_age_hours, now)
        return [GateProblem(gate, missing) for gate in policy.require]
    problems: list[GateProblem] = []
    for gate in policy.require:
        found = _CHECKS[gate](run, policy)
        problems.extend(GateProblem(gate, message) for message in found)
    return problems


def counting_run(
    runs: Sequence[EvalRun], version: int, prod: int | None, max_age_hours: float, now: float
) -> EvalRun | None:
    """The run the gates read: the newest eval run of ``version`` against ``prod`` (any
    baseline when None) finished within ``max_age_hours``, or None."""
    cutoff = now - max_age_hours * 3600
    fitting = [
        run
        for run in _of_version(runs, version)
        if (prod is None or run.baseline == prod)
        and run.finished_at >= cutoff
        and not _as_a_tenant(run)
    ]
    return max(fitting, key=lambda run: run.order, default=None)


def _as_a_tenant(run: EvalRun) -> bool:
    """A run made as a tenant (its overrides composed in) says nothing of the base alone."""
    return bool(run.summary.get("tenant") or run.summary.get("case_tenants"))


def eval_problems(run: EvalRun, policy: GatePolicyConfig) -> list[str]:
    """Why ``run`` does not pass the ``eval`` gate (empty: it does)."""
    limits = policy.eval
    rate = _number(_mapping(run.summary, "candidate"), "pass_rate")
    problems = []
    samples = _number(_mapping(run.summary, "candidate"), "samples") or 0
    if samples < limits.min_samples:
        problems.append(
            f"run {run.id} has {samples:.0f} samples of v{run.candidate}, the gate needs "
            f"{limits.min_samples} (more cases or samples in the suite)"
        )
    if rate is None:
        problems.append(f"run {run.id}: its summary has no candidate pass rate")
    elif rate < limits.min_pass_rate - _EPSILON:
        problems.append(f"run {run.id}: pass rate {rate:.1%} < {limits.min_pass_rate:.1%}")
    if run.baseline is not None:
        drop = _number(_mapping(run.summary, "difference"), "value")
        if drop is None:
            problems.append(f"run {run.id}: its summary has no difference to v{run.baseline}")
        elif drop < -limits.max_drop - _EPSILON:
            problems.append(
                f"run {run.id}: pass rate {-drop * 100:.1f} pp below prod v{run.baseline}'s, "
                f"more than the {limits.max_drop * 100:.1f} pp allowed"
            )
    return problems


def judge_problems(run: EvalRun, policy: GatePolicyConfig) -> list[str]:
    """Why ``run`` does not pass the ``judge`` gate (empty: it does)."""
    limits = policy.judge
    mean = _number(_mapping(_mapping(run.summary, "candidate"), "judge"), "mean")
    if mean is None:
        return [
            f"run {run.id} has no judge scores of v{run.candidate} (its suite has no judge "
            "assertions, or none was scored)"
        ]
    problems = []
    scored = _number(_mapping(_mapping(run.summary, "candidate"), "judge"), "n") or 0
    if scored < limits.min_scores:
        problems.append(
            f"run {run.id} has {scored:.0f} judge scores of v{run.candidate}, the gate needs "
            f"{limits.min_scores}"
        )
    if mean < limits.min_score - _EPSILON:
        problems.append(f"run {run.id}: judge score {mean:.2f} < {limits.min_score:.2f}")
    prod_mean = _number(_mapping(_mapping(run.summary, "baseline"), "judge"), "mean")
    drop = _number(_mapping(run.summary, "judge_difference"), "value")
    if drop is None and prod_mean is not None:
        drop = mean - prod_mean
    if run.baseline is not None and drop is not None and drop < -limits.max_drop - _EPSILON:
        of_prod = "" if prod_mean is None else f" ({prod_mean:.2f})"
        problems.append(
            f"run {run.id}: judge score {mean:.2f} is {-drop:.2f} below prod "
            f"v{run.baseline}'s{of_prod}, more than the {limits.max_drop:.2f} allowed"
        )
    return problems


def drift_problems(run: EvalRun, policy: GatePolicyConfig) -> list[str]:
    """Why ``run`` does not pass the ``drift`` gate: its answers drifted from prod's beyond
    prod's own noise, or there were too few pairs to tell (more samples decide it)."""
    if run.baseline is None:
        return [f"run {run.id} has no baseline, so no drift was measured"]
    found = _mapping(run.summary, "drift")
    result = found.get("result")
    if result == "pass":
        return []
    if result == "fail":
        measures = found.get("measures")
        failed = [
            str(m.get("measure"))
            for m in (measures if isinstance(measures, list) else [])
            if isinstance(m, Mapping) and m.get("result") == "fail"
        ]
        return [
            f"run {run.id}: answers drift from prod v{run.baseline}'s beyond its own noise "
            f"({', '.join(failed)})"
        ]
    if result == "inconclusive":
        return [
            f"run {run.id}: too few pairs to measure drift ({found.get('candidate_pairs')} "
            "candidate pairs): raise the suite's samples"
        ]
    return [f"run {run.id} has no drift verdict"]


_CHECKS = {"eval": eval_problems, "judge": judge_problems, "drift": drift_problems}


def eval_command(key: PromptKey, version: int, prod: int | None) -> str:
    """The command that makes the run a gate reads."""
    variant = f" --variant {key.variant}" if key.variant is not None else ""
    baseline = " --baseline none" if prod is None else ""
    return f"promptproxy eval {key.slug} --candidate {version}{variant}{baseline}"


def _missing(
    runs: Sequence[EvalRun],
    key: PromptKey,
    version: int,
    prod: int | None,
    max_age_hours: float,
    now: float,
) -> str:
    against = "" if prod is None else f" against prod v{prod}"
    said = f"no eval run of v{version}{against} in the last {max_age_hours:g} h"
    own = sorted(_of_version(runs, version), key=lambda run: run.order, reverse=True)
    right_baseline = [run for run in own if prod is None or run.baseline == prod]
    if right_baseline:
        newest = right_baseline[0]
        hours = (now - newest.finished_at) / 3600
        said += f" (the newest, {newest.id}, finished {hours:.0f} h ago)"
    elif own:
        newest = own[0]
        baseline = "none" if newest.baseline is None else f"v{newest.baseline}"
        said += f" (the newest, {newest.id}, is against {baseline})"
    return f"{said}; run `{eval_command(key, version, prod)}`"


def _of_version(runs: Sequence[EvalRun], version: int) -> list[EvalRun]:
    return [run for run in runs if run.kind == "eval" and run.candidate == version]


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    """``value[name]`` when both are objects, else empty: a summary is JSON from a store,
    and a field this code expects may be missing from an older run."""
    if isinstance(value, Mapping):
        inner = value.get(name)
        if isinstance(inner, Mapping):
            return inner
    return {}


def _number(value: Mapping[str, Any], name: str) -> float | None:
    number = value.get(name)
    if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
        return float(number)
    return None
