"""How a change reached the replicas, as the CLI says it: `v1 served by 3/3 replicas after
41 ms`, or which replica did not confirm in time.

Promote, rollback and the rollout commands wait by default (``--wait``, up to ``--timeout``
seconds) and exit 3 when a live replica did not confirm: the change is made either way,
but a script must not assume every replica serves it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from proxy.web import admin_models as api

DEFAULT_TIMEOUT = 10.0
#: The write was made, but not every live replica confirmed it in time.
NOT_CONFIRMED_EXIT = 3

F = TypeVar("F", bound=Callable[..., Any])


def wait_options(command: F) -> F:
    command = click.option(
        "--timeout",
        type=click.FloatRange(0, 60, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds to wait for every live replica to serve the change.",
    )(command)
    return click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait until every live replica serves the change (exit 3 if one does not "
        "confirm in time).",
    )(command)


def wait_seconds(wait: bool, timeout: float) -> float | None:
    return timeout if wait else None


def describe_served(label: str, served: api.Served) -> tuple[list[str], list[str]]:
    """(lines for stdout, warnings for stderr) about where ``label`` is served."""
    out: list[str] = []
    warnings: list[str] = []
    if not served.here:
        warnings.append(
            "warning: the proxy that answered does not serve this change yet (it could not "
            "read the store just after the write); it will once the store answers"
        )
    fleet = served.fleet
    if fleet is None:
        return out, warnings
    count = f"{fleet.confirmed}/{fleet.replicas} replicas"
    if fleet.complete:
        out.append(f"{label} served by {count} after {fleet.elapsed_ms} ms")
        return out, warnings
    if fleet.replicas == 0:
        warnings.append(f"warning: could not check the replicas: {fleet.error}")
        return out, warnings
    missing = ", ".join(_missing(m) for m in fleet.missing)
    out.append(
        f"{label} served by {count} after {fleet.elapsed_ms} ms; "
        f"not confirmed within {fleet.timeout_seconds:g} s: {missing}"
    )
    if fleet.error:
        warnings.append(f"warning: the fleet board could not be read at the end: {fleet.error}")
    return out, warnings


def _missing(m: api.FleetMissing) -> str:
    if m.revision is None:
        return f"{m.replica} (never reported)"
    return (
        f"{m.replica} (serves revision {m.revision}, "
        f"last heartbeat {m.heartbeat_age_seconds:.1f} s ago)"
    )


def report_served(output: str, label: str, served: api.Served) -> None:
    """Print where the change is served; exit 3 if a wait ended without every replica."""
    out, warnings = describe_served(label, served)
    if output != "json":
        for line in out:
            click.echo(line)
    for line in warnings:
        click.echo(line, err=True)
    if served.fleet is not None and not served.fleet.complete:
        sys.exit(NOT_CONFIRMED_EXIT)
