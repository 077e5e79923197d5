"""Endpoint handlers: read the body, apply per-request control, render, send."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

import orjson
from aiohttp import web

from .chat import chat_body, chat_events, plan_chat
from .completions import completion_body, completion_events, plan_completion
from .directives import (
    Directives,
    Steering,
    chat_directives,
    messages_directives,
    responses_directives,
)
from .embeddings import embeddings_body, model_object
from .errors import RequestError, anthropic_simulated_error, json_error, simulated_error
from .faults import Fault, RequestControl, parse_control
from .messages import (
    VERSION_HEADER,
    anthropic_model,
    anthropic_models_body,
    message_body,
    message_events,
    plan_message,
    with_error_event,
)
from .params import Body, model_of
from .responses_api import plan_response, response_body, response_events
from .settings import JSON_HEADERS, RATE_LIMIT_HEADERS, SSE_HEADERS
from .state import (
    BODY_KEY,
    MODELS_BODY_KEY,
    RANDOM_KEY,
    REQUEST_ID_KEY,
    REQUEST_LOG_KEY,
    RESPONSE_STORE_KEY,
    SETTINGS_KEY,
)
from .transport import send_events, send_json, sleep_ms, wait_until_client_gone

_JSON_RATE: Final = MappingProxyType({**JSON_HEADERS, **RATE_LIMIT_HEADERS})
_SSE_RATE: Final = MappingProxyType({**SSE_HEADERS, **RATE_LIMIT_HEADERS})

_INVALID_JSON: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


def _json_body(request: web.Request, invalid: str = _INVALID_JSON) -> Body:
    received = request.get(BODY_KEY)
    if received is None or not received.valid or not isinstance(received.value, dict):
        raise RequestError(invalid)
    body: Body = received.value
    return body


def _control(request: web.Request, model: str) -> RequestControl:
    return parse_control(request.headers, model, request.app[SETTINGS_KEY])


def _steer(
    request: web.Request, directives: Directives, control: RequestControl
) -> tuple[RequestControl, Steering | None]:
    """Draw the ``error`` directive and hand out the request's generator for the answer."""
    if not directives.active:
        return control, None  # no generator, no draws: unsteered answers stay deterministic
    steering = Steering(directives, request.app[RANDOM_KEY].request_rng())
    # An explicit x-sim-status still wins; the draw happens anyway so seeded runs stay aligned.
    if steering.fails() and control.status is None:
        control = replace(control, status=500)
    return control, steering


async def _short_circuit(
    request: web.Request, control: RequestControl, model: str, param: str
) -> web.StreamResponse | None:
    """Handle the controls that replace the answer entirely (hang, injected status)."""
    if control.fault is Fault.HANG:
        await wait_until_client_gone(request)
        return web.Response(status=504)  # never reaches anyone; the client already left
    if control.status is not None:
        await sleep_ms(control.first_byte_ms)
        return simulated_error(
            control.status, model=model, param=param, retry_after_ms=control.retry_after_ms
        )
    return None


def _wants_stream(body: Body) -> bool:
    return body.get("stream") is True


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    control, steering = _steer(request, chat_directives(body), _control(request, model_of(body)))
    if (early := await _short_circuit(request, control, model_of(body), "messages")) is not None:
        return early
    answer = plan_chat(body, control.chunks, steering)
    if _wants_stream(body):
        return await send_events(request, chat_events(answer, control.chunks), control, _SSE_RATE)
    return await send_json(request, chat_body(answer), control, _JSON_RATE)


async def messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API; RequestErrors get Anthropic's shape from the middleware."""
    if not request.headers.get(VERSION_HEADER):
        raise RequestError(f"{VERSION_HEADER}: header is required", param=VERSION_HEADER)
    body = _json_body(request, "The request body is not valid JSON.")
    model = model_of(body)
    control, steering = _steer(request, messages_directives(body), _control(request, model))
    if (early := await _messages_short_circuit(request, control, body)) is not None:
        return early
    answer = plan_message(body, control.chunks, steering)
    if not _wants_stream(body):
        return await send_json(request, message_body(answer), control, JSON_HEADERS)
    events = message_events(answer, control.chunks)
    if control.stream_error is not None:
        events = with_error_event(events, control.stream_error, model)
    return await send_events(request, events, control, SSE_HEADERS)


async def _messages_short_circuit(
    request: web.Request, control: RequestControl, body: Body
) -> web.StreamResponse | None:
    if control.fault is Fault.HANG:
        await wait_until_client_gone(request)
        return web.Response(status=504)  # never reaches anyone; the client already left
    # Without a stream there is no event to carry the error: the overload shows as a status.
    status = control.status or (None if _wants_stream(body) else control.stream_error)
    if status is None:
        return None
    await sleep_ms(control.first_byte_ms)
    return anthropic_simulated_error(
        status,
        model=model_of(body),
        param="messages",
        retry_after_ms=control.retry_after_ms,
        request_id=request[REQUEST_ID_KEY],
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    control = _control(request, model_of(body))
    if (early := await _short_circuit(request, control, model_of(body), "prompt")) is not None:
        return early
    answer = plan_completion(body, control.chunks)
    if _wants_stream(body):
        events = completion_events(answer, control.chunks)
        return await send_events(request, events, control, _SSE_RATE)
    return await send_json(request, completion_body(answer), control, _JSON_RATE)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    control = _control(request, model_of(body))
    if (early := await _short_circuit(request, control, model_of(body), "input")) is not None:
        return early
    return await send_json(request, embeddings_body(body), control, _JSON_RATE)


async def create_response(request: web.Request) -> web.StreamResponse:
    body = _json_body(request)
    directives = responses_directives(body)
    control, steering = _steer(request, directives, _control(request, model_of(body)))
    if (early := await _short_circuit(request, control, model_of(body), "input")) is not None:
        return early
    answer = plan_response(body, control.chunks, steering)
    if answer.store and control.fault is None:
        request.app[RESPONSE_STORE_KEY].put(answer.id, answer.response)
    if _wants_stream(body):
        events = response_events(answer, control.chunks)
        return await send_events(request, events, control, _SSE_RATE)
    return await send_json(request, response_body(answer), control, _JSON_RATE)


async def get_response(request: web.Request) -> web.StreamResponse:
    response_id = request.match_info["response_id"]
    control = _control(request, "")
    if (early := await _short_circuit(request, control, "", "response_id")) is not None:
        return early
    stored = request.app[RESPONSE_STORE_KEY].get(response_id)
    if stored is None:
        return json_error(404, f"Response with id '{response_id}' not found.")
    return await send_json(request, orjson.dumps(stored), control, JSON_HEADERS)


async def list_models(request: web.Request) -> web.StreamResponse:
    control = _control(request, "")
    if (early := await _short_circuit(request, control, "", "model")) is not None:
        return early
    if VERSION_HEADER in request.headers:
        return await send_json(request, anthropic_models_body(), control, JSON_HEADERS)
    return await send_json(request, request.app[MODELS_BODY_KEY], control, JSON_HEADERS)


async def get_model(request: web.Request) -> web.StreamResponse:
    # Any id is accepted and echoed: tests may use made-up model names freely.
    model_id = request.match_info["model_id"]
    control = _control(request, "")
    if (early := await _short_circuit(request, control, model_id, "model")) is not None:
        return early
    if VERSION_HEADER in request.headers:
        answer = anthropic_model(model_id)
        return await send_json(request, orjson.dumps(answer), control, JSON_HEADERS)
    return await send_json(request, orjson.dumps(model_object(model_id)), control, JSON_HEADERS)


async def recorded_requests(request: web.Request) -> web.Response:
    raw = request.query.get("limit")
    limit: int | None = None
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if limit < 0:
            return json_error(400, "'limit' must be a non-negative integer.", param="limit")
    entries: list[dict[str, Any]] = request.app[REQUEST_LOG_KEY].last(limit)
    return web.Response(body=orjson.dumps(entries), headers=JSON_HEADERS)


async def clear_recorded_requests(request: web.Request) -> web.Response:
    cleared = request.app[REQUEST_LOG_KEY].clear()
    return web.Response(body=orjson.dumps({"cleared": cleared}), headers=JSON_HEADERS)


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', headers=JSON_HEADERS)
