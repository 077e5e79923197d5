"""The proxy's own errors, one hierarchy, rendered in the OpenAI error shape.

An upstream 4xx/5xx answer is *data* and is relayed untouched; only the failures the
proxy itself detects are ``ProxyError``. ``web.middlewares`` is the one place that turns
them into HTTP responses.

    ProxyError (500 api_error)
     ├── InvalidRequest (400 invalid_request_error)
     │    ├── PayloadTooLarge (413, closes the connection)
     │    ├── RequestBodyTimeout (408, closes the connection)
     │    └── MethodNotAllowed (405, answered with `Allow`)
     ├── RouteNotFound (404 invalid_request_error)
     ├── NotFound (404 invalid_request_error: unknown prompt or version)
     ├── Conflict (409 invalid_request_error: no prod version, forbidden status move)
     ├── Unauthorized (401 authentication_error) / Forbidden (403 permission_error)
     ├── UpstreamError (502 api_error)
     │    ├── UpstreamTimeout (504)
     │    └── UpstreamUnavailable (502, connect/transport failure)
     └── ServiceUnavailable (503, e.g. draining, registry store unreachable)
          └── UpstreamPoolExhausted (503 + retry-after: no free upstream connection)
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class ProxyError(Exception):
    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = "internal_error"
    #: Name used in metrics (`error_class` label) and logs; bounded by the class tree.
    error_class: ClassVar[str] = "internal"
    #: Seconds, sent as `retry-after` when set: the failure is the proxy's load, so a retry
    #: (which the OpenAI SDKs make on 503 anyway) is expected to succeed.
    retry_after: ClassVar[int | None] = None
    #: Close the client connection after the answer: the request body was not read to its
    #: end, and reading (discarding) the rest is what the error exists to avoid.
    close_connection: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_openai_body())

    def to_anthropic_json(self, request_id: str | None = None) -> bytes:
        """The same error in the Messages API's shape, for its clients (``/v1/messages``):
        the anthropic SDKs choose the class by status and show ``error.message``, and
        carry ``request_id`` (here the proxy's own, ``x-promptproxy-request-id``)."""
        message = self.message
        if self.param is not None:
            message = f"{self.param}: {message}"
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else None)
        error = {"type": kind or "invalid_request_error", "message": message}
        body: dict[str, Any] = {"type": "error", "error": error}
        if request_id is not None:
            body["request_id"] = request_id
        return orjson.dumps(body)


#: The Messages API's error type for a status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


class InvalidRequest(ProxyError):
    status = 400
    openai_type = "invalid_request_error"
    default_code = "invalid_request"
    error_class = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "request_too_large"
    error_class = "payload_too_large"
    close_connection = True


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        #: The methods the path takes, for the `Allow` header RFC 9110 requires on a 405.
        self.allowed = allowed


class RouteNotFound(ProxyError):
    status = 404
    openai_type = "invalid_request_error"
    default_code = "unknown_url"
    error_class = "not_found"


class NotFound(ProxyError):
    status = 404
    openai_type = "invalid_request_error"
    default_code = "not_found"
    error_class = "not_found"


class Conflict(ProxyError):
    status = 409
    openai_type = "invalid_request_error"
    default_code = "conflict"
    error_class = "conflict"


class Unauthorized(ProxyError):
    status = 401
    openai_type = "authentication_error"
    default_code = "invalid_admin_token"
    error_class = "unauthorized"


class Forbidden(ProxyError):
    status = 403
    openai_type = "permission_error"
    default_code = "forbidden"
    error_class = "forbidden"


class UpstreamError(ProxyError):
    status = 502
    openai_type = "api_error"
    default_code = "upstream_error"
    error_class = "upstream"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"
    error_class = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status = 502
    default_code = "upstream_unavailable"
    error_class = "upstream_unavailable"


class ServiceUnavailable(ProxyError):
    status = 503
    openai_type = "api_error"
    default_code = "service_unavailable"
    error_class = "unavailable"


class UpstreamPoolExhausted(ServiceUnavailable):
    """Every pooled upstream connection stayed in use for `upstream.pool_wait_seconds`."""

    default_code = "upstream_pool_exhausted"
    error_class = "upstream_pool_exhausted"
    retry_after = 1


class RequestBodyTimeout(InvalidRequest):
    """The request body did not arrive within `server.body_timeout_seconds`."""

    status = 408
    default_code = "request_timeout"
    error_class = "request_timeout"
    close_connection = True
