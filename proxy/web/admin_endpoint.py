"""What an admin route declares, and the one wrapper that holds every route to it.

A route (``Endpoint``) names its method and path, who may call it (``Access``), the models
of its path and query parameters and of its body, and the model of its answer. ``bind``
turns it into an aiohttp handler that, in this order: authorizes the caller for the
route's access, validates the path, the query and the body with the declared models, calls
the handler with them (``Call``), and serializes the answer after checking it is the
declared model and status. Handlers never authorize, parse or serialize by themselves,
and the OpenAPI document is generated from the same declarations (``proxy.web.openapi``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from proxy.errors import InvalidRequest
from proxy.services import Services
from proxy.web.admin_auth import Access, authorize
from proxy.web.admin_models import Body, wire
from proxy.web.admin_params import Keyed, LayerQuery, Params, keyed
from proxy.web.keys import SERVICES


class NoBody(Body):
    """A route that reads no body (one sent is not read)."""

    model_config = ConfigDict(frozen=True)


P = TypeVar("P", bound=Params)
Q = TypeVar("Q", bound=Params)
B = TypeVar("B", bound=BaseModel)
#: The answer: a model, or the ``web.StreamResponse`` of a route that writes its own.
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Call(Generic[P, Q, B]):
    """One call of a route, validated: what a handler gets."""

    request: web.Request
    services: Services
    #: The token's name (for the audit log); ``anonymous`` when none is needed.
    actor: str
    path: P
    query: Q
    body: B


@dataclass(frozen=True, slots=True)
class Reply(Generic[R]):
    """An answer with another status than 200 (declared in ``Endpoint.also``)."""

    body: R
    status: int = 200
    #: Indented, for a document meant to be kept in a file (an export).
    indent: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """An answer the handler writes itself (JSON lines, Prometheus text), as the document
    describes it."""

    media_type: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    #: Response headers: name -> what it says.
    headers: Mapping[str, str] = field(default_factory=dict)


#: Errors every admin API route may answer besides those of its access and body: bad
#: input, an unknown prompt or version, a forbidden move, the store unavailable.
API_ERRORS = (400, 404, 409, 503)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint(Generic[P, Q, B, R]):
    method: str
    path: str
    access: Access
    summary: str
    tag: str
    handler: Callable[[Call[P, Q, B]], Awaitable[R | Reply[R]]]
    params: type[P]
    query: type[Q]
    body: type[B]
    response: type[R] | Stream
    #: Statuses answered with ``response`` besides 200 (201 created, 503 not ready).
    also: tuple[int, ...] = ()
    #: Error statuses besides 401/403 (from ``access``) and 413 (a body too large).
    errors: tuple[int, ...] = API_ERRORS
    #: The body of a route whose handler reads it itself (an import), as the document
    #: describes it.
    raw_body: type[BaseModel] | None = None

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def layered(self) -> bool:
        """A prompt route (``{slug}``): it takes the layer as ``LayerQuery``."""
        return keyed(self.params)

    @property
    def reads_body(self) -> bool:
        return self.body is not NoBody or self.raw_body is not None


def field_path(loc: Sequence[int | str]) -> str | None:
    """A pydantic error location as the API names fields: ``variables[0].default``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or None


_M = TypeVar("_M", bound=BaseModel)


async def parse_body(request: web.Request, model: type[_M]) -> _M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        path = field_path(first["loc"])
        where = f"{path}: " if path else ""
        raise InvalidRequest(f"Invalid request body: {where}{first['msg']}", param=path) from None


def read_params(model: type[P], raw: Mapping[str, str]) -> P:
    """Path or query parameters. A required one that is missing reads as ``""`` so its own
    check says what it must be; unknown ones are ignored."""
    values: dict[str, str] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in raw:
            values[key] = raw[key]
        elif info.is_required():
            values[key] = ""
    try:
        return model.model_validate(values)
    except ValidationError as exc:  # each field raises its own 400 first; this is a backstop
        first = exc.errors()[0]
        where = field_path(first["loc"])
        raise InvalidRequest(f"Invalid parameter {where}: {first['msg']}", param=where) from None


def route(endpoint: Endpoint[P, Q, B, R]) -> Endpoint[Any, Any, Any, Any]:
    """One entry of the route table. Called on each entry so the type checker holds the
    declaration together: the handler takes a ``Call`` of the declared parameter and body
    models and answers the declared model (a table typed ``Endpoint[Any, ...]`` would not
    check that)."""
    return endpoint


def _respond(endpoint: Endpoint[Any, Any, Any, Any], answer: Any) -> web.StreamResponse:
    """The answer on the wire, once it is what the route declares: a route cannot answer
    something its OpenAPI description does not say."""
    if isinstance(answer, web.StreamResponse):
        if not isinstance(endpoint.response, Stream):
            raise TypeError(f"{endpoint.name} wrote its own answer; it declares a model")
        return answer
    reply = answer if isinstance(answer, Reply) else Reply(answer)
    declared = type(reply.body) is endpoint.response and isinstance(reply.body, BaseModel)
    if not declared or reply.status not in (200, *endpoint.also):
        raise TypeError(
            f"{endpoint.name} answered {type(reply.body).__name__} with {reply.status}; "
            f"it declares {endpoint.response!r} with {(200, *endpoint.also)}"
        )
    option = orjson.OPT_INDENT_2 if reply.indent else 0
    return web.Response(
        body=orjson.dumps(wire(reply.body), option=option),
        status=reply.status,
        content_type="application/json",
    )


_NO_BODY = NoBody()


def bind(
    endpoint: Endpoint[P, Q, B, R],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``endpoint``: authorize, validate, call, check, serialize."""

    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        actor = authorize(request, services.settings.admin_tokens, endpoint.access)
        path = read_params(endpoint.params, request.match_info)
        if isinstance(path, Keyed):
            path = path.at(read_params(LayerQuery, request.query))
        query = read_params(endpoint.query, request.query)
        body: Any = _NO_BODY
        if endpoint.body is not NoBody:
            body = await parse_body(request, endpoint.body)
        answer = await endpoint.handler(Call(request, services, actor, path, query, body))
        return _respond(endpoint, answer)

    handle.__name__ = endpoint.name
    return handle
