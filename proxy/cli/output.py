"""How every admin command prints: tables, times, and errors (one line, exit 1)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from proxy.cli.client import AdminError


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def run(action: Callable[[], None]) -> None:
    """Run a command's calls; an admin API error is one line on stderr and exit 1."""
    try:
        action()
    except AdminError as exc:
        fail(exc)


def fail(exc: AdminError) -> NoReturn:
    """An admin API error (or one the CLI finds in the API's words): one line, exit 1."""
    where = f" (param: {exc.param})" if exc.param else ""
    click.echo(f"error: {exc}{where}", err=True)
    sys.exit(1)
