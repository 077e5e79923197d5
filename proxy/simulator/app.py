"""Application assembly and lifecycle: routes, middleware, start/serve helpers."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from . import handlers
from .embeddings import models_list_body
from .errors import RequestError, anthropic_json_error, json_error, request_error_response
from .messages import is_anthropic_request
from .settings import (
    CLIENT_MAX_SIZE,
    RESPONSE_STORE_LIMIT,
    SHUTDOWN_TIMEOUT_S,
    SimulatorSettings,
)
from .state import (
    BODY_KEY,
    MODELS_BODY_KEY,
    RANDOM_KEY,
    REQUEST_ID_KEY,
    REQUEST_LOG_KEY,
    RESPONSE_STORE_KEY,
    SETTINGS_KEY,
    STARTED_KEY,
    RandomSource,
    ReceivedBody,
    RequestLog,
    ResponseStore,
)

_API_PREFIX: Final = "/v1/"
_EMPTY_BODY: Final = ReceivedBody(size=0, value=None, valid=False)


def build_simulator_app(settings: SimulatorSettings) -> web.Application:
    app = web.Application(middlewares=[_api_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[SETTINGS_KEY] = settings
    app[REQUEST_LOG_KEY] = RequestLog(settings.record_requests)
    app[RESPONSE_STORE_KEY] = ResponseStore(RESPONSE_STORE_LIMIT)
    app[MODELS_BODY_KEY] = models_list_body()
    app[RANDOM_KEY] = RandomSource(settings.seed)
    app.on_response_prepare.append(_stamp_headers)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/messages", handlers.messages)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_post("/v1/responses", handlers.create_response)
    app.router.add_get("/v1/responses/{response_id}", handlers.get_response)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", handlers.get_model)
    app.router.add_get("/_sim/requests", handlers.recorded_requests)
    app.router.add_delete("/_sim/requests", handlers.clear_recorded_requests)
    app.router.add_get("/_sim/health", handlers.health)
    return app


async def start_simulator(
    host: str, port: int, settings: SimulatorSettings
) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (call ``cleanup()``) and the bound port."""
    runner = web.AppRunner(
        build_simulator_app(settings),
        handle_signals=False,
        access_log=None,  # per-request logging would dominate a latency benchmark
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handler_cancellation=True,  # stop work for clients that went away
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, bound_port


async def serve_simulator(
    host: str,
    port: int,
    settings: SimulatorSettings,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run until cancelled, then release the port. ``on_listening`` gets the bound port (the
    one the system chose, with port 0) once connections are accepted."""
    runner, bound_port = await start_simulator(host, port, settings)
    if on_listening is not None:
        on_listening(bound_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED_KEY] = time.perf_counter()
    # Chosen before the handler runs so an Anthropic error body can carry the header's id.
    request[REQUEST_ID_KEY] = "req_" + secrets.token_hex(16)
    if not request.path.startswith(_API_PREFIX):
        return await handler(request)
    body = await _read_body(request)
    request[BODY_KEY] = body
    log = request.app[REQUEST_LOG_KEY]
    if log.enabled:
        log.record(request, body)
    anthropic = is_anthropic_request(request.path, request.headers)
    api_key = request.app[SETTINGS_KEY].api_key
    if api_key is not None:
        check = _check_anthropic_auth if anthropic else _check_auth
        if (denied := check(request, api_key)) is not None:
            return denied
    try:
        return await handler(request)
    except RequestError as exc:
        if anthropic:
            return anthropic_json_error(400, exc.message, request[REQUEST_ID_KEY])
        return request_error_response(exc)
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            raise
        if anthropic:
            return anthropic_json_error(exc.status, exc.reason, request[REQUEST_ID_KEY])
        # OpenAI answers unknown routes with its usual error envelope, not HTML.
        return json_error(exc.status, f"Invalid URL ({request.method} {request.path})")


async def _read_body(request: web.Request) -> ReceivedBody:
    if not request.body_exists:
        return _EMPTY_BODY
    raw = await request.read()
    try:
        return ReceivedBody(size=len(raw), value=orjson.loads(raw), valid=True)
    except orjson.JSONDecodeError:
        return ReceivedBody(size=len(raw), value=None, valid=False)


def _check_auth(request: web.Request, api_key: str) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    if secrets.compare_digest(header.encode(), f"Bearer {api_key}".encode()):
        return None
    message = (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
        if header
        else "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    return json_error(401, message, code="invalid_api_key")


def _check_anthropic_auth(request: web.Request, api_key: str) -> web.Response | None:
    """Anthropic's SDKs send ``x-api-key``; gateways and OAuth clients send a bearer token."""
    x_api_key = request.headers.get("x-api-key")
    bearer = request.headers.get("Authorization")
    if x_api_key is not None and secrets.compare_digest(x_api_key.encode(), api_key.encode()):
        return None
    if bearer is not None and secrets.compare_digest(bearer.encode(), f"Bearer {api_key}".encode()):
        return None
    given = x_api_key is not None or bearer is not None
    message = "invalid x-api-key" if given else "x-api-key header is required"
    return anthropic_json_error(401, message, request[REQUEST_ID_KEY])


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    # A signal rather than the middleware so streamed responses get these before headers go out.
    request_id = request.get(REQUEST_ID_KEY) or "req_" + secrets.token_hex(16)
    if is_anthropic_request(request.path, request.headers):
        response.headers["request-id"] = request_id  # Anthropic's name for it
        return
    started = request.get(STARTED_KEY)
    elapsed_ms = 0 if started is None else int((time.perf_counter() - started) * 1000)
    response.headers["x-request-id"] = request_id
    response.headers["openai-processing-ms"] = str(elapsed_ms)
