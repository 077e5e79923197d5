"""Admin API for rollouts: parse JSON, call RegistryService, serialize. Nothing else.

PUT    /admin/v1/prompts/{slug}/rollout          start, or change the percentage
GET    /admin/v1/prompts/{slug}/rollout          the running rollout (404 if none), with
                                                 its analysis state
DELETE /admin/v1/prompts/{slug}/rollout          abort: all traffic back to stable
POST   /admin/v1/prompts/{slug}/rollout/promote  the candidate becomes prod; ends it
GET    /admin/v1/rollouts                        every running rollout
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.errors import InvalidRequest, NotFound
from proxy.registry.analysis_policy import AnalysisPolicy, PolicyError
from proxy.registry.models import Rollout, RolloutMode
from proxy.registry.service import check_slug
from proxy.web import admin_wait
from proxy.web.admin_api import (
    PREFIX,
    Body,
    Count,
    actor_of,
    check_storable,
    json_response,
    parse_body,
    services_of,
)


class RolloutIn(Body):
    candidate: Count
    mode: RolloutMode
    #: 0 to 100 in steps of 0.01; validated by the service so the message is the same for
    #: every front end.
    percent: float
    #: `header:<name>`, `user`, `tenant` or `none`. Omitted: `none` for a new rollout, the
    #: running rollout's key for a percentage change.
    sticky: str | None = None
    #: Automated-analysis policy (``AnalysisPolicy`` JSON shape). Omitted on a percentage
    #: change: the running rollout's policy stays. Parsed by ``AnalysisPolicy.from_dict``,
    #: not pydantic, so every front end gets the same messages and param paths.
    analysis: dict[str, Any] | None = None
    reason: str = ""


class ReasonIn(Body):
    reason: str = ""


def _view(rollout: Rollout, prod: int | None) -> dict[str, object]:
    return {**rollout.to_dict(), "prod_version": prod}


async def _prod_of(request: web.Request, slug: str) -> int | None:
    summary, _ = await services_of(request).registry.get_prompt(slug)
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


async def put_rollout(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    slug = request.match_info["slug"]
    body = await parse_body(request, RolloutIn)
    services = services_of(request)
    policy = _policy(body.analysis)
    _check_feedback(policy, body.mode, services.settings.config.feedback.names)
    wait = admin_wait.wait_of(request)
    change = await services.registry.set_rollout(
        slug,
        body.candidate,
        body.mode,
        body.percent,
        body.sticky,
        actor,
        body.reason,
        analysis=policy,
    )
    view = _view(change.rollout, await _prod_of(request, slug))
    view["audit"] = None if change.audit is None else change.audit.to_dict()
    view["served"] = await admin_wait.served(request, wait)
    return json_response(view, 201 if change.started else 200)


async def get_rollout(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    slug = request.match_info["slug"]
    services = services_of(request)
    rollout = await services.registry.get_rollout(slug)
    view = _view(rollout, await _prod_of(request, slug))
    view["analysis_state"] = await services.analysis.status(rollout)
    return json_response(view)


async def get_analysis(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    slug = request.match_info["slug"]
    check_slug(slug)
    last = await services_of(request).analysis.last(slug)
    if last is None:
        raise NotFound(
            f"No rollout of {slug!r} has been analysed (or its verdicts expired).",
            param="slug",
            code="analysis_not_found",
        )
    return json_response(last)


async def delete_rollout(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    body = await parse_body(request, ReasonIn)
    wait = admin_wait.wait_of(request)
    entry = await services_of(request).registry.abort_rollout(
        request.match_info["slug"], actor, body.reason or request.query.get("reason", "")
    )
    return json_response({**entry.to_dict(), "served": await admin_wait.served(request, wait)})


async def promote_rollout(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    body = await parse_body(request, ReasonIn)
    wait = admin_wait.wait_of(request)
    entry = await services_of(request).registry.promote_rollout(
        request.match_info["slug"], actor, body.reason
    )
    return json_response({**entry.to_dict(), "served": await admin_wait.served(request, wait)})


async def list_rollouts(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    rollouts = await services_of(request).registry.list_rollouts()
    return json_response({"data": [r.to_dict() for r in rollouts]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put(f"{PREFIX}/prompts/{{slug}}/rollout", put_rollout)
    r.add_get(f"{PREFIX}/prompts/{{slug}}/rollout", get_rollout)
    r.add_get(f"{PREFIX}/prompts/{{slug}}/analysis", get_analysis)
    r.add_delete(f"{PREFIX}/prompts/{{slug}}/rollout", delete_rollout)
    r.add_post(f"{PREFIX}/prompts/{{slug}}/rollout/promote", promote_rollout)
    r.add_get(f"{PREFIX}/rollouts", list_rollouts)
