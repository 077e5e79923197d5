"""`promptproxy rollout ...`: canary and shadow rollouts from a terminal or a CI job.

Same conventions as `promptproxy prompts`: every command talks to the admin API, tables for
people, `--output json` for scripts, any error exits non-zero.
"""

from __future__ import annotations

from typing import Any

import click

from proxy.cli_prompts import Context, _run, _when, admin_options, pass_ctx, table


@click.group("rollout")
@admin_options()
@click.pass_context
def rollout(ctx: click.Context, admin_url: str, token: str | None, output: str) -> None:
    """Try a candidate version on real traffic: canary, shadow, ramp, promote, abort."""
    ctx.obj = Context(admin_url, token, output)


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r["slug"],
        r["mode"],
        f"v{r['candidate']}",
        f"{r['percent']:g}%",
        r["sticky"],
        _when(r["started_at"]),
        r["actor"],
    )


_HEADERS = ("SLUG", "MODE", "CANDIDATE", "PERCENT", "STICKY", "STARTED", "BY")


def _describe(r: dict[str, Any]) -> str:
    prod = r.get("prod_version")
    lines = [
        f"{r['slug']}: {r['mode']} rollout of v{r['candidate']} at {r['percent']:g}% "
        f"(stable: {'v' + str(prod) if prod else 'none'})",
        f"  sticky on   {r['sticky']}",
        f"  rollout id  {r['id']}",
        f"  started     {_when(r['started_at'])} by {r['actor']}",
        f"  updated     {_when(r['updated_at'])}",
    ]
    return "\n".join(lines)


def _audit_line(e: dict[str, Any]) -> str:
    detail = e.get("detail") or {}
    percent = f" at {detail['percent']:g}%" if "percent" in detail else ""
    moved = (
        f", v{e['version']} {e['from_status']} -> {e['to_status']}"
        if e.get("to_status") and e.get("from_status") != e.get("to_status")
        else ""
    )
    reason = f" ({e['reason']})" if e.get("reason") else ""
    return f"{e['slug']}: {e['action']}{percent}{moved} by {e['actor']}{reason}"


@rollout.command()
@click.argument("slug", required=False)
@pass_ctx
def status(ctx: Context, slug: str | None) -> None:
    """The running rollout of SLUG, or every running rollout."""

    def action() -> None:
        if slug is not None:
            ctx.emit(ctx.client.get_rollout(slug), _describe)
            return
        rows = ctx.client.list_rollouts()["data"]
        ctx.emit(
            rows,
            lambda rs: table([_row(r) for r in rs], _HEADERS) if rs else "no rollout running",
        )

    _run(action)


@rollout.command("set")
@click.argument("slug")
@click.option("--candidate", type=int, required=True, help="The version to try.")
@click.option("--canary", type=float, help="Percent of callers served by the candidate.")
@click.option("--shadow", type=float, help="Percent of requests also sent to the candidate.")
@click.option(
    "--sticky",
    help="What keeps a caller on one arm: header:<name>, user, tenant or none "
    "(default for a new rollout: none).",
)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@pass_ctx
def set_(
    ctx: Context,
    slug: str,
    candidate: int,
    canary: float | None,
    shadow: float | None,
    sticky: str | None,
    reason: str,
) -> None:
    """Start a rollout of CANDIDATE, or change the running one's percentage."""
    if (canary is None) == (shadow is None):
        raise click.UsageError("give exactly one of --canary PERCENT or --shadow PERCENT")
    mode, percent = ("canary", canary) if canary is not None else ("shadow", shadow)
    body: dict[str, Any] = {
        "candidate": candidate,
        "mode": mode,
        "percent": percent,
        "reason": reason,
    }
    if sticky is not None:
        body["sticky"] = sticky
    _run(lambda: ctx.emit(ctx.client.set_rollout(slug, body), _describe))


@rollout.command()
@click.argument("slug")
@click.argument("percent", type=float)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@pass_ctx
def ramp(ctx: Context, slug: str, percent: float, reason: str) -> None:
    """Change the running rollout's percentage; callers already on the candidate stay."""

    def action() -> None:
        running = ctx.client.get_rollout(slug)
        body = {
            "candidate": running["candidate"],
            "mode": running["mode"],
            "percent": percent,
            "sticky": running["sticky"],
            "reason": reason,
        }
        ctx.emit(ctx.client.set_rollout(slug, body), _describe)

    _run(action)


@rollout.command()
@click.argument("slug")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@pass_ctx
def promote(ctx: Context, slug: str, reason: str) -> None:
    """Make the candidate prod (the former prod is deprecated) and end the rollout."""
    _run(lambda: ctx.emit(ctx.client.promote_rollout(slug, reason), _audit_line))


@rollout.command()
@click.argument("slug")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@pass_ctx
def abort(ctx: Context, slug: str, reason: str) -> None:
    """End the rollout: all traffic back to stable, the candidate back to its status."""
    _run(lambda: ctx.emit(ctx.client.abort_rollout(slug, reason), _audit_line))
