"""The prompt an admin command names: SLUG, at its base or at a tenant's or tier's layer,
of its default model variant or of another.

Every command that addresses a prompt takes `--tenant ID` or `--tier NAME` (not both): the
version line of that tenant's (tier's) override of SLUG instead of the base's; and
`--variant NAME`, alone or with either: the line of that model variant (`SLUG@NAME`, or
`tenant=ID/SLUG@NAME`). The client sends them as the `tenant=`/`tier=`/`variant=` query
parameters of every prompt route (see ``proxy.cli.client.layer_query``).
``prompt_argument`` declares SLUG and the options once and calls the command with the
``PromptKey`` they name, as ``key``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from proxy.cli.client import AdminError, key_of, layer_of
from proxy.cli.output import fail
from proxy.prompt_key import Layer, PromptKey

F = TypeVar("F", bound=Callable[..., Any])


def prompt_argument(required: bool = True) -> Callable[[F], F]:
    """SLUG, `--tenant ID`, `--tier NAME` and `--variant NAME`, passed on as
    ``key: PromptKey`` (None when SLUG is optional and not given)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def invoke(
            *args: Any,
            slug: str | None,
            tenant: str | None,
            tier: str | None,
            variant: str | None,
            **kwargs: Any,
        ) -> Any:
            return command(*args, key=_key(slug, tenant, tier, variant), **kwargs)

        with_options = click.option(
            "--variant",
            metavar="NAME",
            help="The model variant's version line (SLUG@NAME) instead of the default "
            "variant's; with --tenant or --tier, that layer's override of the variant.",
        )(invoke)
        with_options = click.option(
            "--tier",
            metavar="NAME",
            help="The tier's override of the prompt (tier=NAME/SLUG) instead of its base.",
        )(with_options)
        with_options = click.option(
            "--tenant",
            metavar="ID",
            help="The tenant's override of the prompt (tenant=ID/SLUG) instead of its base; "
            "not with --tier.",
        )(with_options)
        return cast(F, click.argument("slug", required=required)(with_options))

    return decorate


def _key(
    slug: str | None, tenant: str | None, tier: str | None, variant: str | None
) -> PromptKey | None:
    context = click.get_current_context()
    if tenant is not None and tier is not None:
        # Usage, not an admin error: an override belongs to one layer, so no prompt is both.
        raise click.UsageError(
            "--tenant and --tier exclude each other: an override is a tenant's or a tier's.",
            context,
        )
    if slug is None:
        if tenant is not None or tier is not None or variant is not None:
            raise click.UsageError(
                "--tenant, --tier and --variant name a version line of a SLUG: give one.",
                context,
            )
        return None
    try:
        layer: Layer | None = None
        if tenant is not None:
            layer = layer_of("tenant", tenant)
        elif tier is not None:
            layer = layer_of("tier", tier)
        return key_of(slug, layer, variant)
    except AdminError as exc:
        fail(exc)
