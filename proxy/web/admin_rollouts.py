"""Admin API handlers for rollouts: call RegistryService, build the answer's model.

PUT    /admin/v1/prompts/{slug}/rollout          start, or change the percentage
GET    /admin/v1/prompts/{slug}/rollout          the running rollout (404 if none), with
                                                 its analysis state
DELETE /admin/v1/prompts/{slug}/rollout          abort: all traffic back to stable
POST   /admin/v1/prompts/{slug}/rollout/promote  the candidate becomes prod; ends it
GET    /admin/v1/prompts/{slug}/analysis         the latest analysed rollout's verdicts
GET    /admin/v1/rollouts                        every running rollout
"""

from __future__ import annotations

from typing import Any

from proxy.config import EvalsConfig
from proxy.errors import InvalidRequest, NotFound
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy, PolicyError
from proxy.registry.models import Rollout, RolloutMode, RolloutSegment
from proxy.services import Services
from proxy.web import admin_models as api
from proxy.web import admin_wait
from proxy.web.admin_api import check_storable
from proxy.web.admin_endpoint import Call, NoBody, Reply
from proxy.web.admin_params import AbortQuery, NoParams, SlugPath, WaitQuery


def _view(rollout: Rollout, prod: int | None) -> dict[str, Any]:
    return {**rollout.to_dict(), "prod_version": prod}


async def _prod_of(services: Services, key: PromptKey) -> int | None:
    summary, _ = await services.registry.get_prompt(key)
    return summary.prod_version


def _policy(raw: dict[str, Any] | None) -> AnalysisPolicy | None:
    if raw is None:
        return None
    # The policy is stored as JSON: a count beyond 64 bits would fail there, after checks.
    check_storable(raw, "analysis")
    try:
        return AnalysisPolicy.from_dict(raw)
    except PolicyError as exc:
        raise InvalidRequest(
            f"Invalid analysis policy: {exc}.", param=exc.param, code="invalid_analysis"
        ) from None


def _segment(body: api.Segment | None) -> RolloutSegment | None:
    if body is None:
        return None
    try:
        return RolloutSegment(tuple(body.tiers), tuple(body.tenants))
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid segment: {exc}.", param="segment", code="invalid_segment"
        ) from None


def _check_feedback(policy: AnalysisPolicy | None, mode: RolloutMode, names: Any) -> None:
    """A feedback check that can never get data would hold the rollout forever: refuse it."""
    name = None if policy is None else policy.thresholds.feedback_name
    if name is None:
        return
    param = "analysis.thresholds.feedback_drop.name"
    if mode is RolloutMode.SHADOW:
        raise InvalidRequest(
            "A shadow rollout serves nobody the candidate, so no feedback can reach it: "
            "drop feedback_drop or use a canary.",
            param=param,
            code="invalid_analysis",
        )
    if name not in names:
        raise InvalidRequest(
            f"Feedback {name!r} is not one this proxy takes (feedback.names: {', '.join(names)}).",
            param=param,
            code="invalid_analysis",
        )


def _check_judge(
    policy: AnalysisPolicy | None, mode: RolloutMode, key: PromptKey, evals: EvalsConfig
) -> None:
    """A judge check that can never get scores would hold the rollout forever: refuse it.
    Only served answers are judged online, and only of slugs ``evals.online`` samples."""
    if policy is None or policy.thresholds.judge_max_drop is None:
        return
    param = "analysis.thresholds.judge_drop"
    if mode is RolloutMode.SHADOW:
        raise InvalidRequest(
            "A shadow rollout serves nobody the candidate, so the online judge never scores "
            "its answers: drop judge_drop or use a canary.",
            param=param,
            code="invalid_analysis",
        )
    if evals.online_share(key.slug) <= 0:
        raise InvalidRequest(
            f"No share of '{key.slug}' is judged online (evals.online), so judge_drop would "
            "never get scores: add a rule for it or drop judge_drop.",
            param=param,
            code="invalid_analysis",
        )


async def put_rollout(call: Call[SlugPath, WaitQuery, api.RolloutIn]) -> Reply[api.RolloutChanged]:
    key, body, services = call.path.key, call.body, call.services
    policy = _policy(body.analysis)
    _check_feedback(policy, body.mode, services.settings.config.feedback.names)
    _check_judge(policy, body.mode, key, services.settings.config.evals)
    wait = admin_wait.start(call.query.wait)
    change = await services.registry.set_rollout(
        key,
        body.candidate,
        body.mode,
        body.percent,
        body.sticky,
        call.actor,
        body.reason,
        analysis=policy,
        force=body.force,
        segment=_segment(body.segment),
        override_gates=body.override_gates,
    )
    answer = api.RolloutChanged.model_validate(
        {
            **_view(change.rollout, await _prod_of(services, key)),
            "audit": None if change.audit is None else change.audit.to_dict(),
            "served": await admin_wait.served(services, wait),
        }
    )
    return Reply(answer, 201 if change.started else 200)


async def get_rollout(call: Call[SlugPath, NoParams, NoBody]) -> api.RolloutStatus:
    key, services = call.path.key, call.services
    rollout = await services.registry.get_rollout(key)
    return api.RolloutStatus.model_validate(
        {
            **_view(rollout, await _prod_of(services, key)),
            "analysis_state": await services.analysis.status(rollout),
        }
    )


async def get_analysis(call: Call[SlugPath, NoParams, NoBody]) -> api.LastAnalysis:
    key = call.path.key
    last = await call.services.analysis.last(key)
    if last is None:
        raise NotFound(
            f"No rollout of {key.text!r} has been analysed (or its verdicts expired).",
            param="slug",
            code="analysis_not_found",
        )
    return api.LastAnalysis.model_validate(last)


async def delete_rollout(call: Call[SlugPath, AbortQuery, api.ReasonIn]) -> api.AuditWritten:
    wait = admin_wait.start(call.query.wait)
    entry = await call.services.registry.abort_rollout(
        call.path.key, call.actor, call.body.reason or call.query.reason
    )
    return await admin_wait.written(call.services, entry, wait)


async def promote_rollout(call: Call[SlugPath, WaitQuery, api.ReasonIn]) -> api.AuditWritten:
    wait = admin_wait.start(call.query.wait)
    entry = await call.services.registry.promote_rollout(
        call.path.key, call.actor, call.body.reason
    )
    return await admin_wait.written(call.services, entry, wait)


async def list_rollouts(call: Call[NoParams, NoParams, NoBody]) -> api.RolloutList:
    rollouts = await call.services.registry.list_rollouts()
    return api.RolloutList.model_validate({"data": [r.to_dict() for r in rollouts]})
