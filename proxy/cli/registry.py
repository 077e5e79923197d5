"""`promptproxy registry ...`: the registry store itself: its state, restore, backups.

Talks to the admin API of one replica (the same service layer as the HTTP API); any error
exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from proxy.cli.context import Context, admin_options, pass_ctx
from proxy.cli.output import run
from proxy.web import admin_models as api

_OVERWRITE_HELP = (
    "Replace the prompts the store holds (another registry's, or newer changes of this "
    "one); without it that is refused. For a wrong database, fix the URL instead."
)


@click.group("registry")
@admin_options()
def registry() -> None:
    """The registry store: identity, restore after a loss, export and import (backups)."""


def _status_line(data: api.RegistryStatus) -> str:
    line = (
        f"state: {data.state}\ngeneration: {data.generation}\n"
        f"revision: {data.revision}\nprompts: {data.prompts}"
    )
    return line + (f"\nproblem: {data.problem}" if data.problem else "")


def _result_line(data: api.RestoreResult) -> str:
    if data.unchanged:
        return f"unchanged: the store already holds this registry (revision {data.revision})"
    return (
        f"restored {data.prompts} prompts ({data.versions} versions) from the "
        f"{data.source}, generation {data.generation}, now at revision {data.revision}"
    )


@registry.command()
@pass_ctx
def status(ctx: Context) -> None:
    """Whether the store is the registry this replica serves (state ok or replaced)."""
    run(lambda: ctx.emit(ctx.client.registry_status(), _status_line))


@registry.command()
@click.option(
    "--from-replica",
    is_flag=True,
    required=True,
    help="Write the snapshot this replica serves (the --admin-url one) into the store.",
)
@click.option("--reason", default="", help="Recorded in the audit log.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
@pass_ctx
def restore(ctx: Context, from_replica: bool, reason: str, overwrite: bool) -> None:
    """Restore a lost store (emptied or replaced) from a replica's snapshot."""
    run(lambda: ctx.emit(ctx.client.restore_registry(reason, overwrite), _result_line))


@registry.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def export_(ctx: Context, file: Path) -> None:
    """Write the whole registry (versions, statuses, rollouts, audit) to FILE (JSON)."""

    def action() -> None:
        image = ctx.client.export_registry()
        file.write_bytes(orjson.dumps(api.wire(image), option=orjson.OPT_INDENT_2))
        click.echo(f"exported {len(image.versions)} versions, revision {image.revision} to {file}")

    run(action)


@registry.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--reason", default="", help="Recorded in the audit log.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
@pass_ctx
def import_(ctx: Context, file: Path, reason: str, overwrite: bool) -> None:
    """Load an export FILE into an empty (or lost) store; the same content is a no-op."""
    try:
        image = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        click.echo(f"error: {file} is not JSON: {exc}", err=True)
        sys.exit(1)
    run(lambda: ctx.emit(ctx.client.import_registry(image, reason, overwrite), _result_line))
