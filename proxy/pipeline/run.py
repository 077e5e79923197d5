"""The request path, in order. This is the one place the stage order is written down.

1. parse    body bytes -> ParsedRequest (400 on malformed JSON); the prompt the request names
2. resolve  the caller's tenant; prompt key -> the variant the request's model selects
            (+ version pin) -> PromptVersion, from the in-process snapshot only
3. choose   the arm, sticky per (prompt key, rollout, sticky key): stable, canary (the
            candidate answers) or stable plus a shadow copy to the candidate; the rollout
            is the base's (if its segment holds the caller), else the caller's tenant's or
            tier's override's; a version pin is its own arm. A canary's candidate that
            cannot serve the request (stages 4-5 refuse it) leaves it to stable, counted
4. render   guardrails, then the template composed with the tier's and tenant's overrides
            + caller variables -> outbound body, encoded once (and the shadow's)
5. forward  the provider the model sent routes to (proxy/providers.py; 404 when none
            serves it), with its key, the request relayed or translated for its kind
            (pipeline/wire.py); one pooled ClientSession -> that provider; relay the answer
            to the client (translated back, for a translated request), reading it once as
            it passes. A shadow copy (aimed at the provider of its own model) was handed to
            the ShadowRunner just before: never awaited from here
6. record   the exchange's observers (pipeline/record.py), in `finally`, so failures and
            disconnects count: metrics, analysis window, feedback index, tenant usage,
            access log line, and the primary's half of a shadow pair

With ``tracing.enabled`` (proxy/tracing), the request's SERVER span starts before stage 1
and ends after stage 6's facts are settled; the provider call's CLIENT span starts just
before stage 5 sends (its ``traceparent`` replaces the caller's upstream). Tracing off, the
path only sees ``resources.tracing`` is None.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import InvalidRequest, NotFound, PayloadTooLarge, ProxyError
from proxy.exchange.answer import Answer
from proxy.exchange.messages_call import messages_headers
from proxy.exchange.outcome import Arm, Exchange
from proxy.http_headers import REQUEST_ID_HEADER, client_response_headers
from proxy.models import ParsedRequest, Route
from proxy.pipeline.arms import decide, noise_copy, shadow_copy
from proxy.pipeline.capturing import JUDGED_ANSWER_CHARS
from proxy.pipeline.choose import Decision
from proxy.pipeline.evaluating import check_eval_pin, eval_tenant, is_eval_call
from proxy.pipeline.model_list import lists_models, messages_model, model_in_path, model_list
from proxy.pipeline.parse import (
    check_path,
    classify,
    other_model,
    parse_request,
)
from proxy.pipeline.record import settle
from proxy.pipeline.relay import relay
from proxy.pipeline.relay_messages import relay_messages
from proxy.pipeline.render import layers, render_into
from proxy.pipeline.resolve import CONTROL_HEADERS, SWAP_ROUTES, for_model, prompt_ref, resolve
from proxy.pipeline.resources import PipelineResources
from proxy.pipeline.tenant import request_tenant
from proxy.pipeline.wire import (
    Wire,
    aimed_like_primary,
    aimed_shadow,
    primary_wire,
    provider_headers,
    speaks_messages_api,
)
from proxy.prompt_key import PromptKey
from proxy.providers import Provider
from proxy.registry.composition import composition
from proxy.registry.models import PromptVersion, RegistrySnapshot, RolloutMode, Tenant
from proxy.shadow.models import ShadowRequest

#: nginx's convention for "client closed the connection before the answer was complete".
CLIENT_CLOSED_STATUS = 499


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it passes ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the {limit}-byte limit.")
    content = request.content
    first = await content.readany()
    if len(first) > limit:
        raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.")
    if content.is_eof():
        return first  # came whole, as most do: no copy
    body = bytearray(first)
    while chunk := await content.readany():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.")
    return bytes(body)


async def handle(
    resources: PipelineResources,
    request: web.Request,
    request_id: str,
    tail: str,
    raw_tail: str,
    url_key: PromptKey | None,
) -> web.StreamResponse:
    """Proxy one ``/v1/{tail}`` request. ``raw_tail`` is the undecoded path and query;
    ``url_key`` the prompt a ``/p/{slug}/v1`` URL names."""
    exchange = Exchange(
        request_id=request_id,
        method=request.method,
        route=classify(tail),
        started=time.perf_counter(),
        key=url_key,
    )
    metrics = resources.metrics
    metrics.requests_open += 1
    tracing = resources.tracing  # None unless tracing.enabled: then no call below into it
    trace = None if tracing is None else tracing.request(request.headers, exchange)
    try:
        check_path(tail)
        ref = prompt_ref(resources.snapshot.current, url_key, request.headers)
        exchange.key = ref.key if ref is not None else None
        evaluating = is_eval_call(request.headers, resources.eval_key)
        if evaluating:
            if ref is None:
                raise InvalidRequest("An eval call names a prompt.", param="slug")
            check_eval_pin(ref)
        body = await read_body(request, resources.config.server.max_body_bytes)
        parsed = parse_request(  # 1
            exchange.route, request.method, tail, body, prompt_named=ref is not None
        )
        exchange.model_requested = parsed.model
        exchange.stream = parsed.stream
        if lists_models(bool(resources.config.providers), request.method, tail):
            return _respond(exchange, request_id, *await _model_list(resources, request))

        decision: Decision | None = None
        if ref is not None and parsed.payload is not None and exchange.route in SWAP_ROUTES:
            # Read after the body: a rollback made while a slow body arrived is obeyed.
            snapshot = resources.snapshot.current
            tenant = (
                eval_tenant(snapshot, request.headers)
                if evaluating
                else request_tenant(snapshot, request.headers, resources.config.tenants)
            )
            if tenant is not None:
                exchange.tenant, exchange.tier = tenant.id, tenant.tier
            ref = for_model(snapshot, ref, parsed.model)
            exchange.key = ref.key
            stable = resolve(snapshot, ref)  # 2
            decision = decide(
                resources, snapshot, ref, stable, request.headers, parsed, request_id, tenant
            )
            if evaluating:
                decision = decision._replace(arm=Arm.EVAL)
        elif ref is not None:
            _count_unshadowable(resources, ref.key)
        if decision is None:
            provider = _routed(resources, exchange, request, tail, body)
            if provider.messages_api and exchange.route is Route.MODELS and request.method == "GET":
                return await _messages_model(resources, exchange, request, provider, raw_tail)
            wire = _wire(provider, exchange, request, parsed, None, tail, raw_tail)  # 5
        else:
            why = "render_failed"
            try:
                _rendered(resources, exchange, parsed, decision, snapshot, tenant)  # 3, 4
                why = "model_not_served"
                provider = _routed(resources, exchange, request, tail, body)
                why = "untranslatable"
                wire = _wire(provider, exchange, request, parsed, decision, tail, raw_tail)
            except (InvalidRequest, NotFound) as refused:
                if decision.arm is not Arm.CANARY:
                    raise
                fallback = _Fallback(request, tail, raw_tail, body, why, refused)
                decision, parsed, provider, wire = fallback.to_stable(
                    resources, exchange, parsed, decision, stable, snapshot, tenant
                )
        if decision is not None and decision.shadow is not None:
            copy = shadow_copy(
                resources, exchange, parsed, decision, raw_tail, wire.headers, snapshot, tenant
            )
            one_place = resources.config.shadow.base_url is not None
            shadow = (
                aimed_shadow(
                    resources.providers,
                    copy,
                    request.headers,
                    provider,
                    wire,
                    one_place=one_place,
                )
                if isinstance(copy, ShadowRequest)
                else copy
            )
            if isinstance(shadow, str):
                resources.shadow.skip(decision.version.key, shadow)
            elif isinstance(copy, ShadowRequest):  # always, once a copy was aimed
                half: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
                submitted = resources.shadow.submit(shadow, half)
                # From the copy before it was aimed: stable's goes where the primary went.
                noise = noise_copy(
                    resources,
                    copy,
                    copy.primary_version,
                    wire.body,
                    wire.usage_injected,
                    exchange.model_sent or exchange.model_requested,
                    exchange.layers,
                )
                if noise is not None:
                    noise = aimed_like_primary(noise, provider, wire, one_place=one_place)
                    submitted = resources.shadow.submit(noise, half) or submitted
                if submitted:
                    # The pair needs the answer's text: captured by the same single read
                    # that records usage as the answer is relayed.
                    exchange.pair = half
                    exchange.answer = Answer(resources.config.shadow.sink.max_output_chars)
        if decision is not None and exchange.route is Route.CHAT and decision.arm is not Arm.EVAL:
            slug = decision.version.key.slug
            # A call under a tier's or tenant's override rollout counts on that override's
            # line, which a replay does not run.
            base_line = exchange.key is not None and exchange.key.layer is None
            if base_line and resources.capture.sampled(slug):
                exchange.capture = body  # the client's request, for a replay
                if exchange.answer is None:
                    # Characters, up to 4 bytes each in UTF-8: half the budget leaves room
                    # for the request beside the answer.
                    exchange.answer = Answer(resources.config.capture.max_bytes // 2)
            if len(body) <= _JUDGED_BODY_BYTES and resources.judging.sampled(slug):
                exchange.judged = body  # its messages are what the judge reads
                if exchange.answer is None:
                    exchange.answer = Answer(JUDGED_ANSWER_CHARS)
        if trace is not None:
            trace.call(exchange, provider, wire.headers, parsed.payload)
        upstream = await resources.upstream.open(
            request.method, wire.tail, wire.headers, wire.body, provider.base_url
        )
        async with upstream:
            exchange.status = upstream.status
            # Anthropic names its request id `request-id`.
            exchange.upstream_request_id = upstream.headers.get(
                "x-request-id"
            ) or upstream.headers.get("request-id")
            headers = client_response_headers(upstream.headers)
            headers[REQUEST_ID_HEADER] = request_id
            if decision is not None:
                _add_prompt_headers(headers, decision.version, exchange)
            if wire.call is not None:
                return await relay_messages(request, upstream, exchange, headers, wire.call)
            return await relay(request, upstream, exchange, wire.usage_injected, headers)
    except ProxyError as exc:
        exchange.status = exc.status
        exchange.error_class = exc.error_class
        raise
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client goes away; leaving the `async with`
        # above has already closed the upstream connection. An answer already whole (its
        # duration taken: a translated stream freeing its connection) was not cut.
        if exchange.duration is None:
            exchange.error_class = "client_disconnected"
            if not exchange.status:
                exchange.status = CLIENT_CLOSED_STATUS
        raise
    finally:
        metrics.requests_open -= 1
        settle(exchange)
        if trace is not None:
            trace.end(exchange)  # after the whole answer: a stream's span ends with it
        observers = resources.eval_finished if exchange.arm == _EVAL else resources.finished
        observers.finished(exchange)  # 6


_EVAL = Arm.EVAL.value
#: Larger bodies are not judged online: the queue holds each until its judge is done.
_JUDGED_BODY_BYTES = 256 * 1024

#: What stages 3 to 5 set on the exchange: put back when the fallback fails too.
_DECIDED = ("version", "arm", "layers", "prompt_hash", "model_sent", "provider", "key")


class _Fallback:
    """A canary's candidate that cannot serve a request (its template wants a variable
    the caller does not send, its model is served by no provider, or by one that cannot
    take what was asked) leaves it to stable, as it would be without the rollout."""

    __slots__ = ("body", "raw_tail", "refused", "request", "tail", "why")

    def __init__(
        self,
        request: web.Request,
        tail: str,
        raw_tail: str,
        body: bytes,
        why: str,
        refused: ProxyError,
    ) -> None:
        self.request, self.tail, self.raw_tail, self.body = request, tail, raw_tail, body
        self.why, self.refused = why, refused

    def to_stable(
        self,
        resources: PipelineResources,
        exchange: Exchange,
        parsed: ParsedRequest,
        decision: Decision,
        stable: PromptVersion,
        snapshot: RegistrySnapshot,
        tenant: Tenant | None,
    ) -> tuple[Decision, ParsedRequest, Provider, Wire]:
        """Stable's decision, request, provider and wire. Counted once stable has them, and
        kept out of the rollout's analysis (neither arm's answer to compare); when stable
        cannot serve it either, the caller gets the candidate's error, as without this."""
        request, tail = self.request, self.tail
        before = dataclasses.replace(exchange)
        fresh = parse_request(exchange.route, request.method, tail, parsed.body, prompt_named=True)
        fallback = Decision(Arm.STABLE, stable, rollout=decision.rollout)
        try:
            _rendered(resources, exchange, fresh, fallback, snapshot, tenant)
            provider = _routed(resources, exchange, request, tail, self.body)
            wire = _wire(provider, exchange, request, fresh, fallback, tail, self.raw_tail)
        except (InvalidRequest, NotFound):
            for name in _DECIDED:
                setattr(exchange, name, getattr(before, name))
            raise self.refused from None
        exchange.rollout_id = None
        metrics = resources.metrics
        metrics.rollout_fallbacks.labels(metrics.slug_label(decision.version.key), self.why).inc()
        return fallback, fresh, provider, wire


def _rendered(
    resources: PipelineResources,
    exchange: Exchange,
    parsed: ParsedRequest,
    decision: Decision,
    snapshot: RegistrySnapshot,
    tenant: Tenant | None,
) -> None:
    """Stages 3 and 4: the arm decided, the version rendered into the payload."""
    exchange.version = str(decision.version.version)
    exchange.arm = decision.arm._value_
    if decision.rollout is not None:
        exchange.rollout_id = decision.rollout.id
        if decision.rollout.key.layer is not None:
            _on_override_line(exchange, snapshot, decision)
    assert parsed.payload is not None
    guardrails = snapshot.guardrails
    rendered = render_into(
        exchange.route,
        parsed.payload,
        decision.version,
        resources.renderer,
        guardrails,
        composition(snapshot, decision.version, tenant, decision.override),
    )
    exchange.prompt_hash = rendered.prompt_hash
    exchange.layers = layers(decision.version, guardrails, rendered.composed)
    exchange.model_sent = decision.version.model


def _routed(
    resources: PipelineResources,
    exchange: Exchange,
    request: web.Request,
    tail: str,
    body: bytes,
) -> Provider:
    """The provider of the model sent (a version's pin, else the request's)."""
    model = exchange.model_sent or exchange.model_requested or model_in_path(tail)
    if model is None and len(resources.providers.all) > 1:
        model = other_model(exchange.route, request.content_type, body)
    if model is None and speaks_messages_api(exchange.route, tail):
        # A Messages batch (by id, or whose requests carry the models): Anthropic's.
        provider = resources.providers.messages_default
    else:
        provider = _provider(resources, model)
    exchange.provider = provider.name
    return provider


def _wire(
    provider: Provider,
    exchange: Exchange,
    request: web.Request,
    parsed: ParsedRequest,
    decision: Decision | None,
    tail: str,
    raw_tail: str,
) -> Wire:
    return primary_wire(
        provider,
        exchange.route,
        request.method,
        tail,
        raw_tail,
        parsed,
        request.headers,
        payload_changed=decision is not None,
        pinned=exchange.model_sent,
    )


def _on_override_line(exchange: Exchange, snapshot: RegistrySnapshot, decision: Decision) -> None:
    """A rollout of a tier's or tenant's override: the request counts on that override's
    line (its windows, feedback and pairs are the rollout's), at the override's version.
    Metrics still show the slug, never the tenant (a layered key is no label)."""
    rollout = decision.rollout
    assert rollout is not None
    exchange.key = rollout.key
    override = decision.override
    exchange.version = str(override.version if override else snapshot.prod.get(rollout.key, 0))


async def _model_list(resources: PipelineResources, request: web.Request) -> tuple[int, bytes]:
    def headers_for(provider: Provider) -> CIMultiDict[str]:
        if provider.messages_api:
            return messages_headers(
                request.headers, provider.api_key, stream=False, drop=CONTROL_HEADERS
            )
        return provider_headers(request.headers, provider)

    return await model_list(resources.upstream, resources.providers, headers_for)


async def _messages_model(
    resources: PipelineResources,
    exchange: Exchange,
    request: web.Request,
    provider: Provider,
    raw_tail: str,
) -> web.Response:
    """``GET /v1/models/{id}`` of a Claude model: asked of Anthropic, answered as OpenAI."""
    headers = messages_headers(
        request.headers, provider.api_key, stream=False, drop=CONTROL_HEADERS
    )
    status, answer, extra = await messages_model(resources.upstream, provider, headers, raw_tail)
    response = _respond(exchange, exchange.request_id, status, answer)
    response.headers.update(extra)
    return response


def _respond(exchange: Exchange, request_id: str, status: int, body: bytes) -> web.Response:
    exchange.status = status
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id},
    )


def _provider(resources: PipelineResources, model: str | None) -> Provider:
    """The provider serving the model sent (the first listed, for a request naming none)."""
    provider = resources.providers.route(model)
    if provider is None:
        raise NotFound(
            f"The model '{model}' is not served by any provider of this proxy.",
            param="model",
            code="model_not_found",
        )
    return provider


def _count_unshadowable(resources: PipelineResources, key: PromptKey) -> None:
    """A request naming a prompt under a shadow rollout on a route that is never shadowed."""
    rollout = resources.snapshot.current.rollouts.get(key)
    if rollout is not None and rollout.mode is RolloutMode.SHADOW:
        resources.shadow.skip(key, "not_completion")


def _add_prompt_headers(
    headers: CIMultiDict[str], version: PromptVersion, exchange: Exchange
) -> None:
    headers["x-prompt-slug"] = version.key.slug
    headers["x-prompt-version"] = str(version.version)
    headers["x-prompt-arm"] = exchange.arm or Arm.STABLE.value
    if exchange.layers is not None:
        headers["x-prompt-layers"] = exchange.layers
