"""Stage 5a: how a request goes on the wire to the provider its model routes to, and where
its shadow copy goes. Pure: the path, the headers and the body, or a 400 naming what that
provider cannot be asked.

Three ways, by the provider's kind and the route:

- **relayed** (every route to an OpenAI-shaped provider, as it always was, ``/v1/messages``
  included: some such servers speak it; and the Messages API to a ``kind: anthropic``
  provider): the client's body (re-encoded only when a prompt changed it), the client's
  path below the provider's base URL (``/v1`` + path for an Anthropic root URL), the
  client's headers with the provider's key in place of the client's credentials;
- **translated** (chat completions to a ``kind: anthropic`` provider): the Messages
  request of ``exchange/messages_call.py``, its answer translated back by
  ``relay_messages.py``;
- **refused**: any other route to an Anthropic provider, and a Messages API request that a
  prompt version's model pin would send to an OpenAI-shaped provider.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import InvalidRequest
from proxy.exchange.messages_call import (
    MESSAGES_TAIL,
    MessagesCall,
    messages_call,
    messages_headers,
)
from proxy.http_headers import upstream_request_headers
from proxy.models import ParsedRequest, Route
from proxy.pipeline.arms import MODEL_NOT_SERVED, UNTRANSLATABLE
from proxy.pipeline.parse import encode_outbound
from proxy.pipeline.resolve import CONTROL_HEADERS
from proxy.providers import Provider, Providers
from proxy.shadow.models import ShadowRequest

#: Anthropic's paths, below its root URL (a Messages API client's base URL has no `/v1`).
_ANTHROPIC_ROOT_PREFIX = "/v1/"


class Wire(NamedTuple):
    """One request as it goes to its provider."""

    tail: str
    headers: CIMultiDict[str]
    body: bytes
    #: The proxy added ``stream_options.include_usage`` (its chunk is not the client's).
    usage_injected: bool
    #: Set when the request is translated to the Messages API.
    call: MessagesCall | None


def speaks_messages_api(route: Route, tail: str) -> bool:
    """A request of Anthropic's API: ``/v1/messages`` and what is under it
    (``count_tokens``, ``batches``)."""
    return route is Route.MESSAGES or tail.startswith("messages/")


def provider_headers(client_headers: CIMultiDictProxy[str], provider: Provider) -> CIMultiDict[str]:
    """The client's headers for a relayed request, with ``provider``'s key in place of the
    client's credentials (as ``x-api-key`` for an Anthropic provider)."""
    return upstream_request_headers(
        client_headers, provider.api_key, drop=CONTROL_HEADERS, x_api_key=provider.messages_api
    )


def primary_wire(
    provider: Provider,
    route: Route,
    method: str,
    tail: str,
    raw_tail: str,
    parsed: ParsedRequest,
    client_headers: CIMultiDictProxy[str],
    *,
    payload_changed: bool,
    pinned: str | None = None,
) -> Wire:
    """The request for ``provider`` (module docstring), or ``InvalidRequest``. ``pinned``:
    the model a prompt version pinned, sent in place of the request's."""
    messages_api = speaks_messages_api(route, tail)
    model = pinned or parsed.model or ""
    if messages_api and not provider.messages_api and pinned is not None:
        # The caller asked Anthropic's API; a version's pin must not turn that into a call
        # to an OpenAI-shaped provider that does not speak it (api.openai.com answers 404).
        raise InvalidRequest(
            f"The prompt version pins '{pinned}', served by provider '{provider.name}', "
            "which does not take Anthropic's Messages API requests.",
            param="model",
            code="unsupported_for_provider",
        )
    if provider.messages_api and not messages_api:
        if route is not Route.CHAT or method != "POST" or parsed.payload is None:
            raise InvalidRequest(
                f"The model '{model}' is served by provider '{provider.name}' "
                "(Anthropic's Messages API), which this proxy reaches from POST "
                "/v1/chat/completions (translated), /v1/messages and /v1/models only.",
                param="model",
                code="unsupported_for_provider",
            )
        call = messages_call(parsed.payload, provider.default_max_tokens)
        headers = messages_headers(
            client_headers, provider.api_key, stream=call.stream, drop=CONTROL_HEADERS
        )
        return Wire(MESSAGES_TAIL, headers, call.body, False, call)
    body, usage_injected = encode_outbound(parsed, payload_changed=payload_changed)
    sent = _ANTHROPIC_ROOT_PREFIX + raw_tail.lstrip("/") if provider.messages_api else raw_tail
    return Wire(sent, provider_headers(client_headers, provider), body, usage_injected, None)


def aimed_shadow(
    providers: Providers,
    shadow: ShadowRequest,
    client_headers: CIMultiDictProxy[str],
    primary: Provider,
    primary_wire: Wire,
    *,
    one_place: bool,
) -> ShadowRequest | str:
    """The shadow copy sent to the provider of its own model (a candidate may pin another
    provider's), with that provider's key, never one provider's key to another; or why it
    is not sent. ``one_place``: ``shadow.base_url`` sends every copy to one host as it is."""
    if one_place:
        return shadow
    provider = providers.route(shadow.model)
    if provider is None:
        return MODEL_NOT_SERVED
    messages_api = shadow.route is Route.MESSAGES
    if messages_api and not provider.messages_api and provider is not primary:
        return UNTRANSLATABLE  # a candidate pinned away from Anthropic's API
    call: MessagesCall | None = None
    if provider.messages_api and not messages_api:
        if shadow.route is not Route.CHAT:
            return UNTRANSLATABLE
        try:
            call = messages_call(orjson.loads(shadow.body), provider.default_max_tokens)
        except InvalidRequest:
            return UNTRANSLATABLE
    headers: Mapping[str, str]
    if provider is primary:  # most copies: the primary's headers are that provider's
        headers = primary_wire.headers
    elif call is not None:
        headers = messages_headers(
            client_headers, provider.api_key, stream=call.stream, drop=CONTROL_HEADERS
        )
    else:
        headers = provider_headers(client_headers, provider)
    if call is not None:
        return dataclasses.replace(
            shadow,
            base_url=provider.base_url,
            headers=headers,
            provider=provider.name,
            messages=call,
            body=call.body,
            raw_tail=MESSAGES_TAIL,
            usage_injected=False,
        )
    anthropic_root = messages_api and provider.messages_api
    tail = _ANTHROPIC_ROOT_PREFIX + shadow.raw_tail.lstrip("/") if anthropic_root else None
    return dataclasses.replace(
        shadow,
        base_url=provider.base_url,
        headers=headers,
        provider=provider.name,
        raw_tail=tail or shadow.raw_tail,
    )


def aimed_like_primary(
    copy: ShadowRequest, provider: Provider, wire: Wire, *, one_place: bool
) -> ShadowRequest:
    """Stable's own copy (the noise pair) goes where the primary went, as the primary went:
    its body, path and headers."""
    if one_place:
        return copy
    return dataclasses.replace(
        copy,
        base_url=provider.base_url,
        headers=wire.headers,
        provider=provider.name,
        messages=wire.call,
        body=wire.body,
        raw_tail=wire.tail,
        usage_injected=wire.usage_injected,
    )
