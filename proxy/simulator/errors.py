"""Error bodies in OpenAI's shape and, for ``/v1/messages``, in Anthropic's.

SDKs and the proxy branch on ``error.type``/``error.code``, so each status maps to
the type/code pair the provider actually uses for it rather than a generic placeholder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import orjson
from aiohttp import web

from .settings import DEFAULT_RETRY_AFTER_MS, EXHAUSTED_RATE_LIMIT_HEADERS, JSON_HEADERS


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    type: str
    code: str | None
    message: str


_CATALOG: Final = MappingProxyType(
    {
        400: ErrorSpec(
            "invalid_request_error",
            "invalid_value",
            "Simulated bad request: invalid value for '{param}'.",
        ),
        401: ErrorSpec(
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        403: ErrorSpec(
            "permission_error",
            "permission_denied",
            "Simulated permission error: you are not allowed to sample from this model.",
        ),
        404: ErrorSpec(
            "invalid_request_error",
            "model_not_found",
            "The model `{model}` does not exist or you do not have access to it.",
        ),
        409: ErrorSpec(
            "invalid_request_error",
            "conflict",
            "Simulated conflict: another request modified this resource.",
        ),
        422: ErrorSpec(
            "invalid_request_error",
            "unprocessable_entity",
            "Simulated unprocessable entity: the request was well-formed but invalid.",
        ),
        429: ErrorSpec(
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for {model} on requests per min (RPM): Limit 10000, "
            "Used 10000, Requested 1. Please try again in {retry_s}s.",
        ),
        500: ErrorSpec(
            "server_error",
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
        ),
        502: ErrorSpec("server_error", "bad_gateway", "Simulated bad gateway."),
        503: ErrorSpec(
            "server_error",
            "service_unavailable",
            "The engine is currently overloaded, please try again later.",
        ),
        504: ErrorSpec("server_error", "timeout", "Simulated gateway timeout."),
    }
)

_GENERIC_CLIENT: Final = ErrorSpec(
    "invalid_request_error", None, "Simulated error with status {status}."
)
_GENERIC_SERVER: Final = ErrorSpec("server_error", None, "Simulated error with status {status}.")

# Statuses after which a real provider tells clients when to come back.
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


class RequestError(Exception):
    """A client mistake detected while reading a request; rendered as a 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def json_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    merged = {**JSON_HEADERS, **headers} if headers else JSON_HEADERS
    return web.Response(status=status, body=error_body(message, type_, param, code), headers=merged)


def request_error_response(exc: RequestError) -> web.Response:
    return json_error(400, exc.message, param=exc.param, code=exc.code)


def simulated_error(
    status: int, *, model: str, param: str, retry_after_ms: int | None
) -> web.Response:
    """The response for ``x-sim-status`` / ``sim-status-<code>``."""
    spec = _CATALOG.get(status) or (_GENERIC_CLIENT if status < 500 else _GENERIC_SERVER)
    retry_ms = retry_after_ms if retry_after_ms is not None else DEFAULT_RETRY_AFTER_MS
    message = spec.message.format(
        param=param, model=model or "unknown", status=status, retry_s=_seconds(retry_ms)
    )
    headers: dict[str, str] = {}
    if status == 429:
        headers.update(EXHAUSTED_RATE_LIMIT_HEADERS)
    if status in _RETRY_AFTER_STATUSES or retry_after_ms is not None:
        headers["retry-after"] = _seconds(retry_ms)
        headers["retry-after-ms"] = str(retry_ms)
    return json_error(
        status,
        message,
        spec.type,
        param if status == 400 else ("model" if status == 404 else None),
        spec.code,
        headers,
    )


def _seconds(ms: int) -> str:
    # retry-after is whole seconds by spec; round up so clients never come back early.
    return str(math.ceil(ms / 1000))


# --- Anthropic's shape: {"type": "error", "error": {"type", "message"}, "request_id"} -------

_ANTHROPIC_CATALOG: Final = MappingProxyType(
    {
        400: ("invalid_request_error", "Simulated bad request: invalid value for '{param}'."),
        401: ("authentication_error", "invalid x-api-key"),
        403: ("permission_error", "Simulated permission error: your API key may not use {model}."),
        404: ("not_found_error", "model: {model}"),
        409: ("conflict_error", "Simulated conflict: another request modified this resource."),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 4,000 requests "
            "per minute. Please try again in {retry_s}s.",
        ),
        500: ("api_error", "Internal server error"),
        529: ("overloaded_error", "Overloaded"),
    }
)

# 529 is Anthropic's "try again later"; its SDKs honour retry-after on it as on a 429.
_ANTHROPIC_RETRY_AFTER_STATUSES: Final = frozenset({429, 529})


def anthropic_error_type(status: int) -> str:
    """The ``error.type`` Anthropic documents for a status (other 4xx are invalid requests)."""
    entry = _ANTHROPIC_CATALOG.get(status)
    if entry is not None:
        return entry[0]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error_body(type_: str, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    )


def anthropic_json_error(
    status: int,
    message: str,
    request_id: str,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = anthropic_error_body(type_ or anthropic_error_type(status), message, request_id)
    merged = {**JSON_HEADERS, **headers} if headers else JSON_HEADERS
    return web.Response(status=status, body=body, headers=merged)


def anthropic_error_message(status: int, *, model: str, param: str, retry_ms: int) -> str:
    entry = _ANTHROPIC_CATALOG.get(status)
    template = entry[1] if entry is not None else "Simulated error with status {status}."
    return template.format(
        param=param, model=model or "unknown", status=status, retry_s=_seconds(retry_ms)
    )


def anthropic_simulated_error(
    status: int, *, model: str, param: str, retry_after_ms: int | None, request_id: str
) -> web.Response:
    """``x-sim-status`` / ``sim-status-<code>`` on the Messages face."""
    retry_ms = retry_after_ms if retry_after_ms is not None else DEFAULT_RETRY_AFTER_MS
    message = anthropic_error_message(status, model=model, param=param, retry_ms=retry_ms)
    headers: dict[str, str] = {}
    if status in _ANTHROPIC_RETRY_AFTER_STATUSES or retry_after_ms is not None:
        headers["retry-after"] = _seconds(retry_ms)
        # Anthropic documents only retry-after; its SDKs read this one first, which lets
        # tests retry in milliseconds.
        headers["retry-after-ms"] = str(retry_ms)
    return anthropic_json_error(status, message, request_id, headers=headers)
