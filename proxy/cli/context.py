"""Where the admin-API commands connect, with which token, and how they print.

`--admin-url`, `--token` and `-o/--output` are accepted at every level of the command line:
`promptproxy -o json prompts list`, `promptproxy prompts -o json list` and
`promptproxy prompts list -o json` are the same command. The innermost value given wins,
then the environment (`PROMPTPROXY_ADMIN_URL`, `PROMPTPROXY_ADMIN_TOKEN`), then the default.
The options are defined once here and added to each group and to each command that takes
``pass_ctx``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson
from pydantic import BaseModel

from proxy.cli.client import AdminClient
from proxy.web.admin_models import wire

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
ADMIN_URL_ENV = "PROMPTPROXY_ADMIN_URL"
TOKEN_ENV = "PROMPTPROXY_ADMIN_TOKEN"

# Keys in `click.Context.meta`, which one invocation's contexts share (parent and children).
_META = "promptproxy.admin."

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Context:
    def __init__(self, admin_url: str, token: str | None, output: str) -> None:
        self.client = AdminClient(admin_url, token)
        self.output = output

    def emit(self, data: T, human: Callable[[T], str]) -> None:
        """``human(data)`` for people; for scripts, ``data`` as JSON: an answer (or a list of
        them) exactly as the admin API sent it."""
        if self.output == "json":
            click.echo(orjson.dumps(plain(data), option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(human(data))


def plain(data: Any) -> Any:
    """JSON values of answers (models) and of what the CLI builds around them."""
    if isinstance(data, BaseModel):
        return wire(data)
    if isinstance(data, list | tuple):
        return [plain(item) for item in data]
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    return data


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Groups parse their options before their subcommand's, so a later (inner) value
    # overwrites an earlier (outer) one. Only values actually given are recorded: defaults
    # and environment variables are applied once, in `_resolve`, below every explicit value.
    if value is not None and param.name is not None:
        ctx.meta[_META + param.name] = value
    return value


def admin_options(
    token_help: str = "Admin API token (read role for reads, admin for writes).",
) -> Callable[[F], F]:
    """Add `--admin-url`, `--token` and `-o/--output` to a group or a command. They carry no
    value into the function; `pass_ctx` reads them back."""

    def decorate(command: F) -> F:
        command = click.option(
            "--output",
            "-o",
            type=click.Choice(["table", "json"]),
            expose_value=False,
            callback=_remember,
            help="table (default) or json.",
        )(command)
        command = click.option(
            "--token",
            expose_value=False,
            callback=_remember,
            help=f"{token_help} [env var: {TOKEN_ENV}]",
        )(command)
        return click.option(
            "--admin-url",
            expose_value=False,
            callback=_remember,
            help=f"Admin API base URL. [env var: {ADMIN_URL_ENV}; default: {DEFAULT_ADMIN_URL}]",
        )(command)

    return decorate


def _resolve(ctx: click.Context) -> Context:
    meta = ctx.meta
    admin_url = meta.get(_META + "admin_url") or os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL
    token = meta.get(_META + "token") or os.environ.get(TOKEN_ENV) or None
    output = meta.get(_META + "output") or "table"
    return Context(admin_url, token, output)


def pass_ctx(command: F) -> F:
    """For a command that talks to the admin API: accept the admin options here too, and
    call the command with a ``Context`` built from the innermost of them."""

    @functools.wraps(command)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        return command(_resolve(click.get_current_context()), *args, **kwargs)

    return admin_options()(invoke)  # type: ignore[return-value]
