"""Admin API handlers for prompts, versions and the audit log: call RegistryService, build
the answer's model. Access, parameters and bodies are declared in the route table
(``admin_routes``) and checked before a handler runs."""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest, ServiceUnavailable
from proxy.prompt_key import PromptKey
from proxy.registry.models import BlockSpec, VariableSpec, VersionDraft, unstorable_value
from proxy.web import admin_models as api
from proxy.web import admin_wait
from proxy.web.admin_endpoint import Call, NoBody, Reply
from proxy.web.admin_params import (
    AuditQuery,
    DiffQuery,
    ExplainPath,
    ExplainQuery,
    HistoryQuery,
    NoParams,
    SlugPath,
    VersionPath,
    WaitQuery,
    instant,
)

#: Most audit entries one call returns.
MAX_AUDIT_PAGE = 1000


def check_storable(value: Any, path: str) -> None:
    """400 naming the place when a JSON value holds something a version cannot keep faithfully
    (see ``unstorable_value``); pydantic's JSON parser accepts NaN, Infinity and big integers."""
    found = unstorable_value(value, path)
    if found is not None:
        where, why = found
        raise InvalidRequest(f"Invalid request body: {where}: {why}.", param=where)


def _draft(key: PromptKey, body: api.VersionIn, actor: str) -> VersionDraft:
    check_storable(body.params, "params")
    check_storable(body.defaults, "defaults")
    check_storable(body.param_bounds, "param_bounds")
    for index, variable in enumerate(body.variables):
        check_storable(variable.default, f"variables[{index}].default")
    if key.layer is None and not body.template:
        raise InvalidRequest(
            "Invalid request body: template: a base version needs a template (an override "
            "of a tier or tenant, addressed with tier= or tenant=, has none).",
            param="template",
        )
    return VersionDraft(
        key=key,
        template=body.template,
        variables=tuple(
            VariableSpec(v.name, v.type, v.default, has_default="default" in v.model_fields_set)
            for v in body.variables
        ),
        model=body.model,
        params=body.params,
        author=body.author or actor,
        changelog=body.changelog,
        caller_system=body.caller_system,
        blocks=tuple(BlockSpec(name, b.default, b.max_chars) for name, b in body.blocks.items()),
        param_bounds={name: (pair[0], pair[1]) for name, pair in body.param_bounds.items()},
        fills=dict(body.fills),
        defaults=dict(body.defaults),
        match=tuple(body.match),
    )


async def create_version(
    call: Call[SlugPath, WaitQuery, api.VersionIn],
) -> Reply[api.VersionCreated]:
    draft = _draft(call.path.key, call.body, call.actor)
    wait = admin_wait.start(call.query.wait)
    registry = call.services.registry
    version, created = await registry.push(draft, call.actor)
    try:
        fit = await registry.override_fit(version.key, version.version)
    except ServiceUnavailable:
        # The version is saved; only the report could not be read (promote checks again).
        fit = None
    answer = api.VersionCreated(
        created=created,
        version=api.Version.model_validate(version.to_dict()),
        served=await admin_wait.served(call.services, wait),
        overrides=None
        if fit is None
        else api.OverrideFit(
            base=fit.base,
            checked=fit.checked,
            broken=[
                api.OverrideBreakage(layer=b.layer, problems=list(b.problems)) for b in fit.broken
            ],
        ),
    )
    return Reply(answer, 201 if created else 200)


async def list_prompts(call: Call[NoParams, NoParams, NoBody]) -> api.PromptList:
    prompts = await call.services.registry.list_prompts()
    return api.PromptList.model_validate({"data": [p.to_dict() for p in prompts]})


async def get_prompt(call: Call[SlugPath, NoParams, NoBody]) -> api.Prompt:
    summary, versions = await call.services.registry.get_prompt(call.path.key)
    return api.Prompt.model_validate({**summary.to_dict(), "data": [v.to_dict() for v in versions]})


async def get_version(call: Call[VersionPath, NoParams, NoBody]) -> api.Version:
    version = await call.services.registry.get_version(call.path.key, call.path.version)
    return api.Version.model_validate(version.to_dict())


async def promote(call: Call[SlugPath, WaitQuery, api.PromoteIn]) -> api.AuditWritten:
    wait = admin_wait.start(call.query.wait)
    body = call.body
    entry = await call.services.registry.promote(
        call.path.key,
        body.version,
        call.actor,
        body.reason,
        force=body.force,
        override_gates=body.override_gates,
    )
    return await admin_wait.written(call.services, entry, wait)


async def rollback(call: Call[SlugPath, WaitQuery, api.ReasonIn]) -> api.AuditWritten:
    wait = admin_wait.start(call.query.wait)
    entry = await call.services.registry.rollback(call.path.key, call.actor, call.body.reason)
    return await admin_wait.written(call.services, entry, wait)


async def history(call: Call[SlugPath, HistoryQuery, NoBody]) -> api.History:
    registry = call.services.registry
    key, at = call.path.key, call.query.at
    if at is not None:
        state = await registry.state_at(key, instant(at))
        return api.History(
            api.ServedAt(
                slug=key.text,
                at=at,
                prod_version=state.prod_version,
                rollout=None
                if state.rollout is None
                else api.RolloutAt.model_validate(state.rollout.to_dict()),
            )
        )
    await registry.get_prompt(key)
    entries = await registry.audit(key, limit=call.query.limit)
    return api.History(api.AuditPage.model_validate({"data": [e.to_dict() for e in entries]}))


async def audit(call: Call[NoParams, AuditQuery, NoBody]) -> api.AuditPage:
    query = call.query
    entries = await call.services.registry.audit(
        query.key, limit=min(query.limit, MAX_AUDIT_PAGE), before_seq=query.before
    )
    return api.AuditPage.model_validate({"data": [e.to_dict() for e in entries]})


async def explain(call: Call[ExplainPath, ExplainQuery, NoBody]) -> api.Explain:
    query = call.query
    found = await call.services.registry.explain(
        call.path.slug, query.tenant, query.tier, query.version, query.model
    )
    return api.Explain(
        slug=found.slug,
        tenant=found.tenant,
        tier=found.tier,
        layers=found.layers,
        messages=[
            api.ExplainedMessage(role="system", layer=layer, text=text)
            for layer, text in found.messages
        ],
        segments=[
            api.ExplainedSegment(layer=s.layer, block=s.block, text=s.text) for s in found.segments
        ],
        params={
            name: api.ExplainedParam(value=value, layer=layer)
            for name, (value, layer) in found.params.items()
        },
        model=found.model,
        variables=found.variables,
        ignored=found.ignored,
    )


async def diff(call: Call[SlugPath, DiffQuery, NoBody]) -> api.Diff:
    text = await call.services.registry.diff(call.path.key, call.query.from_, call.query.to)
    return api.Diff(diff=text)
