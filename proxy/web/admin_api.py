"""Admin API handlers: parse JSON, call RegistryService, serialize. Nothing else."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.errors import InvalidRequest
from proxy.registry.models import INT64_MAX, VariableSpec, VersionDraft, unstorable_value
from proxy.services import Services
from proxy.web import admin_wait
from proxy.web.admin_auth import authorize
from proxy.web.keys import SERVICES
from proxy.web.openapi import OPENAPI

PREFIX = "/admin/v1"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VariableIn(Body):
    name: str
    type: str | None = None
    default: Any = None


#: Version numbers, audit sequence numbers and limits: what a store can hold (SQLite INTEGER).
Count = Annotated[int, Field(ge=1, le=INT64_MAX)]


class VersionIn(Body):
    template: str = Field(min_length=1)
    variables: list[VariableIn] = []
    model: str | None = None
    params: dict[str, Any] = {}
    author: str | None = None
    changelog: str = ""


class PromoteIn(Body):
    version: Count
    reason: str = ""


class RollbackIn(Body):
    reason: str = ""


_B = TypeVar("_B", bound=Body)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def field_path(loc: Sequence[int | str]) -> str | None:
    """A pydantic error location as the API names fields: ``variables[0].default``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or None


async def parse_body(request: web.Request, model: type[_B]) -> _B:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        path = field_path(first["loc"])
        where = f"{path}: " if path else ""
        raise InvalidRequest(f"Invalid request body: {where}{first['msg']}", param=path) from None


def check_storable(value: Any, path: str) -> None:
    """400 naming the place when a JSON value holds something a version cannot keep faithfully
    (see ``unstorable_value``); pydantic's JSON parser accepts NaN, Infinity and big integers."""
    found = unstorable_value(value, path)
    if found is not None:
        where, why = found
        raise InvalidRequest(f"Invalid request body: {where}: {why}.", param=where)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request, *, write: bool) -> str:
    return authorize(request, services_of(request).settings.admin_tokens, write=write)


# ASCII digits only: str.isdigit() also takes '²' and '٣', and int() refuses the first.
_POSITIVE = re.compile(r"0*[1-9][0-9]{0,18}")


def positive_int(value: str, name: str) -> int:
    """A path or query integer from 1 to 2^63-1, or a 400 naming it (never a store overflow)."""
    if _POSITIVE.fullmatch(value) is None or int(value) > INT64_MAX:
        raise InvalidRequest(
            f"`{name}` must be an integer from 1 to {INT64_MAX}, not {value[:40]!r}.", param=name
        )
    return int(value)


def _draft(slug: str, body: VersionIn, actor: str) -> VersionDraft:
    check_storable(body.params, "params")
    for index, variable in enumerate(body.variables):
        check_storable(variable.default, f"variables[{index}].default")
    return VersionDraft(
        slug=slug,
        template=body.template,
        variables=tuple(
            VariableSpec(v.name, v.type, v.default, has_default="default" in v.model_fields_set)
            for v in body.variables
        ),
        model=body.model,
        params=body.params,
        author=body.author or actor,
        changelog=body.changelog,
    )


async def create_version(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    slug = request.match_info["slug"]
    body = await parse_body(request, VersionIn)
    wait = admin_wait.wait_of(request)
    version, created = await services_of(request).registry.push(_draft(slug, body, actor), actor)
    return json_response(
        {
            "created": created,
            "version": version.to_dict(),
            "served": await admin_wait.served(request, wait),
        },
        201 if created else 200,
    )


async def list_prompts(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    prompts = await services_of(request).registry.list_prompts()
    return json_response({"data": [p.to_dict() for p in prompts]})


async def get_prompt(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    summary, versions = await services_of(request).registry.get_prompt(request.match_info["slug"])
    return json_response({**summary.to_dict(), "data": [v.to_dict() for v in versions]})


async def get_version(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    number = positive_int(request.match_info["version"], "version")
    version = await services_of(request).registry.get_version(request.match_info["slug"], number)
    return json_response(version.to_dict())


async def promote(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    body = await parse_body(request, PromoteIn)
    wait = admin_wait.wait_of(request)
    entry = await services_of(request).registry.promote(
        request.match_info["slug"], body.version, actor, body.reason
    )
    return json_response({**entry.to_dict(), "served": await admin_wait.served(request, wait)})


async def rollback(request: web.Request) -> web.Response:
    actor = actor_of(request, write=True)
    body = await parse_body(request, RollbackIn)
    wait = admin_wait.wait_of(request)
    entry = await services_of(request).registry.rollback(
        request.match_info["slug"], actor, body.reason
    )
    return json_response({**entry.to_dict(), "served": await admin_wait.served(request, wait)})


def _instant(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            "`at` must be an ISO-8601 time such as 2026-11-24T10:00:00Z.", param="at"
        ) from None
    if moment.tzinfo is None:
        raise InvalidRequest("`at` must carry a time zone (e.g. Z or +00:00).", param="at")
    return moment.timestamp()


async def history(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    registry = services_of(request).registry
    slug = request.match_info["slug"]
    at = request.query.get("at")
    limit = positive_int(request.query.get("limit", "100"), "limit")  # checked with `at` too
    if at is not None:
        state = await registry.state_at(slug, _instant(at))
        return json_response(
            {
                "slug": slug,
                "at": at,
                "prod_version": state.prod_version,
                "rollout": None if state.rollout is None else state.rollout.to_dict(),
            }
        )
    await registry.get_prompt(slug)
    entries = await registry.audit(slug, limit=limit)
    return json_response({"data": [e.to_dict() for e in entries]})


async def audit(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    before = request.query.get("before")
    entries = await services_of(request).registry.audit(
        request.query.get("slug"),
        limit=min(positive_int(request.query.get("limit", "100"), "limit"), 1000),
        before_seq=None if before is None else positive_int(before, "before"),
    )
    return json_response({"data": [e.to_dict() for e in entries]})


async def diff(request: web.Request) -> web.Response:
    actor_of(request, write=False)
    a = positive_int(request.query.get("from", ""), "from")
    b = positive_int(request.query.get("to", ""), "to")
    text = await services_of(request).registry.diff(request.match_info["slug"], a, b)
    return json_response({"diff": text})


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi)
    r.add_get(f"{PREFIX}/prompts", list_prompts)
    r.add_get(f"{PREFIX}/prompts/{{slug}}", get_prompt)
    r.add_post(f"{PREFIX}/prompts/{{slug}}/versions", create_version)
    r.add_get(f"{PREFIX}/prompts/{{slug}}/versions/{{version}}", get_version)
    r.add_post(f"{PREFIX}/prompts/{{slug}}/promote", promote)
    r.add_post(f"{PREFIX}/prompts/{{slug}}/rollback", rollback)
    r.add_get(f"{PREFIX}/prompts/{{slug}}/history", history)
    r.add_get(f"{PREFIX}/prompts/{{slug}}/diff", diff)
    r.add_get(f"{PREFIX}/audit", audit)
