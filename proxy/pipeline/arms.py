"""Stages 3 and 4 for requests under a rollout: decide the arm, and build the shadow copy.

``choose`` holds the pure decision; this module feeds it the request's sticky key and turns
a sampled shadow decision into a ready-to-send ``ShadowRequest``. The shadow body is
rendered from the client's original bytes, so the primary's render never leaks into it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping

import orjson

from proxy.errors import InvalidRequest
from proxy.exchange.outcome import Arm, Exchange
from proxy.models import ParsedRequest
from proxy.pipeline.choose import Decision, choose, choose_override, shadow_skip, sticky_value
from proxy.pipeline.parse import encode_outbound
from proxy.pipeline.render import layers, render_into
from proxy.pipeline.resolve import PromptRef
from proxy.pipeline.resources import PipelineResources
from proxy.registry.composition import composition
from proxy.registry.models import PromptVersion, RegistrySnapshot, Rollout, Tenant
from proxy.shadow.compare import expects_json
from proxy.shadow.models import ShadowKind, ShadowRequest

#: A candidate that cannot render this request (e.g. it declares a variable the caller does
#: not send) is a finding for the operator, not an error for the caller.
RENDER_FAILED = "render_failed"
#: A candidate pinned to a model no provider serves: the operator's finding too.
MODEL_NOT_SERVED = "model_not_served"
#: A copy bound for a Messages API provider that asks for what the translation refuses
#: (``response_format`` with a schema, say): not sent, counted.
UNTRANSLATABLE = "untranslatable"


def decide(
    resources: PipelineResources,
    snapshot: RegistrySnapshot,
    ref: PromptRef,
    stable: PromptVersion,
    headers: Mapping[str, str],
    parsed: ParsedRequest,
    request_id: str,
    tenant: Tenant | None = None,
) -> Decision:
    if ref.pinned_version is not None:
        return Decision(Arm.PINNED, stable)
    rollout = snapshot.rollouts.get(ref.key)
    if rollout is not None and rollout.segment is not None and not rollout.segment.includes(tenant):
        # Outside the segment: not in the experiment at all, so not in its analysis either.
        rollout = None
    if rollout is None:
        # The base has no rollout for this caller: its tenant's override may (else its tier's).
        rollout = _override_rollout(snapshot, ref, tenant)
        if rollout is None:
            return Decision(Arm.STABLE, stable)
    sticky = sticky_value(
        rollout.sticky,
        headers,
        parsed.payload or {},
        tenant_header=resources.config.rollouts.tenant_header,
        request_id=request_id,
        tenant=None if tenant is None else tenant.id,
    )
    if rollout.key.layer is None:
        decision = choose(snapshot, stable, sticky)
    else:
        decision = choose_override(snapshot, rollout, stable, sticky)
    if decision.unkeyed:
        metrics = resources.metrics
        metrics.rollout_unkeyed.labels(metrics.slug_label(ref.key)).inc()
    return decision


def _override_rollout(
    snapshot: RegistrySnapshot, ref: PromptRef, tenant: Tenant | None
) -> Rollout | None:
    if tenant is None:
        return None
    layered = snapshot.override_rollouts.get(ref.key)
    if layered is None:
        return None
    return layered.get(("tenant", tenant.id)) or layered.get(("tier", tenant.tier))


def line_versions(snapshot: RegistrySnapshot, decision: Decision) -> tuple[int, int]:
    """The versions a pair compares, of the rollout's own line: the base's, or for a
    rollout of an override, the override's prod and candidate."""
    rollout, shadow = decision.rollout, decision.shadow
    if rollout is None or shadow is None:
        raise ValueError("a shadow decision has a rollout and a shadow")
    if decision.shadow_override is None:
        return decision.version.version, shadow.version
    return snapshot.prod.get(rollout.key, 0), decision.shadow_override.version


def shadow_copy(
    resources: PipelineResources,
    exchange: Exchange,
    parsed: ParsedRequest,
    decision: Decision,
    raw_tail: str,
    headers: Mapping[str, str],
    snapshot: RegistrySnapshot,
    tenant: Tenant | None = None,
) -> ShadowRequest | str:
    """The shadow request for a sampled decision, or the reason it is not sent.
    ``headers`` are the primary's outbound headers (same credentials, same provider); the
    candidate is composed under the same guardrails and the same tenant's overrides."""
    candidate, rollout = decision.shadow, decision.rollout
    if candidate is None or rollout is None or parsed.payload is None:
        raise ValueError("shadow_copy needs a sampled shadow decision on a JSON request")
    skip: str | None = shadow_skip(
        parsed.route,
        exchange.method,
        parsed.payload,
        len(parsed.body),
        resources.config.shadow.max_body_bytes,
    )
    if skip is not None:
        return skip
    payload = orjson.loads(parsed.body)
    try:
        composed = render_into(
            parsed.route,
            payload,
            candidate,
            resources.renderer,
            snapshot.guardrails,
            composition(snapshot, candidate, tenant, decision.shadow_override),
        ).composed
    except InvalidRequest:
        return RENDER_FAILED
    primary_version, shadow_version = line_versions(snapshot, decision)
    shadow_parsed = ParsedRequest(
        route=parsed.route, body=parsed.body, payload=payload, stream=parsed.stream
    )
    body, usage_injected = encode_outbound(shadow_parsed, payload_changed=True)
    model = payload.get("model")
    return ShadowRequest(
        pair_id=exchange.request_id,
        request_id=exchange.request_id,
        key=rollout.key,
        rollout_id=rollout.id,
        kind=ShadowKind.CANDIDATE,
        primary_version=primary_version,
        shadow_version=shadow_version,
        route=parsed.route,
        method=exchange.method,
        raw_tail=raw_tail,
        # A copy: the primary's multidict belongs to a request that ends before the shadow.
        headers=dict(headers),
        body=body,
        stream=parsed.stream,
        usage_injected=usage_injected,
        model=model if isinstance(model, str) else None,
        submitted_at=time.monotonic(),
        expect_json=expects_json(payload),
        layers=layers(candidate, snapshot.guardrails, composed),
        tenant=exchange.tenant,
        tier=exchange.tier,
        link=exchange.span,
    )


def noise_copy(
    resources: PipelineResources,
    candidate: ShadowRequest,
    stable_version: int,
    stable_body: bytes,
    usage_injected: bool,
    model: str | None,
    stable_layers: str | None = None,
) -> ShadowRequest | None:
    """On ``shadow.noise_share`` of the shadowed requests, the stable version a second time
    (the primary's own outbound body): its pair measures how much stable differs from
    itself, the floor a candidate's divergence is judged against."""
    share = resources.config.shadow.noise_share
    # Sampling needs no stickiness and no reproducibility, only the share.
    if share <= 0 or random.random() >= share:
        return None
    return dataclasses.replace(
        candidate,
        kind=ShadowKind.STABLE,
        shadow_version=stable_version,
        body=stable_body,
        usage_injected=usage_injected,
        model=model,
        layers=stable_layers,
    )
