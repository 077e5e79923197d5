"""Stage 1, parse: path and raw body bytes to a ``ParsedRequest``. Pure.

Only the JSON routes the product understands are parsed; every other ``/v1/*`` request is
forwarded as it came. A body is re-encoded only when the proxy has to change it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson

from proxy.errors import InvalidRequest
from proxy.models import ParsedRequest, Route
from proxy.pipeline.render import VARIABLES_FIELD

_ROUTES = {
    "chat/completions": Route.CHAT,
    "completions": Route.COMPLETIONS,
    "embeddings": Route.EMBEDDINGS,
    "responses": Route.RESPONSES,
    "models": Route.MODELS,
    "messages": Route.MESSAGES,
}
_JSON_POST_ROUTES = frozenset(
    {Route.CHAT, Route.COMPLETIONS, Route.EMBEDDINGS, Route.RESPONSES, Route.MESSAGES}
)
# Only these two SSE formats carry the OpenAI `include_usage` chunk.
_USAGE_OPTION_ROUTES = frozenset({Route.CHAT, Route.COMPLETIONS})


_INCLUDE_USAGE_MEMBER = b'"stream_options":{"include_usage":true},'


def _insert_first_member(body: bytes, member: bytes) -> bytes:
    """Add a member to a non-empty JSON object without re-encoding, so every byte the
    client sent (number formats, key order, unknown fields) still reaches the provider."""
    brace = body.index(b"{")
    return body[: brace + 1] + member + body[brace + 1 :]


def classify(tail: str) -> Route:
    """Map the path below ``/v1/`` to its route name."""
    route = _ROUTES.get(tail)
    if route is not None:
        return route
    head = tail.split("/", 1)[0]
    if head == "responses":
        return Route.RESPONSES
    if head == "models":
        return Route.MODELS
    return Route.OTHER


def check_path(tail: str) -> None:
    """Refuse dot segments: the upstream URL is the configured base plus this tail, nothing else."""
    if "." not in tail and "%" not in tail:
        return  # no segment can be one, even percent-encoded
    for segment in tail.split("/"):
        if unquote(segment) in (".", ".."):
            raise InvalidRequest("the request path must not contain '.' or '..' segments")


def _is_post_body_route(route: Route, method: str, tail: str) -> bool:
    if method != "POST" or route not in _JSON_POST_ROUTES:
        return False
    # `/v1/responses/{id}/cancel` and friends are POSTs without a model body.
    return route is not Route.RESPONSES or tail == "responses"


def parse_request(
    route: Route, method: str, tail: str, body: bytes, *, prompt_named: bool = False
) -> ParsedRequest:
    """``prompt_named``: the request names a prompt (``/p/{slug}/v1`` or ``X-Prompt-Slug``)."""
    if not _is_post_body_route(route, method, tail):
        return ParsedRequest(route=route, body=body)
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")

    # The proxy's own field: forwarded, the provider would refuse it or, worse, ignore it and
    # answer without the prompt. A dict lookup on the payload parsed anyway.
    if not prompt_named and VARIABLES_FIELD in payload:
        raise InvalidRequest(
            f"`{VARIABLES_FIELD}` fills a registry prompt, but this request names none. Name "
            "the prompt with the base URL /p/{slug}/v1 (e.g. http://proxy:8080/p/support/v1) "
            "or the X-Prompt-Slug header, or drop the field.",
            param=VARIABLES_FIELD,
            code="prompt_not_named",
        )
    model = payload.get("model")
    return ParsedRequest(
        route=route,
        body=body,
        payload=payload,
        model=model if isinstance(model, str) else None,
        stream=payload.get("stream") is True,
    )


def _dumps(payload: Any) -> bytes:
    """The body re-encoded; a body nested deeper than the encoder goes (orjson stops at 254
    levels, where it reads up to 1024) is the caller's to fix, not a 500."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            f"The request body cannot be re-encoded with the prompt ({exc}): nest it less.",
            code="body_too_deep",
        ) from None


def encode_outbound(parsed: ParsedRequest, payload_changed: bool) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the proxy added `include_usage` to it.

    Unchanged bodies go out as the client sent them, byte for byte.
    """
    payload = parsed.payload
    body = _dumps(payload) if payload_changed else parsed.body
    if payload is None or not parsed.stream or parsed.route not in _USAGE_OPTION_ROUTES:
        return body, False
    options = payload.get("stream_options")
    # Without usage the token metrics would be blind on streams; the extra chunk is
    # dropped again before the client sees it.
    if options is None and "stream_options" not in payload:
        return _insert_first_member(body, _INCLUDE_USAGE_MEMBER), True
    if isinstance(options, dict) and options.get("include_usage") is not True:
        payload["stream_options"] = {**options, "include_usage": True}
        return _dumps(payload), True
    return body, False


def other_model(route: Route, content_type: str, body: bytes) -> str | None:
    """The top-level ``model`` of a JSON body on a route the proxy relays unread (images,
    audio speech, moderations...), so that several providers route it by its model too.
    None for any other body (multipart uploads, ids in the path: the first provider's)."""
    if route is not Route.OTHER or not body or not content_type.startswith("application/json"):
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None
