"""Every route of the admin port, in one table: method, path, who may call it, the models
of its parameters, body and answer.

``add_routes`` serves them through ``admin_endpoint.bind`` (which authorizes each call for
its ``access`` before anything else) and ``proxy.web.openapi`` describes them; nothing else
registers an admin route. Routes of one path are listed together (aiohttp keeps them as one
resource, so a 405's ``Allow`` names all of its methods).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.web import (
    admin_api,
    admin_evals,
    admin_fleet,
    admin_health,
    admin_registry,
    admin_rollouts,
    admin_shadow,
    admin_tenants,
    openapi,
)
from proxy.web import admin_models as api
from proxy.web.admin_auth import Access
from proxy.web.admin_endpoint import Call, Endpoint, NoBody, Stream, bind, route
from proxy.web.admin_params import (
    AbortQuery,
    AuditQuery,
    DiffQuery,
    EvalRunPath,
    EvalsQuery,
    ExplainPath,
    ExplainQuery,
    HistoryQuery,
    ImportQuery,
    NoParams,
    PairsQuery,
    ReportQuery,
    SeriesQuery,
    ShadowPath,
    SlugPath,
    TenantPath,
    UsageQuery,
    VersionPath,
    WaitQuery,
)

PREFIX = "/admin/v1"
PUBLIC, READ, WRITE = Access.PUBLIC, Access.READ, Access.WRITE

_METRICS = Stream("text/plain", "Prometheus text format")
_PAIRS = Stream(
    "application/x-ndjson",
    "JSON lines: one ShadowPair object per line (see components.schemas.ShadowPair), "
    "oldest first; with follow, an empty line every ~15 s while idle",
    headers={
        "X-Promptproxy-Rollout": "The rollout whose pairs these are, when `rollout` was given"
    },
)
_EVAL_LINES = Stream(
    "application/x-ndjson",
    "JSON lines: `started` (id, total calls), `progress` (done, total) as samples finish, then "
    "`finished` (run: an EvalRunOut) or `failed` (error); an empty line every ~15 s while quiet",
)
_DOCUMENT = Stream("application/json", "This document", schema={"type": "object"})


async def openapi_json(call: Call[NoParams, NoParams, NoBody]) -> web.Response:
    """The OpenAPI description of ``ROUTES``."""
    return web.Response(
        body=orjson.dumps(openapi.document(ROUTES)), content_type="application/json"
    )


ROUTES: tuple[Endpoint[Any, Any, Any, Any], ...] = (
    # -- probes: orchestrators and Prometheus call them without a token ---------------------
    *(
        route(
            Endpoint(
                method="GET",
                path=path,
                access=PUBLIC,
                summary="Liveness: the process answers (never touches the store or the provider)",
                tag="probes",
                handler=admin_health.healthz,
                params=NoParams,
                query=NoParams,
                body=NoBody,
                response=api.Health,
                errors=(),
            )
        )
        for path in ("/healthz", "/livez", "/health/liveliness")
    ),
    *(
        route(
            Endpoint(
                method="GET",
                path=path,
                access=PUBLIC,
                summary="Readiness: 200 ready (or degraded: the last good snapshot is served), "
                "503 starting until a first snapshot loads, 503 draining after SIGTERM",
                tag="probes",
                handler=admin_health.readyz,
                params=NoParams,
                query=NoParams,
                body=NoBody,
                response=api.Ready,
                also=(503,),
                errors=(),
            )
        )
        for path in ("/readyz", "/health/readiness")
    ),
    route(
        Endpoint(
            method="GET",
            path="/metrics",
            access=PUBLIC,
            summary="Prometheus metrics",
            tag="probes",
            handler=admin_health.metrics,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=_METRICS,
            errors=(),
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/openapi.json",
            access=PUBLIC,
            summary="This OpenAPI description, generated from the route table",
            tag="probes",
            handler=openapi_json,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=_DOCUMENT,
            errors=(),
        )
    ),
    # -- prompts and versions ---------------------------------------------------------------
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts",
            access=READ,
            summary="List prompts with their prod and latest versions",
            tag="prompts",
            handler=admin_api.list_prompts,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.PromptList,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}",
            access=READ,
            summary="A prompt and its versions",
            tag="prompts",
            handler=admin_api.get_prompt,
            params=SlugPath,
            query=NoParams,
            body=NoBody,
            response=api.Prompt,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/versions",
            access=WRITE,
            summary="Create a version (201); identical content returns the latest version (200)",
            tag="prompts",
            handler=admin_api.create_version,
            params=SlugPath,
            query=WaitQuery,
            body=api.VersionIn,
            response=api.VersionCreated,
            also=(201,),
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/versions/{{version}}",
            access=READ,
            summary="One version",
            tag="prompts",
            handler=admin_api.get_version,
            params=VersionPath,
            query=NoParams,
            body=NoBody,
            response=api.Version,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/promote",
            access=WRITE,
            summary="Make a version prod; the former prod becomes deprecated",
            tag="prompts",
            handler=admin_api.promote,
            params=SlugPath,
            query=WaitQuery,
            body=api.PromoteIn,
            response=api.AuditWritten,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/rollback",
            access=WRITE,
            summary="Make the last former prod prod again",
            tag="prompts",
            handler=admin_api.rollback,
            params=SlugPath,
            query=WaitQuery,
            body=api.ReasonIn,
            response=api.AuditWritten,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/history",
            access=READ,
            summary="Audit entries of a prompt; with `at`, what it served then: the prod version "
            "and the rollout running then (candidate, mode, percent, sticky key)",
            tag="prompts",
            handler=admin_api.history,
            params=SlugPath,
            query=HistoryQuery,
            body=NoBody,
            response=api.History,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/diff",
            access=READ,
            summary="Unified diff between two versions",
            tag="prompts",
            handler=admin_api.diff,
            params=SlugPath,
            query=DiffQuery,
            body=NoBody,
            response=api.Diff,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/explain",
            access=READ,
            summary="What a tenant's (or tier's) request is composed of now: the guardrails, "
            "then the base with its blocks filled by the overrides, each segment marked by "
            "the layer and version that wrote it",
            tag="prompts",
            handler=admin_api.explain,
            params=ExplainPath,
            query=ExplainQuery,
            body=NoBody,
            response=api.Explain,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/audit",
            access=READ,
            summary="The append-only audit log, newest first",
            tag="prompts",
            handler=admin_api.audit,
            params=NoParams,
            query=AuditQuery,
            body=NoBody,
            response=api.AuditPage,
        )
    ),
    # -- tenants ------------------------------------------------------------------------------
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/tenants",
            access=READ,
            summary="Every tenant record: tier, how many API keys name it",
            tag="tenants",
            handler=admin_tenants.list_tenants,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.TenantList,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/tenants/{{tenant_id}}",
            access=READ,
            summary="One tenant record (404 if none)",
            tag="tenants",
            handler=admin_tenants.get_tenant,
            params=TenantPath,
            query=NoParams,
            body=NoBody,
            response=api.Tenant,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/tenants/{{tenant_id}}/usage",
            access=READ,
            summary="A tenant's requests, errors, tokens and estimated cost over a time range, "
            "by prompt and variant, from every replica (each flushes every usage.flush_seconds)",
            tag="tenants",
            handler=admin_tenants.tenant_usage,
            params=TenantPath,
            query=UsageQuery,
            body=NoBody,
            response=api.TenantUsage,
        )
    ),
    route(
        Endpoint(
            method="PUT",
            path=f"{PREFIX}/tenants/{{tenant_id}}",
            access=WRITE,
            summary="Create a tenant, or change its tier and API keys (audited; the same "
            "tier and keys again change nothing)",
            tag="tenants",
            handler=admin_tenants.put_tenant,
            params=TenantPath,
            query=WaitQuery,
            body=api.TenantIn,
            response=api.TenantChanged,
        )
    ),
    route(
        Endpoint(
            method="DELETE",
            path=f"{PREFIX}/tenants/{{tenant_id}}",
            access=WRITE,
            summary="Remove a tenant record (audited): its requests become unknown tenants",
            tag="tenants",
            handler=admin_tenants.delete_tenant,
            params=TenantPath,
            query=WaitQuery,
            body=api.ReasonIn,
            response=api.AuditWritten,
        )
    ),
    # -- rollouts -----------------------------------------------------------------------------
    route(
        Endpoint(
            method="PUT",
            path=f"{PREFIX}/prompts/{{slug}}/rollout",
            access=WRITE,
            summary="Start a canary or shadow rollout (201), or change the running one's "
            "percentage with the same candidate and mode (200; cohorts are kept)",
            tag="rollouts",
            handler=admin_rollouts.put_rollout,
            params=SlugPath,
            query=WaitQuery,
            body=api.RolloutIn,
            response=api.RolloutChanged,
            also=(201,),
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/rollout",
            access=READ,
            summary="The running rollout (404 if none) and its analysis state",
            tag="rollouts",
            handler=admin_rollouts.get_rollout,
            params=SlugPath,
            query=NoParams,
            body=NoBody,
            response=api.RolloutStatus,
        )
    ),
    route(
        Endpoint(
            method="DELETE",
            path=f"{PREFIX}/prompts/{{slug}}/rollout",
            access=WRITE,
            summary="Abort: all traffic back to stable, the candidate back to its former status",
            tag="rollouts",
            handler=admin_rollouts.delete_rollout,
            params=SlugPath,
            query=AbortQuery,
            body=api.ReasonIn,
            response=api.AuditWritten,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/rollout/promote",
            access=WRITE,
            summary="Make the candidate prod in one step and end the rollout",
            tag="rollouts",
            handler=admin_rollouts.promote_rollout,
            params=SlugPath,
            query=WaitQuery,
            body=api.ReasonIn,
            response=api.AuditWritten,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/rollout/series",
            access=READ,
            summary="A rollout's counts pooled from every replica (as its verdicts read them), "
            "one point per `step` seconds and arm over the last `since`: requests, errors, "
            "p95 latency and time to first token, length finishes, answer length, judge score",
            tag="rollouts",
            handler=admin_rollouts.rollout_series,
            params=SlugPath,
            query=SeriesQuery,
            body=NoBody,
            response=api.RolloutSeries,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/analysis",
            access=READ,
            summary="The latest analysed rollout of the slug, running or ended (after an abort: "
            "the verdicts that caused it); 404 if none",
            tag="rollouts",
            handler=admin_rollouts.get_analysis,
            params=SlugPath,
            query=NoParams,
            body=NoBody,
            response=api.LastAnalysis,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/rollouts",
            access=READ,
            summary="Every running rollout",
            tag="rollouts",
            handler=admin_rollouts.list_rollouts,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.RolloutList,
        )
    ),
    # -- shadow pairs -------------------------------------------------------------------------
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/shadow/pairs",
            access=READ,
            summary="Shadow pairs of a prompt (stable and candidate answers side by side), oldest "
            "first, one JSON object per line",
            tag="shadow",
            handler=admin_shadow.shadow_pairs,
            params=ShadowPath,
            query=PairsQuery,
            body=NoBody,
            response=_PAIRS,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/shadow/rollout",
            access=READ,
            summary="Which rollout `rollout=latest` selects now: the running one, else the last "
            "(404 if the prompt never had one)",
            tag="shadow",
            handler=admin_shadow.shadow_rollout,
            params=ShadowPath,
            query=NoParams,
            body=NoBody,
            response=api.ShadowRollout,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/shadow/report",
            access=READ,
            summary="Does the candidate of one rollout diverge from stable more than stable "
            "from itself? Per measure, noise pairs against candidate pairs by a one-sided "
            "Mann-Whitney U test; a report, whatever its verdict",
            tag="shadow",
            handler=admin_shadow.shadow_report,
            params=ShadowPath,
            query=ReportQuery,
            body=NoBody,
            response=api.ShadowReport,
        )
    ),
    # -- eval runs --------------------------------------------------------------------------
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/evals",
            access=WRITE,
            summary="Run an eval suite on a candidate version (and a baseline) through this "
            "proxy's request path; follow it as JSON lines; the run is stored",
            tag="evals",
            handler=admin_evals.start_eval,
            params=SlugPath,
            query=NoParams,
            body=api.EvalIn,
            response=_EVAL_LINES,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/prompts/{{slug}}/replays",
            access=WRITE,
            summary="Replay captured calls of a version on a candidate through this proxy's "
            "request path, compared against the version re-run (noise-calibrated, as a shadow "
            "report); follow it as JSON lines; the run is stored",
            tag="evals",
            handler=admin_evals.start_replay,
            params=SlugPath,
            query=NoParams,
            body=api.ReplayIn,
            response=_EVAL_LINES,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/prompts/{{slug}}/evals",
            access=READ,
            summary="Stored eval runs of a prompt line, newest first, without their samples",
            tag="evals",
            handler=admin_evals.list_evals,
            params=SlugPath,
            query=EvalsQuery,
            body=NoBody,
            response=api.EvalRunList,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/evals/{{run_id}}",
            access=READ,
            summary="One stored eval run, with every sample's answer and failures",
            tag="evals",
            handler=admin_evals.get_eval,
            params=EvalRunPath,
            query=NoParams,
            body=NoBody,
            response=api.EvalRunOut,
        )
    ),
    # -- the fleet and the registry store ----------------------------------------------------
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/fleet",
            access=READ,
            summary="Every replica on the fleet board: the registry it serves (generation, "
            "revision, state), how far behind the store, how stale, live or not",
            tag="fleet",
            handler=admin_fleet.list_fleet,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.FleetStatus,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/registry",
            access=READ,
            summary="Whether the store is the registry this replica serves (state ok or replaced)",
            tag="registry",
            handler=admin_registry.registry_status,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.RegistryStatus,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/registry/restore",
            access=WRITE,
            summary="Restore a lost store (emptied or replaced) from this replica's snapshot",
            tag="registry",
            handler=admin_registry.restore,
            params=NoParams,
            query=NoParams,
            body=api.RestoreIn,
            response=api.RestoreResult,
        )
    ),
    route(
        Endpoint(
            method="GET",
            path=f"{PREFIX}/registry/export",
            # An admin token: the export is a backup, and it carries the tenants' whole key
            # digests, which read-only answers never show.
            access=WRITE,
            summary="The whole registry: versions, statuses, rollouts, audit, tenants "
            "(an admin token: it holds the tenants' key digests)",
            tag="registry",
            handler=admin_registry.export,
            params=NoParams,
            query=NoParams,
            body=NoBody,
            response=api.RegistryExport,
        )
    ),
    route(
        Endpoint(
            method="POST",
            path=f"{PREFIX}/registry/import",
            access=WRITE,
            summary="Load an export into an empty (or lost) store; the same content is a no-op",
            tag="registry",
            handler=admin_registry.import_,
            params=NoParams,
            query=ImportQuery,
            body=NoBody,
            raw_body=api.RegistryExport,
            response=api.RestoreResult,
        )
    ),
)


def add_routes(app: web.Application) -> None:
    for endpoint in ROUTES:
        handler = bind(endpoint)
        if endpoint.method == "GET":
            app.router.add_get(endpoint.path, handler)  # and HEAD
        else:
            app.router.add_route(endpoint.method, endpoint.path, handler)
