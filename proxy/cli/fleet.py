"""`promptproxy fleet`: every replica on the fleet board, the registry revision it serves,
its state (``replaced``: the store lost the registry it serves), how far behind the store
and how stale it is, and whether it is live."""

from __future__ import annotations

from typing import Any

import click

from proxy.cli.context import Context, pass_ctx
from proxy.cli.output import run, table
from proxy.web import admin_models as api

_HEADERS = (
    "REPLICA",
    "STATE",
    "GENERATION",
    "PROMPTS",
    "REVISION",
    "BEHIND",
    "STALENESS",
    "HEARTBEAT",
    "LIVE",
    "VERSION",
)


def _short(generation: str | None) -> str:
    return "-" if generation is None else generation[:8]


def _row(r: api.Replica) -> tuple[Any, ...]:
    return (
        r.replica + (" *" if r.this else ""),
        r.state,
        _short(r.generation),
        r.prompts,
        r.revision,
        "-" if r.behind is None else r.behind,
        f"{r.staleness_seconds:.1f}s",
        f"{r.heartbeat_age_seconds:.1f}s ago",
        "yes" if r.live else "no",
        r.version,
    )


def _describe(status: api.FleetStatus) -> str:
    rows = status.data
    revision = status.revision
    if revision is None:
        store = "store revision unknown"
    else:
        store = f"store revision {revision} (generation {_short(status.generation)})"
    head = (
        f"{store}; "
        f"{status.live} live replica{'s' if status.live != 1 else ''} "
        f"(* answered this call)"
    )
    if not rows:
        return head + "\nno replica has reported yet"
    return head + "\n" + table([_row(r) for r in rows], _HEADERS)


@click.command("fleet")
@pass_ctx
def fleet(ctx: Context) -> None:
    """List the replicas: the registry each serves (state, generation, revision), how far
    behind the store (within the same generation), staleness, live or not."""
    run(lambda: ctx.emit(ctx.client.fleet(), _describe))
