"""`promptproxy tenants ...`: the tenant records (tier, the API keys that name them).

API keys are hashed here, before anything is sent: the proxy receives and keeps only their
SHA-256. A key is read from an environment variable or standard input, never from the
command line (where `ps` and shell history would keep it).
"""

from __future__ import annotations

import hashlib
import os
import sys

import click

from proxy.cli.context import Context, admin_options, pass_ctx
from proxy.cli.output import run, table, when
from proxy.cli.served import report_served, wait_options, wait_seconds
from proxy.web import admin_models as api


@click.group("tenants")
@admin_options()
def tenants() -> None:
    """Tenant records: who the callers are, and their tiers."""


def _rows(data: api.TenantList) -> str:
    if not data.data:
        return "no tenants"
    return table(
        [(t.id, t.tier, t.api_keys, when(t.updated_at)) for t in data.data],
        ("TENANT", "TIER", "API KEYS", "UPDATED"),
    )


def _one(t: api.Tenant) -> str:
    keys = ", ".join(f"{p}…" for p in t.api_key_prefixes) or "-"
    return f"{t.id}  tier {t.tier}\napi keys (sha256): {keys}\nupdated: {when(t.updated_at)}"


@tenants.command("list")
@pass_ctx
def list_(ctx: Context) -> None:
    """Every tenant, its tier and how many API keys name it."""
    run(lambda: ctx.emit(ctx.client.tenants(), _rows))


@tenants.command()
@click.argument("tenant_id")
@pass_ctx
def show(ctx: Context, tenant_id: str) -> None:
    """One tenant record."""
    run(lambda: ctx.emit(ctx.client.tenant(tenant_id), _one))


def _key_hashes(env_names: tuple[str, ...], from_stdin: bool, clear: bool) -> list[str] | None:
    """None (keep the tenant's keys) unless keys are given or ``clear``."""
    if not env_names and not from_stdin:
        return [] if clear else None
    if clear:
        raise click.UsageError("--clear-keys and the key options exclude each other")
    keys: list[str] = []
    for name in env_names:
        value = os.environ.get(name)
        if not value:
            raise click.UsageError(f"--api-key-env {name}: the variable is not set or empty")
        keys.append(value.strip())
    if from_stdin:
        keys.extend(line.strip() for line in sys.stdin if line.strip())
    return sorted({hashlib.sha256(key.encode()).hexdigest() for key in keys})


@tenants.command("set")
@click.argument("tenant_id")
@click.option("--tier", required=True, help="One of the config's tenants.tiers.")
@click.option(
    "--api-key-env",
    "api_key_env",
    multiple=True,
    metavar="VAR",
    help="An environment variable holding an API key that names this tenant (repeatable).",
)
@click.option(
    "--api-keys-stdin",
    is_flag=True,
    help="Read API keys from standard input, one per line.",
)
@click.option("--clear-keys", is_flag=True, help="Remove every API key of the tenant.")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def set_(
    ctx: Context,
    tenant_id: str,
    tier: str,
    api_key_env: tuple[str, ...],
    api_keys_stdin: bool,
    clear_keys: bool,
    reason: str,
    wait: bool,
    timeout: float,
) -> None:
    """Create TENANT_ID or change its tier and keys. Keys given replace its keys; without
    key options it keeps its keys (`--clear-keys` removes them)."""

    def action() -> None:
        hashes = _key_hashes(api_key_env, api_keys_stdin, clear_keys)
        body = api.TenantIn.model_construct(tier=tier, api_key_sha256=hashes, reason=reason)
        answer = ctx.client.put_tenant(tenant_id, body, wait_seconds(wait, timeout))
        ctx.emit(
            answer,
            lambda a: _one(a.tenant) + ("" if a.changed else "\n(unchanged)"),
        )
        if answer.changed:
            report_served(ctx.output, tenant_id, answer.served)

    run(action)


@tenants.command()
@click.argument("tenant_id")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def delete(ctx: Context, tenant_id: str, reason: str, wait: bool, timeout: float) -> None:
    """Remove TENANT_ID: its requests become those of an unknown tenant."""

    def action() -> None:
        answer = ctx.client.delete_tenant(tenant_id, reason, wait_seconds(wait, timeout))
        ctx.emit(answer, lambda _: f"tenant {tenant_id} deleted")
        report_served(ctx.output, tenant_id, answer.served)

    run(action)


def _usage(u: api.TenantUsage) -> str:
    who = f"tenant {u.tenant}" + (f"  tier {u.tier}" if u.tier else "")
    if not u.known:
        who += "  (not a tenant the registry knows now)"
    lines = [
        who,
        f"from {when(u.since)} to {when(u.until)}" + (f", prompt {u.slug}" if u.slug else ""),
    ]
    if not u.prompts:
        return "\n".join([*lines, "no requests"])
    rows = [
        (
            p.slug,
            p.variant or "default",
            p.requests,
            p.errors,
            p.input_tokens,
            p.output_tokens,
            f"{p.cost_usd:.4f}",
        )
        for p in u.prompts
    ]
    t = u.total
    rows.append(
        ("total", "", t.requests, t.errors, t.input_tokens, t.output_tokens, f"{t.cost_usd:.4f}")
    )
    headers = (
        "PROMPT",
        "VARIANT",
        "REQUESTS",
        "ERRORS",
        "INPUT TOKENS",
        "OUTPUT TOKENS",
        "COST USD",
    )
    return "\n".join([*lines, table(rows, headers)])


@tenants.command()
@click.argument("tenant_id")
@click.option(
    "--since",
    help="From: seconds ago (600), 10m, 2h, 7d, a unix time or an ISO-8601 time with a "
    "zone (default: a day before --until).",
)
@click.option("--until", help="To, in the same forms (default: now).")
@click.option("--slug", help="Only this prompt's requests.")
@pass_ctx
def usage(ctx: Context, tenant_id: str, since: str, until: str | None, slug: str | None) -> None:
    """What TENANT_ID's requests were, from every replica: requests, errors, tokens and
    estimated cost, by prompt and model variant, to the minute."""
    run(lambda: ctx.emit(ctx.client.tenant_usage(tenant_id, since, until, slug), _usage))
