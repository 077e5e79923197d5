"""Anthropic errors, translated to the OpenAI error shape and the status the openai SDKs
turn into the right exception class and retry the same way.

The openai SDKs (python and node alike) choose the class by status alone: 400
``BadRequestError``, 401 ``AuthenticationError``, 403 ``PermissionDeniedError``, 404
``NotFoundError``, 409 ``ConflictError``, 422 ``UnprocessableEntityError``, 429
``RateLimitError``, >= 500 ``InternalServerError``, anything else ``APIStatusError``; and
they retry 408, 409, 429 and >= 500, unless an ``x-should-retry`` header says otherwise or
``retry-after`` is longer than they are willing to wait.

=====  =====================  =====  ===================================================
from   Anthropic type         to     why
=====  =====================  =====  ===================================================
400    invalid_request_error  400    same meaning, ``BadRequestError``, not retried
401    authentication_error   401    ``AuthenticationError`` (relayed like any upstream
                                     answer: the proxy's provider key was refused)
402    billing_error          402    ``APIStatusError``, not retried: paying is not a retry
403    permission_error       403    ``PermissionDeniedError``
404    not_found_error        404    ``NotFoundError`` (usually the model)
409    conflict_error         409    ``ConflictError``, retried (as Anthropic's SDKs do)
413    request_too_large      413    ``APIStatusError``, not retried, as the proxy's own 413
429    rate_limit_error       429    ``RateLimitError``, retried; ``retry-after`` kept
500    api_error              500    ``InternalServerError``, retried
504    timeout_error          504    ``InternalServerError``, retried
529    overloaded_error       503    see below
=====  =====================  =====  ===================================================

529 becomes 503. For the openai SDKs both are ``InternalServerError`` and both are
retried, so a client of the SDK sees no difference. 529 is not a registered HTTP status,
though, and what sits between the proxy and a client that is not the SDK only knows the
registered ones: urllib3's ``Retry``, Envoy's ``retriable-status-codes``, load balancers'
and gateways' "retry on 503" all name 503, the status whose meaning is exactly Anthropic's
("temporarily overloaded, try again"). The Anthropic type stays in ``code``
(``overloaded_error``), so nothing is lost.

Any other status keeps its number (a 4xx as ``invalid_request_error``, a 5xx as
``api_error``). ``retry-after``, ``retry-after-ms`` and ``x-should-retry`` are kept, so the
SDK waits as long as Anthropic asked and does not retry what Anthropic says will fail; a
429 whose ``details.error_code`` says a spend limit was reached (it lasts until the next
month) gets ``x-should-retry: false`` when Anthropic did not say so itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

#: Anthropic error type -> (status sent to the client, OpenAI error type).
_BY_TYPE: dict[str, tuple[int, str]] = {
    "invalid_request_error": (400, "invalid_request_error"),
    "authentication_error": (401, "authentication_error"),
    "billing_error": (402, "invalid_request_error"),
    "permission_error": (403, "permission_error"),
    "not_found_error": (404, "invalid_request_error"),
    "conflict_error": (409, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_error": (429, "rate_limit_error"),
    "api_error": (500, "api_error"),
    "timeout_error": (504, "api_error"),
    "overloaded_error": (503, "api_error"),
}
#: Statuses whose number changes on the way to the client.
_STATUS = {529: 503}
_KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
_SPEND_LIMITS = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached"})


@dataclass(frozen=True, slots=True)
class OpenAIError:
    """What to answer the client: ``status``, the OpenAI-shaped ``body`` and the headers
    that steer the SDK's retry."""

    status: int
    body: JSON
    headers: dict[str, str] = field(default_factory=dict)


def _error_object(body: Any) -> JSON:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def openai_error_body(error: Any, *, fallback_type: str = "api_error") -> JSON:
    """The OpenAI ``{"error": {...}}`` body for Anthropic's error object ``error``
    (``{"type": ..., "message": ...}``): the OpenAI type, Anthropic's type as ``code``."""
    source = error if isinstance(error, dict) else {}
    kind = source.get("type")
    kind = kind if isinstance(kind, str) and kind else None
    message = source.get("message")
    if not isinstance(message, str) or not message:
        message = f"the provider answered {kind or 'an error'}"
    openai_type = _BY_TYPE[kind][1] if kind in _BY_TYPE else fallback_type
    return {
        "error": {"message": message, "type": openai_type, "param": None, "code": kind},
    }


def to_openai_error(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> OpenAIError:
    """The client's answer for Anthropic's error answer: its HTTP ``status``, its parsed
    JSON ``body`` (None or anything else when it was not JSON: a 413 comes from Cloudflare)
    and its ``headers`` (names in any case)."""
    error = _error_object(body)
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    if kind is None:
        kind = {413: "request_too_large", 529: "overloaded_error"}.get(status)
        error = {**error, "type": kind} if kind else error
    sent = _STATUS.get(status, status)
    fallback = "invalid_request_error" if 400 <= sent < 500 else "api_error"
    out = openai_error_body(error, fallback_type=fallback)
    if not error.get("message"):
        out["error"]["message"] = f"the provider answered HTTP {status}" + (
            f" ({kind})" if kind else ""
        )
    kept: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if name.lower() in _KEPT_HEADERS:
            kept[name.lower()] = value
    details = error.get("details")
    if (
        sent == 429
        and isinstance(details, dict)
        and details.get("error_code") in _SPEND_LIMITS
        and "x-should-retry" not in kept
    ):
        kept["x-should-retry"] = "false"
    return OpenAIError(status=sent, body=out, headers=kept)
