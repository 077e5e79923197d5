"""Admin API handlers for tenant records: call RegistryService, build the answer's model.

GET    /admin/v1/tenants              every tenant
GET    /admin/v1/tenants/{tenant_id}  one (404 if none)
PUT    /admin/v1/tenants/{tenant_id}  create, or change its tier and keys
DELETE /admin/v1/tenants/{tenant_id}  remove it (audited)
GET    /admin/v1/tenants/{tenant_id}/usage  its requests, errors, tokens and cost
"""

from __future__ import annotations

from proxy.registry.models import Tenant
from proxy.usage.counts import UsageCounts
from proxy.web import admin_models as api
from proxy.web import admin_wait
from proxy.web.admin_endpoint import Call, NoBody
from proxy.web.admin_params import NoParams, TenantPath, UsageQuery, WaitQuery


def view(tenant: Tenant) -> api.Tenant:
    """Never the whole hash: the records are read by every read-only token."""
    return api.Tenant(
        id=tenant.id,
        tier=tenant.tier,
        api_keys=len(tenant.key_hashes),
        api_key_prefixes=[digest[:12] for digest in sorted(tenant.key_hashes)],
        updated_at=tenant.updated_at,
    )


async def list_tenants(call: Call[NoParams, NoParams, NoBody]) -> api.TenantList:
    tenants = await call.services.registry.list_tenants()
    return api.TenantList(data=[view(t) for t in tenants])


async def get_tenant(call: Call[TenantPath, NoParams, NoBody]) -> api.Tenant:
    return view(await call.services.registry.get_tenant(call.path.tenant_id))


async def put_tenant(call: Call[TenantPath, WaitQuery, api.TenantIn]) -> api.TenantChanged:
    body = call.body
    wait = admin_wait.start(call.query.wait)
    tenant, entry = await call.services.registry.put_tenant(
        call.path.tenant_id, body.tier, body.api_key_sha256, call.actor, body.reason
    )
    return api.TenantChanged(
        tenant=view(tenant),
        changed=entry is not None,
        audit=None if entry is None else api.AuditEntry.model_validate(entry.to_dict()),
        served=await admin_wait.served(call.services, wait),
    )


async def delete_tenant(call: Call[TenantPath, WaitQuery, api.ReasonIn]) -> api.AuditWritten:
    wait = admin_wait.start(call.query.wait)
    entry = await call.services.registry.delete_tenant(
        call.path.tenant_id, call.actor, call.body.reason
    )
    return await admin_wait.written(call.services, entry, wait)


def figures(counts: UsageCounts) -> dict[str, int | float]:
    return {
        "requests": counts.requests,
        "errors": counts.errors,
        "input_tokens": counts.input_tokens,
        "output_tokens": counts.output_tokens,
        "cost_usd": round(counts.cost_usd, 9),
    }


async def tenant_usage(call: Call[TenantPath, UsageQuery, NoBody]) -> api.TenantUsage:
    query = call.query
    report = await call.services.usage.report(
        call.path.tenant_id, query.since, query.until, query.slug
    )
    return api.TenantUsage(
        tenant=report.tenant,
        known=report.known,
        tier=report.tier,
        since=report.since,
        until=report.until,
        slug=report.slug,
        total=api.UsageFigures(**figures(report.total)),
        prompts=[
            api.PromptUsage(slug=p.slug, variant=p.variant, **figures(p.counts))
            for p in report.prompts
        ],
    )
