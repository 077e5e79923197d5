"""The one place where errors become HTTP responses, in the OpenAI error shape."""

from __future__ import annotations

import logging
import os
import secrets
import weakref
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.errors import InvalidRequest, MethodNotAllowed, ProxyError, RouteNotFound
from proxy.http_headers import REQUEST_ID_HEADER
from proxy.log import APP_LOGGER
from proxy.web.conn_guard import close_after_answer, request_started
from proxy.web.keys import REQUEST_ID

_log = logging.getLogger(APP_LOGGER)


class RequestIds:
    """Request ids as ``secrets.token_hex(12)`` makes them (24 hex digits of the OS's
    randomness), cut from a pool filled 341 ids at a time: one ``getrandom`` call per
    341 requests instead of one each, a third of the cost per id. A forked child drops
    the pool it inherited, so two processes never hand out the same ids."""

    __slots__ = ("__weakref__", "_at", "_pool")

    _IDS_PER_FILL = 341

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: _call(forget))

    def _forget(self) -> None:
        self._pool = ""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at + 24 > len(self._pool):
            self._pool = secrets.token_hex(12 * self._IDS_PER_FILL)
            at = 0
        self._at = at + 24
        return self._pool[at : at + 24]


def error_response(exc: ProxyError, request_id: str, *, anthropic: bool = False) -> web.Response:
    """``anthropic``: a Messages API request, whose clients read Anthropic's error shape."""
    headers = {REQUEST_ID_HEADER: request_id}
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return web.Response(
        status=exc.status,
        body=exc.to_anthropic_json(request_id) if anthropic else exc.to_json(),
        content_type="application/json",
        headers=headers,
    )


def _speaks_messages_api(path: str) -> bool:
    """``/v1/messages`` (and under it), at the root or under ``/p/{slug}``."""
    _, found, rest = path.partition("/v1/messages")
    return bool(found) and (not rest or rest.startswith("/"))


def _from_http_exception(exc: web.HTTPException) -> ProxyError:
    if exc.status == 404:
        return RouteNotFound("Unknown request URL. Send OpenAI API calls under /v1/.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = tuple(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"{exc.method} is not allowed here; this URL takes {', '.join(allowed)}.",
            allowed=allowed,
        )
    error = InvalidRequest(exc.reason or "Bad request.")
    error.status = exc.status  # type: ignore[misc]
    return error


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send the answer, then close the connection instead of reading the rest of the body.

    After a handler returns, aiohttp reads and discards an unread request body for up to
    10 s to keep the connection reusable: at local-network speed that is the whole of a
    multi-GiB upload. Refusing a body for its size must not cost reading it, so the
    connection ends after a short bounded linger (``conn_guard.LINGER_SECONDS``), just long
    enough that the answer is not overtaken by a reset."""
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client is gone already; closing is all that is left to do
    finally:
        close_after_answer(request.protocol)
    return response


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def error_middleware() -> Middleware:
    """The app's one middleware: a request id, the connection's deadlines, and every
    error as an OpenAI-shaped answer."""
    ids = RequestIds()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = ids.new()
        request[REQUEST_ID] = request_id
        # The connection's header/idle deadlines pause while a request runs; its body gets
        # one.
        connection = request_started(request)
        try:
            return await handler(request)
        except ProxyError as exc:
            answer = error_response(exc, request_id, anthropic=_speaks_messages_api(request.path))
            if exc.close_connection:
                return await _answer_and_close(request, answer)
            return answer
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(
                _from_http_exception(exc),
                request_id,
                anthropic=_speaks_messages_api(request.path),
            )
        except Exception:
            _log.exception("unhandled error in request %s", request_id)
            return error_response(
                ProxyError("The proxy failed to handle the request."),
                request_id,
                anthropic=_speaks_messages_api(request.path),
            )
        finally:
            if connection is not None:
                connection.request_finished()

    return middleware
