"""What a span says about an exchange: its name and attributes, as plain data.

The GenAI semantic conventions (``gen_ai.*``; spans of inference calls: name
``{gen_ai.operation.name} {gen_ai.request.model}``) plus the prompt's own facts under
``promptproxy.*``. Pure: no OpenTelemetry import, so it is tested and read without the
``otel`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.providers import Provider

#: An attribute's value as OpenTelemetry takes it (no None: absent attributes are left out).
AttributeValue = str | bool | int | float | Sequence[str]
Attributes = dict[str, AttributeValue]

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
SLUG = "promptproxy.prompt.slug"
VERSION = "promptproxy.prompt.version"
LAYERS = "promptproxy.prompt.layers"
VARIANT = "promptproxy.prompt.variant"
ARM = "promptproxy.arm"
ROLLOUT = "promptproxy.rollout.id"
TENANT = "promptproxy.tenant"
TIER = "promptproxy.tier"
REQUEST_ID = "promptproxy.request_id"
#: The configured provider's name (``providers[].name``); ``gen_ai.provider.name`` is the
#: API it speaks.
PROVIDER_NAME = "promptproxy.provider"
SHADOW_KIND = "promptproxy.shadow.kind"
TTFB = "promptproxy.time_to_first_byte"

#: The request parameters of the conventions, by the body's field.
_REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature", float),
    ("top_p", "gen_ai.request.top_p", float),
    ("max_tokens", "gen_ai.request.max_tokens", int),
    ("max_completion_tokens", "gen_ai.request.max_tokens", int),
    ("max_output_tokens", "gen_ai.request.max_tokens", int),
)

_OPERATIONS = {
    Route.CHAT: "chat",
    Route.MESSAGES: "chat",
    Route.RESPONSES: "chat",
    Route.COMPLETIONS: "text_completion",
    Route.EMBEDDINGS: "embeddings",
}


def operation(route: Route) -> str | None:
    """``gen_ai.operation.name`` of a route; None: not a model call (``/v1/models``,
    files, ...)."""
    return _OPERATIONS.get(route)


def provider_api(provider: Provider) -> str:
    """``gen_ai.provider.name``: the API the provider speaks (a self-hosted server behind
    an OpenAI-shaped URL speaks OpenAI's)."""
    return "anthropic" if provider.messages_api else "openai"


_PATHS = {
    Route.CHAT: "/v1/chat/completions",
    Route.COMPLETIONS: "/v1/completions",
    Route.EMBEDDINGS: "/v1/embeddings",
    Route.RESPONSES: "/v1/responses",
    Route.MODELS: "/v1/models",
    Route.MESSAGES: "/v1/messages",
}
HTTP_ROUTE = "http.route"


def http_route(route: Route) -> str:
    """``http.route``: the route's path, bounded (a ``/p/{slug}/v1`` URL is its route's)."""
    return _PATHS.get(route, "/v1/{path}")


def server_span_name(route: Route, method: str) -> str:
    """The request's span, named as HTTP servers' are: ``POST /v1/chat/completions``."""
    return f"{method} {http_route(route)}"


def client_span_name(route: Route, method: str, model: str | None) -> str:
    """A provider call's span, named as GenAI clients' are: ``chat gpt-4o-mini``."""
    op = operation(route)
    if op is None:
        return f"{method} {http_route(route)}"
    return f"{op} {model}" if model else op


def server_of(base_url: str) -> tuple[str, int]:
    """``server.address`` and ``server.port`` of a provider's base URL."""
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def request_params(payload: Mapping[str, Any] | None) -> Attributes:
    """The sampling parameters the request sent (after the prompt's defaults)."""
    found: Attributes = {}
    if payload is None:
        return found
    for field, name, kind in _REQUEST_PARAMS:
        value = payload.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = kind(value)
    return found


def exchange_attributes(exchange: Exchange) -> Attributes:
    """What a finished exchange's span says, primary or shadow: the answer and the
    prompt."""
    attributes = answer_attributes(exchange)
    attributes.update(prompt_attributes(exchange))
    return attributes


def answer_attributes(exchange: Exchange) -> Attributes:
    """What a provider call's span says once it finished: the model asked and answered,
    the usage, the finish reason, the status and any error."""
    attributes: Attributes = {}
    put = attributes.__setitem__
    op = operation(exchange.route)
    if op is not None:
        put(OPERATION, op)
    model = exchange.model_sent or exchange.model_requested
    if model:
        put(REQUEST_MODEL, model)
    if exchange.model_answered:
        put(RESPONSE_MODEL, exchange.model_answered)
    if exchange.input_tokens is not None:
        put(INPUT_TOKENS, exchange.input_tokens)
    if exchange.output_tokens is not None:
        put(OUTPUT_TOKENS, exchange.output_tokens)
    if exchange.finish_reason:
        put(FINISH_REASONS, (exchange.finish_reason,))
    if exchange.status:
        put(HTTP_STATUS, exchange.status)
    if exchange.error_class:
        put(ERROR_TYPE, exchange.error_class)
    return attributes


def prompt_attributes(exchange: Exchange) -> Attributes:
    """What the request's span says of the prompt: slug, variant, version, layers, arm,
    rollout, tenant and tier, the provider it went to, a stream's time to first byte.
    Only the request's span carries them (and a shadow's, the one span of its trace): its
    provider call's is its child, and every attribute costs on the request path."""
    attributes: Attributes = {}
    put = attributes.__setitem__
    key = exchange.key
    if key is not None:
        put(SLUG, key.slug)
        if key.variant is not None:
            put(VARIANT, key.variant)
    for name, value in (
        (VERSION, exchange.version),
        (LAYERS, exchange.layers),
        (ARM, exchange.arm),
        (ROLLOUT, exchange.rollout_id),
        (TENANT, exchange.tenant),
        (TIER, exchange.tier),
        (PROVIDER_NAME, exchange.provider),
        (SHADOW_KIND, exchange.shadow_kind),
    ):
        if value is not None:
            put(name, value)
    if exchange.ttfb is not None:
        put(TTFB, exchange.ttfb)
    return attributes
