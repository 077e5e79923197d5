"""The outcome of one arm's exchange with the provider, primary or shadow. Plain data.

The primary's ``Exchange`` is filled stage by stage by the pipeline; a shadow call's by
``shadow/call.py``. Either way, once it is finished it goes once through the ordered
observers (``proxy.pipeline.record``): metrics, analysis window, feedback index, access
log, pair half.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from proxy.models import Route
from proxy.prompt_key import PromptKey

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from proxy.exchange.answer import Answer


class Arm(StrEnum):
    """The bounded set of arm labels (headers, logs, metrics)."""

    STABLE = "stable"
    CANARY = "canary"
    #: ``X-Prompt-Version`` chose the version: outside any rollout and its analysis.
    PINNED = "pinned"
    SHADOW = "shadow"
    #: An eval run's call (pinned, from this process's eval runner): in the access log,
    #: never in the metrics, the analysis or a tenant's usage.
    EVAL = "eval"


@dataclass(slots=True)
class Exchange:
    """Everything recorded about one arm's call: the primary request, or a shadow copy."""

    request_id: str
    method: str
    route: Route
    started: float
    #: The prompt the request names (None: none); logs and labels show its slug.
    key: PromptKey | None = None
    version: str | None = None
    arm: str | None = None
    #: What composed the prompt sent, in order (``guardrails@2,base@3``): the
    #: ``x-prompt-layers`` header and the access log's ``layers``.
    layers: str | None = None
    #: The rendered prompt's digest (``pipeline/render.prompt_hash``): the access log's.
    prompt_hash: str | None = None
    #: The tenant the registry knows the caller as, and its tier (the access log's; a
    #: tenant is never a metric label).
    tenant: str | None = None
    tier: str | None = None
    #: The provider the call went to (``providers``; its name is a bounded label).
    provider: str | None = None
    stream: bool = False
    model_requested: str | None = None
    #: The model sent upstream when a prompt's model pin replaced the requested one (a
    #: shadow: the model of the shadow's body).
    model_sent: str | None = None
    model_answered: str | None = None
    status: int = 0
    upstream_request_id: str | None = None
    #: Seconds from the start to the first body byte sent to the client (the primary's
    #: streams), or to the first content event (a shadow's streams).
    ttfb: float | None = None
    duration: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error_class: str | None = None
    #: The running rollout of the prompt key when the request was under one (for the analysis).
    rollout_id: str | None = None
    #: The answer's text and tool calls, captured only when a shadow pair, a capture or an
    #: online judge needs them.
    answer: Answer | None = None
    #: A request sampled for capture (``capture.slugs``): the client's body as received.
    capture: bytes | None = None
    #: A served answer sampled for online judging (``evals.online``): the client's body as
    #: received (its messages are the judged conversation).
    judged: bytes | None = None
    #: A primary whose shadow copy was sent: resolved with this exchange when it finishes
    #: (then cleared: the future holds the exchange, not the other way round).
    pair: asyncio.Future[Exchange] | None = None
    #: A shadow call's pair and kind (``candidate`` or ``stable``, see ``ShadowKind``).
    pair_id: str | None = None
    shadow_kind: str | None = None
    #: The request's span when tracing is on (``proxy/tracing``): what the spans of its
    #: shadow copy and its online judge link to.
    span: SpanContext | None = None

    @property
    def is_shadow(self) -> bool:
        """A copy the caller never saw."""
        return self.pair_id is not None


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def error_class_for_status(status: int) -> str | None:
    if status == 429:
        return "upstream_429"
    if 400 <= status < 500:
        return "upstream_4xx"
    if status >= 500:
        return "upstream_5xx"
    return None
