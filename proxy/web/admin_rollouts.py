"""Admin API handlers for rollouts: call RegistryService, build the answer's model.

PUT    /admin/v1/prompts/{slug}/rollout          start, or change the percentage
GET    /admin/v1/prompts/{slug}/rollout          the running rollout (404 if none), with
                                                 its analysis state
DELETE /admin/v1/prompts/{slug}/rollout          abort: all traffic back to stable
POST   /admin/v1/prompts/{slug}/rollout/promote  the candidate becomes prod; ends it
GET    /admin/v1/prompts/{slug}/rollout/series   a rollout's pooled counts per arm, one
                                                 point per step (the console's charts)
GET    /admin/v1/prompts/{slug}/analysis         the latest analysed rollout's verdicts
GET    /admin/v1/rollouts                        every running rollout, with its last
                                                 verdict (``analysis_summary``)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from proxy.analysis import series
from proxy.config import EvalsConfig
from proxy.errors import InvalidRequest, NotFound, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy, PolicyError
from proxy.registry.lifecycle import ROLLOUT_START_ACTION
from proxy.registry.models import Rollout, RolloutMode, RolloutSegment
from proxy.services import Services
from proxy.web import admin_models as api
from proxy.web import admin_wait
from proxy.web.admin_api import check_storable
from proxy.web.admin_endpoint import Call, NoBody, Reply
from proxy.web.admin_params import (
    LATEST,
    AbortQuery,
    NoParams,
    SeriesQuery,
    SlugPath,
    WaitQuery,
)

_log = logging.getLogger(APP_LOGGER)

#: Audit entries read per page while looking for a rollout's start.
_AUDIT_PAGE = 500


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
    try:
        state = await services.analysis.status(rollout)
    except Exception as exc:  # the analysis state or the lease: as the series route's pool
        raise ServiceUnavailable(f"The analysis state is unavailable: {exc}") from exc
    return api.RolloutStatus.model_validate(
        {**_view(rollout, await _prod_of(services, key)), "analysis_state": state}
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


async def _started_mode(services: Services, key: PromptKey, rollout_id: str) -> str | None:
    """The mode a rollout started in, from its start's audit entry; None if none says."""
    before: int | None = None
    while True:
        page = await services.registry.audit(key, _AUDIT_PAGE, before)
        for entry in page:  # newest first: a recent rollout is found on the first page
            detail = entry.detail or {}
            if entry.action == ROLLOUT_START_ACTION and detail.get("rollout_id") == rollout_id:
                mode = detail.get("mode")
                return mode if isinstance(mode, str) else RolloutMode.CANARY.value
        if len(page) < _AUDIT_PAGE:
            return None
        before = page[-1].seq


async def _charted(services: Services, key: PromptKey, wanted: str | None) -> tuple[str, str]:
    """The id and mode of the rollout ``wanted`` names (None or ``latest``: the running
    one, else the last), or a 404: the prompt is unknown, never had a rollout, or had none
    of that id."""
    latest = await services.registry.latest_rollout(key)  # a 404 for an unknown prompt
    if latest is None:
        raise NotFound(
            f"{key} has had no rollout, so it has no series.",
            param="rollout",
            code="rollout_not_found",
        )
    rollout_id = latest[0] if wanted is None or wanted == LATEST else wanted
    if latest == (rollout_id, True):
        try:
            return rollout_id, (await services.registry.get_rollout(key)).mode.value
        except NotFound:
            pass  # it ended since: its start's audit entry says its mode
    mode = await _started_mode(services, key, rollout_id)
    if mode is None:
        raise NotFound(
            f"{key} has had no rollout {rollout_id!r}.",
            param="rollout",
            code="rollout_not_found",
        )
    return rollout_id, mode


async def rollout_series(call: Call[SlugPath, SeriesQuery, NoBody]) -> api.RolloutSeries:
    """The rollout's pooled counts (every replica's, as the verdicts read them), one point
    per ``step`` seconds and arm, over the last ``since``."""
    key, query, services = call.path.key, call.query, call.services
    since, step = query.seconds, query.step_seconds  # a 400 before any store read
    rollout_id, mode = await _charted(services, key, query.rollout)
    now = time.time()
    cut = series.span(now, since, step)
    try:
        # Only what is not settled yet, or not kept yet, comes from the pool.
        slots = await services.series.read(services.backend.pool, key, rollout_id, cut, now)
    except Exception as exc:  # whatever the store raised: the pool cannot be read now
        raise ServiceUnavailable(f"The analysis pool is unavailable: {exc}") from exc
    arms = series.series_arms(mode, {arm for by_arm in slots.values() for arm in by_arm})
    return api.RolloutSeries.model_validate(
        {
            "slug": key.text,
            "rollout_id": rollout_id,
            "mode": mode,
            "start": cut.start,
            "end": cut.end,
            "step": cut.step,
            "arms": arms,
            "points": series.bucket(slots, arms, cut),
        }
    )


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
    """Every running rollout with its last verdict. The summaries are read at once (one
    state read per rollout with a policy); one that cannot be read leaves its item without
    ``analysis_summary`` and sets ``analysis_unavailable``, and the list still answers: it
    is what an operator reads during an incident, and the registry answered."""
    services = call.services
    rollouts = await services.registry.list_rollouts()
    summaries = await asyncio.gather(
        *(services.analysis.summary(r) for r in rollouts), return_exceptions=True
    )
    items: list[dict[str, Any]] = []
    failed: list[tuple[Rollout, Exception]] = []
    for rollout, summary in zip(rollouts, summaries, strict=True):
        item = rollout.to_dict()
        if isinstance(summary, Exception):
            failed.append((rollout, summary))
        elif isinstance(summary, BaseException):
            raise summary  # a cancellation or an exit is not the store's answer
        else:
            item["analysis_summary"] = summary
        items.append(item)
    if failed:
        rollout, exc = failed[0]
        _log.warning(
            "rollouts listed without the analysis summary of %d (first: %s): %s",
            len(failed),
            rollout.key,
            exc,
        )
    return api.RolloutList.model_validate({"data": items, "analysis_unavailable": bool(failed)})
