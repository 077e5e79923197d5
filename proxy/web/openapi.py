"""The admin API's OpenAPI 3.1 description, served at /admin/v1/openapi.json, generated from
the route table (``admin_routes.ROUTES``): each route's access gives its security and its
401/403, its parameter models its parameters, its body and answer models the schemas (the
same models the handlers validate with and answer from, ``admin_models``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from proxy import __version__
from proxy.web import admin_models as api
from proxy.web.admin_auth import Access
from proxy.web.admin_endpoint import Endpoint, NoBody, Stream
from proxy.web.admin_params import LayerQuery, NoParams, Params

_REF = "#/components/schemas/{model}"
_SUCCESS = {200: "OK", 201: "Created: the call made something new", 503: "Not ready"}
#: Error answers, each once in components.responses: name and what it means.
_ERRORS = {
    400: ("BadRequest", "Invalid input (param names the field or variable)"),
    401: ("Unauthorized", "Missing or invalid admin token"),
    403: ("Forbidden", "Read-only token used for a write"),
    404: ("NotFound", "Unknown prompt, version or rollout"),
    409: ("Conflict", "Forbidden move (nothing to roll back to, a second rollout...)"),
    413: ("TooLarge", "Body too large"),
    503: (
        "Unavailable",
        "Registry (or shadow pair) store unavailable; the proxy keeps serving the last snapshot",
    ),
}
#: The role a token needs (``admin.tokens[].role``), per access.
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.PUBLIC: [],
    Access.READ: [{"bearer": ["read"]}],
    Access.WRITE: [{"bearer": ["admin"]}],
}
_TAGS = [
    {"name": "prompts", "description": "Immutable versions, promote, rollback, history, audit"},
    {"name": "rollouts", "description": "Canary and shadow rollouts and their analysis"},
    {"name": "tenants", "description": "Tenant records: tier and the API keys that name them"},
    {"name": "shadow", "description": "Shadow pairs and the noise-calibrated report"},
    {"name": "fleet", "description": "The replicas and the registry revision each serves"},
    {"name": "registry", "description": "The registry store: state, restore, export, import"},
    {"name": "probes", "description": "Liveness, readiness, metrics, this document"},
]
_DESCRIPTION = (
    "Prompt registry: immutable versions, promote, rollback, rollouts, shadow pairs, audit. "
    "Every error is in the OpenAI shape (components.schemas.Error); a 400's param names the "
    "field (params.a.b[0], variables[1].default). A method a path does not take is a 405 "
    "whose Allow header lists the ones it does. Access: routes whose security names the "
    "`read` role need a read or admin token (anyone may call them while no token is "
    "configured); `admin`, an admin token (none configured: a 401 saying how to set one)."
)


class _Schemas(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title on every field (the names say it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


_Use = tuple[type[BaseModel], JsonSchemaMode]


def _models(routes: Iterable[Endpoint[Any, Any, Any, Any]]) -> list[_Use]:
    found: dict[_Use, None] = {
        (api.Error, "serialization"): None,
        (api.ShadowPair, "serialization"): None,
    }
    for route in routes:
        if route.body is not NoBody:
            found[(route.body, "validation")] = None
        if route.raw_body is not None:
            found[(route.raw_body, "validation")] = None
        if not isinstance(route.response, Stream):
            found[(route.response, "serialization")] = None
    return list(found)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent, never null: ``anyOf [X, null]`` becomes X."""
    merged = {k: v for k, v in schema.items() if k != "anyOf" and (k, v) != ("default", None)}
    variants = schema.get("anyOf")
    if not variants or {"type": "null"} not in variants:
        return {**merged, **({"anyOf": variants} if variants else {})}
    rest = [v for v in variants if v != {"type": "null"}]
    if len(rest) == 1:
        return {**rest[0], **merged}
    return {**merged, "anyOf": rest}


def _parameters(model: type[Params], where: str) -> list[dict[str, Any]]:
    if model is NoParams:
        return []
    schema = model.model_json_schema(by_alias=True, ref_template=_REF, schema_generator=_Schemas)
    if "$defs" in schema:
        raise TypeError(f"{model.__name__}: a parameter must be a plain value")
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _without_null(prop),
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(route: Endpoint[Any, Any, Any, Any], refs: dict[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    answer = route.response
    if isinstance(answer, Stream):
        ok: dict[str, Any] = {
            "description": answer.description,
            "content": {answer.media_type: {"schema": dict(answer.schema)}},
        }
        if answer.headers:
            ok["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in answer.headers.items()
            }
        responses["200"] = ok
    else:
        for status in (200, *route.also):
            responses[str(status)] = _json(refs[(answer, "serialization")], _SUCCESS[status])
    errors = set(route.errors)
    if route.access is not Access.PUBLIC:
        errors.add(401)
    if route.access is Access.WRITE:
        errors.add(403)
    if route.reads_body:
        errors.add(413)
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    return responses


def _operation_id(route: Endpoint[Any, Any, Any, Any]) -> str:
    # Probes share handlers across their aliases (/healthz, /livez): their paths name them.
    if route.path.startswith("/admin/"):
        return route.name.strip("_")
    return route.path.strip("/").replace("/", "_")


def _operation(route: Endpoint[Any, Any, Any, Any], refs: dict[Any, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "security": _SECURITY[route.access],
    }
    parameters = _parameters(route.params, "path") + _parameters(route.query, "query")
    if route.layered:
        parameters += _parameters(LayerQuery, "query")
    if parameters:
        operation["parameters"] = parameters
    body = route.raw_body or (None if route.body is NoBody else route.body)
    if body is not None:
        operation["requestBody"] = {
            # A body without a required field may be left out: it reads as {}.
            "required": any(f.is_required() for f in body.model_fields.values()),
            "content": {"application/json": {"schema": refs[(body, "validation")]}},
        }
    operation["responses"] = _responses(route, refs)
    return operation


def document(routes: Sequence[Endpoint[Any, Any, Any, Any]]) -> dict[str, Any]:
    refs, defs = models_json_schema(_models(routes), ref_template=_REF, schema_generator=_Schemas)
    schemas = defs.get("$defs", {})
    for schema in schemas.values():
        schema.pop("title", None)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "promptproxy admin API",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "tags": _TAGS,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": {
                name: _json(refs[(api.Error, "serialization")], text)
                for name, text in _ERRORS.values()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "PROMPTPROXY_ADMIN_TOKEN (role admin) or a named token of "
                    "admin.tokens (role admin or read); the token's name is the actor in the "
                    "audit log",
                }
            },
        },
        "paths": paths,
    }
