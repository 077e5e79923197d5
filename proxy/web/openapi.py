"""The admin API's OpenAPI 3.1 description, served at /admin/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from proxy import __version__
from proxy.registry.models import INT64_MAX
from proxy.registry.templates import VARIABLE_TYPES
from proxy.web.admin_formats import SINCE_NUMBER


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
    for code, text in (
        ("400", "Invalid input (param names the field or variable)"),
        ("401", "Missing or invalid admin token"),
        ("403", "Read-only token used for a write"),
        ("404", "Unknown prompt or version"),
        ("409", "Forbidden move (nothing to roll back to, a second rollout...)"),
        ("503", "Registry store unavailable; the proxy keeps serving the last snapshot"),
    )
}
_SLUG_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
_SLUG = {"name": "slug", "in": "path", "required": True, "schema": _SLUG_SCHEMA}
#: Version numbers, audit sequence numbers, limits: what the stores hold (SQLite INTEGER).
_COUNT = {"type": "integer", "minimum": 1, "maximum": INT64_MAX}
#: A JSON value a version keeps as sent: numbers finite, integers within 64 bits (NaN,
#: Infinity and wider integers are a 400 naming their path). JSON Schema has no "finite".
_JSON_VALUE = {
    "description": "Any JSON value; integers from -2^63 to 2^63-1, no NaN or Infinity",
}


def _query(name: str, schema: dict[str, Any], *, required: bool = False, **extra: Any) -> Any:
    return {"name": name, "in": "query", "required": required, "schema": schema, **extra}


def _op(
    summary: str,
    response: dict[str, Any],
    *,
    write: bool = False,
    created: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``created``: the call may also answer 201 (it made something new) with the same body."""
    responses = {"200": response, **({"201": response} if created else {}), **_ERRORS}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if write:
        op["security"] = [{"bearer": []}]
    op.update(extra)
    return op


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_STATUS = {"type": "string", "enum": ["draft", "candidate", "prod", "deprecated"]}
# StickyKey.parse: the header name is stripped and lower-cased; the token characters of
# RFC 9110. The credential headers it refuses are named in the description.
_STICKY_PATTERN = r"^(none|user|tenant|header:[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}[ \t]*)$"
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Variable": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                "description": "A template variable (Jinja's own names, like range or loop, "
                "are reserved)",
            },
            "type": {
                "type": ["string", "null"],
                "enum": [*sorted(t for t in VARIABLE_TYPES if t), None],
            },
            "default": {
                **_JSON_VALUE,
                "description": "Present: the caller may omit the variable. "
                + _JSON_VALUE["description"],
            },
        },
    },
    "VersionIn": {
        "type": "object",
        "required": ["template"],
        "additionalProperties": False,
        "properties": {
            "template": {
                "type": "string",
                "minLength": 1,
                "description": "Jinja2 (sandboxed) system prompt, e.g. Hello {{ customer_name }}. "
                "A template the sandbox refuses, or one using undeclared variables, is a 400 "
                "whose param is template",
            },
            "variables": {"type": "array", "items": _ref("Variable")},
            "model": {
                "type": ["string", "null"],
                "description": "Model pin, e.g. gpt-4o-2024-08-06",
            },
            "params": {
                "type": "object",
                "additionalProperties": _JSON_VALUE,
                "description": "Default generation parameters. " + _JSON_VALUE["description"],
            },
            "author": {"type": ["string", "null"]},
            "changelog": {"type": "string"},
        },
    },
    "Version": {
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "version": {"type": "integer"},
            "template": {"type": "string"},
            "variables": {"type": "array", "items": _ref("Variable")},
            "model": {"type": ["string", "null"]},
            "params": {"type": "object"},
            "author": {"type": "string"},
            "changelog": {"type": "string"},
            "created_at": {"type": "number"},
            "sha256": {"type": "string"},
            "status": _STATUS,
        },
    },
    "Summary": {
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "prod_version": {"type": ["integer", "null"]},
            "latest_version": {"type": "integer"},
            "versions": {"type": "integer"},
            "updated_at": {"type": "number"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "seq": {"type": "integer"},
            "at": {"type": "number"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "slug": {"type": "string"},
            "version": {"type": ["integer", "null"]},
            "from_status": {"type": ["string", "null"]},
            "to_status": {"type": ["string", "null"]},
            "reason": {"type": "string"},
            "previous_prod": {"type": ["integer", "null"]},
            "detail": {
                "type": ["object", "null"],
                "description": "Rollout changes: rollout_id, mode, percent, sticky",
            },
        },
    },
    "RolloutIn": {
        "type": "object",
        "required": ["candidate", "mode", "percent"],
        "additionalProperties": False,
        "properties": {
            "candidate": _COUNT,
            "mode": {"type": "string", "enum": ["canary", "shadow"]},
            "percent": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
            "sticky": {
                "type": ["string", "null"],
                "pattern": _STICKY_PATTERN,
                "description": "header:<name>, user, tenant or none. Omitted: none for a new "
                "rollout, the running rollout's key for a percentage change. Headers that carry "
                "credentials (authorization, api-key, cookie...) are refused",
            },
            "analysis": {
                "anyOf": [_ref("AnalysisPolicy"), {"type": "null"}],
                "description": "Automated analysis of a new rollout. Omitted or null on a "
                "percentage change: the running policy stays; a different one is a 409 "
                "(abort and start again to change it). An invalid policy is a 400 whose "
                "param names the field, e.g. analysis.steps[2]",
            },
            "reason": {"type": "string"},
        },
    },
    "AnalysisPolicy": {
        "type": "object",
        "additionalProperties": False,
        "description": "Omitted fields take their defaults",
        "properties": {
            "interval": {
                "type": "number",
                "minimum": 1,
                "maximum": 3600,
                "default": 60,
                "description": "Seconds between verdicts",
            },
            "min_samples": {
                "type": "integer",
                "minimum": 1,
                "default": 100,
                "description": "Requests per arm per window before a verdict can pass or fail",
            },
            "failure_limit": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "Failed verdicts tolerated; the next failure aborts",
            },
            "steps": {
                "type": "array",
                "items": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 100,
                    "multipleOf": 0.01,
                },
                "default": [],
                "description": "Percents to ramp through, strictly ascending; empty: the "
                "analyser never ramps or promotes by itself",
            },
            "alpha": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 0.5,
                "default": 0.01,
                "description": "Significance level of every statistical test",
            },
            "thresholds": _ref("AnalysisThresholds"),
        },
    },
    "AnalysisThresholds": {
        "type": "object",
        "additionalProperties": False,
        "description": "Limits of the checks; null turns a check off",
        "properties": {
            "error_rate_increase": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 1,
                "default": 0.02,
                "description": "Canary error share minus stable's (absolute)",
            },
            "p95_latency_ratio": {
                "type": ["number", "null"],
                "minimum": 1,
                "default": 1.5,
                "description": "Canary p95 duration / stable p95",
            },
            "p95_ttft_ratio": {
                "type": ["number", "null"],
                "minimum": 1,
                "default": 1.5,
                "description": "Canary p95 time to first token / stable p95 (streams)",
            },
            "length_finish_increase": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 1,
                "default": 0.05,
                "description": 'Share of finish_reason "length", canary minus stable',
            },
            "answer_length_drift": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "default": 0.3,
                "description": "|canary mean output tokens / stable mean - 1|",
            },
            "shadow_divergence": {
                "type": ["boolean", "null"],
                "default": True,
                "description": "Use the noise-calibrated shadow verdict (shadow mode only)",
            },
            "feedback_drop": {
                "type": ["object", "null"],
                "default": None,
                "additionalProperties": False,
                "required": ["name", "max_drop"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
                    "max_drop": {"type": "number", "minimum": 0},
                },
                "description": "Largest tolerated drop of a feedback score's mean, stable "
                "minus canary",
            },
        },
    },
    "AnalysisState": {
        "type": "object",
        "properties": {
            "step": {
                "type": ["integer", "null"],
                "description": "Index into the policy's steps",
            },
            "failures": {"type": "integer"},
            "next_at": {"type": "number"},
            "holder": {
                "type": ["string", "null"],
                "description": "The replica holding the analysis lease",
            },
            "verdicts": {
                "type": "array",
                "items": _ref("Verdict"),
                "description": "Newest first",
            },
        },
    },
    "LastAnalysis": {
        "type": "object",
        "required": ["slug", "rollout_id", "failures", "verdicts"],
        "properties": {
            "slug": {"type": "string"},
            "rollout_id": {"type": "string"},
            "failures": {"type": "integer"},
            "verdicts": {"type": "array", "items": _ref("Verdict")},
        },
    },
    "Verdict": {
        "type": "object",
        "properties": {
            "at": {"type": "number"},
            "rollout_id": {"type": "string"},
            "verdict": {"type": "string", "enum": ["pass", "fail", "inconclusive"]},
            "percent": {"type": "number"},
            "window": {
                "type": "object",
                "properties": {"start": {"type": "number"}, "end": {"type": "number"}},
            },
            "samples": {
                "type": "object",
                "properties": {"stable": {"type": "integer"}, "canary": {"type": "integer"}},
            },
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "result": {"type": "string", "enum": ["pass", "fail", "inconclusive"]},
                        "stable": {"type": ["number", "null"]},
                        "candidate": {"type": ["number", "null"]},
                        "limit": {"type": ["number", "null"]},
                        "p_value": {"type": ["number", "null"]},
                        "note": {"type": "string"},
                    },
                },
            },
            "action": {"type": ["string", "null"], "enum": ["abort", "ramp", "promote", None]},
            "actor": {"type": "string"},
        },
    },
    "ServedAt": {
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "at": {"type": "string"},
            "prod_version": {"type": ["integer", "null"]},
            "rollout": {
                "description": "The rollout running at `at`, from its audit entries; null "
                "if none. A field an older audit entry does not record is null.",
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": ["string", "null"]},
                            "candidate": {"type": ["integer", "null"]},
                            "mode": {
                                "type": ["string", "null"],
                                "enum": ["canary", "shadow", None],
                            },
                            "percent": {"type": ["number", "null"]},
                            "sticky": {"type": ["string", "null"]},
                            "started_at": {"type": "number"},
                            "percent_since": {"type": "number"},
                        },
                    },
                    {"type": "null"},
                ],
            },
        },
    },
    "Rollout": {
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "id": {"type": "string"},
            "candidate": {"type": "integer"},
            "mode": {"type": "string", "enum": ["canary", "shadow"]},
            "percent": {"type": "number"},
            "basis_points": {"type": "integer"},
            "sticky": {"type": "string"},
            "started_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "actor": {"type": "string"},
            "restore_status": _STATUS,
            "analysis": {"anyOf": [_ref("AnalysisPolicy"), {"type": "null"}]},
            "prod_version": {"type": ["integer", "null"]},
        },
    },
    "RolloutStatus": {
        "allOf": [
            _ref("Rollout"),
            {
                "type": "object",
                "properties": {
                    "analysis_state": {
                        "anyOf": [_ref("AnalysisState"), {"type": "null"}],
                        "description": "null when the rollout has no analysis policy",
                    }
                },
            },
        ]
    },
    "PromoteIn": {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {"version": _COUNT, "reason": {"type": "string"}},
    },
    "RollbackIn": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": {"type": "string"}},
    },
}

_LIST = {"type": "object", "properties": {"data": {"type": "array"}}}

_SCHEMAS["FleetWait"] = {
    "type": "object",
    "description": "How a change reached the replicas live when it was written",
    "properties": {
        "revision": {"type": "integer", "description": "registry revision waited for"},
        "replicas": {"type": "integer", "description": "live replicas waited for"},
        "confirmed": {"type": "integer", "description": "those serving the revision or later"},
        "complete": {"type": "boolean"},
        "elapsed_ms": {"type": "integer"},
        "timeout_seconds": {"type": "number"},
        "missing": {
            "type": "array",
            "description": "replicas that did not confirm in time, as last seen",
            "items": {
                "type": "object",
                "properties": {
                    "replica": {"type": "string"},
                    "revision": {"type": ["integer", "null"]},
                    "heartbeat_age_seconds": {"type": ["number", "null"]},
                },
            },
        },
        "error": {"type": ["string", "null"], "description": "the fleet board failed"},
    },
}
_SCHEMAS["Served"] = {
    "type": "object",
    "description": "Who serves the write: the answering process, and with `wait` the fleet",
    "properties": {
        "revision": {"type": ["integer", "null"], "description": "store revision after it"},
        "here": {
            "type": "boolean",
            "description": "the answering process serves it (false only if its store read "
            "failed right after the write; the write is made either way)",
        },
        "fleet": {"anyOf": [_ref("FleetWait"), {"type": "null"}]},
    },
}
_SCHEMAS["Replica"] = {
    "type": "object",
    "properties": {
        "replica": {"type": "string", "description": "host:pid:suffix"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "version": {"type": "string", "description": "promptproxy version"},
        "revision": {"type": "integer", "description": "registry revision it serves"},
        "generation": {
            "type": ["string", "null"],
            "description": "registry generation it serves (null: no snapshot)",
        },
        "state": {
            "type": "string",
            "enum": ["ok", "replaced", "empty"],
            "description": "replaced: the store lost the registry it serves; empty: it serves "
            "no prompt",
        },
        "prompts": {"type": "integer", "description": "prompts in the snapshot it serves"},
        "behind": {
            "type": ["integer", "null"],
            "description": "revisions behind the store; null unless it serves the generation "
            "the store holds",
        },
        "served_at": {"type": ["number", "null"]},
        "staleness_seconds": {"type": "number"},
        "heartbeat_age_seconds": {"type": "number"},
        "healthy": {
            "type": "boolean",
            "description": "its last store read worked and found the registry it serves",
        },
        "live": {"type": "boolean"},
        "this": {"type": "boolean", "description": "the replica that answered"},
    },
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
    "description": "Seconds to wait until every live replica serves the change; `served.fleet` "
    "then says who confirmed and names who did not",
}


def _written(name: str) -> dict[str, Any]:
    return _ok(
        {"allOf": [_ref(name), {"type": "object", "properties": {"served": _ref("Served")}}]}
    )


# The registry store itself: identity, restore after a loss, export and import (backups).
_RESTORE_RESULT = {
    "type": "object",
    "properties": {
        "source": {"type": "string", "enum": ["snapshot", "file"]},
        "generation": {"type": "string"},
        "revision": {"type": "integer"},
        "prompts": {"type": "integer"},
        "versions": {"type": "integer"},
        "unchanged": {"type": "boolean"},
    },
}
_EXPORT = {
    "type": "object",
    "required": ["format", "generation", "revision", "versions"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": "promptproxy-registry/1"},
        "generation": {"type": "string"},
        "revision": {"type": "integer"},
        "versions": {"type": "array", "items": _ref("Version")},
        "rollouts": {"type": "array", "items": {"type": "object"}},
        "audit": {"type": "array", "items": _ref("AuditEntry")},
    },
}
_REGISTRY_PATHS: dict[str, Any] = {
    "/admin/v1/registry": {
        "get": _op(
            "Whether the store is the registry this replica serves (state ok or replaced)",
            _ok({"type": "object"}),
        )
    },
    "/admin/v1/registry/restore": {
        "post": _op(
            "Restore a lost store (emptied or replaced) from this replica's snapshot",
            _ok(_RESTORE_RESULT),
            write=True,
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["source"],
                            "additionalProperties": False,
                            "properties": {
                                "source": {"const": "snapshot"},
                                "reason": {"type": "string"},
                                "overwrite": {
                                    "type": "boolean",
                                    "description": "replace prompts the store holds that are "
                                    "not an older copy of this registry (409 without it)",
                                },
                            },
                        }
                    }
                },
            },
        )
    },
    "/admin/v1/registry/export": {
        "get": _op("The whole registry: versions, statuses, rollouts, audit", _ok(_EXPORT))
    },
    "/admin/v1/registry/import": {
        "post": _op(
            "Load an export into an empty (or lost) store; the same content is a no-op",
            _ok(_RESTORE_RESULT),
            write=True,
            parameters=[
                {"name": "reason", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "overwrite",
                    "in": "query",
                    "required": False,
                    "description": "replace prompts the store holds (409 without it)",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
            ],
            requestBody={"required": True, "content": {"application/json": {"schema": _EXPORT}}},
        )
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "promptproxy admin API",
        "version": __version__,
        "description": "Prompt registry: immutable versions, promote, rollback, rollouts, audit. "
        "Every error is in the OpenAI shape; a 400's param names the field (params.a.b[0], "
        "variables[1].default). A method a path does not take is a 405 whose Allow header lists "
        "the ones it does.",
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/admin/v1/prompts": {"get": _op("List prompts", _ok(_LIST))},
        "/admin/v1/prompts/{slug}": {
            "parameters": [_SLUG],
            "get": _op("A prompt and its versions", _ok(_LIST)),
        },
        "/admin/v1/prompts/{slug}/versions": {
            "parameters": [_SLUG],
            "post": _op(
                "Create a version (idempotent: identical content returns the latest, 200)",
                _ok(
                    {
                        "type": "object",
                        "properties": {
                            "created": {"type": "boolean"},
                            "version": _ref("Version"),
                            "served": _ref("Served"),
                        },
                    }
                ),
                write=True,
                created=True,
                requestBody=_body("VersionIn"),
                parameters=[_WAIT],
            ),
        },
        "/admin/v1/prompts/{slug}/versions/{version}": {
            "parameters": [
                _SLUG,
                {"name": "version", "in": "path", "required": True, "schema": _COUNT},
            ],
            "get": _op("One version", _ok(_ref("Version"))),
        },
        "/admin/v1/prompts/{slug}/promote": {
            "parameters": [_SLUG],
            "post": _op(
                "Make a version prod; the former prod becomes deprecated",
                _written("AuditEntry"),
                write=True,
                requestBody=_body("PromoteIn"),
                parameters=[_WAIT],
            ),
        },
        "/admin/v1/prompts/{slug}/rollback": {
            "parameters": [_SLUG],
            "post": _op(
                "Make the last former prod prod again",
                _written("AuditEntry"),
                write=True,
                parameters=[_WAIT],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RollbackIn")}},
                },
            ),
        },
        "/admin/v1/prompts/{slug}/history": {
            "parameters": [
                _SLUG,
                {
                    "name": "at",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "format": "date-time"},
                    "description": "ISO-8601 instant: answer which version was prod then",
                },
                _query("limit", _COUNT, description="Most entries to return (newest first)"),
            ],
            "get": _op(
                "Audit entries of a prompt; with `at`, what it served then: the prod version "
                "and the rollout running then (candidate, mode, percent, sticky key)",
                _ok(
                    {
                        "anyOf": [
                            {
                                "type": "object",
                                "properties": {
                                    "data": {"type": "array", "items": _ref("AuditEntry")}
                                },
                            },
                            _ref("ServedAt"),
                        ]
                    }
                ),
            ),
        },
        "/admin/v1/prompts/{slug}/diff": {
            "parameters": [
                _SLUG,
                _query("from", _COUNT, required=True),
                _query("to", _COUNT, required=True),
            ],
            "get": _op("Unified diff between two versions", _ok({"type": "object"})),
        },
        "/admin/v1/prompts/{slug}/rollout": {
            "parameters": [_SLUG],
            "put": _op(
                "Start a canary or shadow rollout (201), or change the running one's percentage "
                "with the same candidate and mode (200; cohorts are kept)",
                _written("Rollout"),
                write=True,
                created=True,
                requestBody=_body("RolloutIn"),
                parameters=[_WAIT],
            ),
            "get": _op(
                "The running rollout (404 if none) and its analysis state",
                _ok(_ref("RolloutStatus")),
            ),
            "delete": _op(
                "Abort: all traffic back to stable, the candidate back to its former status",
                _written("AuditEntry"),
                write=True,
                parameters=[_WAIT],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RollbackIn")}},
                },
            ),
        },
        "/admin/v1/prompts/{slug}/analysis": {
            "parameters": [_SLUG],
            "get": _op(
                "The latest analysed rollout of the slug, running or ended (after an abort: "
                "the verdicts that caused it); 404 if none",
                _ok(_ref("LastAnalysis")),
            ),
        },
        "/admin/v1/prompts/{slug}/rollout/promote": {
            "parameters": [_SLUG],
            "post": _op(
                "Make the candidate prod in one step and end the rollout",
                _written("AuditEntry"),
                write=True,
                parameters=[_WAIT],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RollbackIn")}},
                },
            ),
        },
        "/admin/v1/rollouts": {"get": _op("Every running rollout", _ok(_LIST))},
        "/admin/v1/fleet": {
            "get": _op(
                "Every replica on the fleet board: the registry it serves (generation, "
                "revision, state), how far behind the store, how stale, live or not",
                _ok(
                    {
                        "type": "object",
                        "properties": {
                            "revision": {"type": ["integer", "null"]},
                            "generation": {
                                "type": ["string", "null"],
                                "description": "the generation the store holds",
                            },
                            "replica": {"type": "string", "description": "the one answering"},
                            "live": {"type": "integer"},
                            "data": {"type": "array", "items": _ref("Replica")},
                        },
                    }
                ),
            )
        },
        "/admin/v1/prompts/{slug}/shadow/pairs": {
            "parameters": [
                _SLUG,
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "anyOf": [
                            {"type": "string", "pattern": f"^{SINCE_NUMBER}$"},
                            {"type": "string", "format": "date-time"},
                        ]
                    },
                    "description": "How far back: seconds (600), a duration (10m, 2h), a unix "
                    "time or an ISO-8601 time with a zone",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean"},
                    "description": "Keep the response open and stream new pairs as they come",
                },
                {
                    "name": "rollout",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                    "description": "Only this rollout's pairs: its id, or `latest` (the running "
                    "rollout, else the last one; 404 if the prompt never had one), also with "
                    "`follow`. Without it, the pairs of every rollout",
                },
            ],
            "get": {
                "summary": "Shadow pairs of a prompt (stable and candidate answers side by "
                "side), oldest first, one JSON object per line",
                "responses": {
                    "200": {
                        "description": "JSON lines",
                        "headers": {
                            "X-Promptproxy-Rollout": {
                                "description": "The rollout whose pairs these are, when "
                                "`rollout` was given",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            },
        },
        "/admin/v1/prompts/{slug}/shadow/rollout": {
            "parameters": [_SLUG],
            "get": _op(
                "Which rollout `rollout=latest` selects now: the running one, else the last "
                "(404 if the prompt never had one)",
                _ok(
                    {
                        "type": "object",
                        "properties": {
                            "slug": {"type": "string"},
                            "rollout_id": {"type": "string"},
                            "running": {"type": "boolean"},
                        },
                    }
                ),
            ),
        },
        "/admin/v1/audit": {
            "parameters": [
                _query("slug", _SLUG_SCHEMA),
                _query("limit", _COUNT, description="Most entries to return; at most 1000 are"),
                _query("before", _COUNT, description="Entries with a smaller seq (paging)"),
            ],
            "get": _op("The append-only audit log, newest first", _ok({"type": "object"})),
        },
        **_REGISTRY_PATHS,
    },
}
