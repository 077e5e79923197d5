"""Plain data of the shadow subsystem. No I/O here.

The request pipeline builds a ``ShadowRequest`` and hands it to ``ShadowRunner.submit``
together with a future it resolves with the primary's finished ``Exchange`` (its pair-half
observer does, in the primary's ``finally``, so failed and cancelled primaries resolve it
too). The shadow task owns the pair: it waits for that future and writes one ``Pair``, whose
two halves are ``ArmResult.of`` the two exchanges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from proxy.exchange.messages_call import MessagesCall
from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.prompt_key import PromptKey

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext


class ShadowKind(StrEnum):
    #: The rollout's candidate version: what the comparison is about.
    CANDIDATE = "candidate"
    #: The stable version a second time: the noise floor (stable against itself).
    STABLE = "stable"


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    pair_id: str
    #: The primary's ``x-promptproxy-request-id``, to join pairs with access logs.
    request_id: str
    key: PromptKey
    rollout_id: str
    kind: ShadowKind
    primary_version: int
    shadow_version: int
    route: Route
    method: str
    #: Path and query after ``/v1/``, undecoded, exactly as the primary sent it upstream.
    raw_tail: str
    #: Outbound headers as sent upstream for the primary (hop-by-hop and control headers
    #: already removed; the provider key is in here, never log it).
    headers: Mapping[str, str]
    #: The body rendered with ``shadow_version``, encoded, ready to send.
    body: bytes
    stream: bool
    #: The proxy added ``stream_options.include_usage``: the usage chunk is ours.
    usage_injected: bool
    #: The model sent upstream in the shadow body (for the metric label).
    model: str | None
    #: ``time.monotonic()`` when submitted; the queue drops entries older than its limit.
    submitted_at: float
    #: The request asked for a JSON answer (``response_format``): JSON validity is compared.
    expect_json: bool = False
    #: What composed the body sent (``guardrails@2,base@4,tenant:acme@1``), and for whom.
    layers: str | None = None
    tenant: str | None = None
    tier: str | None = None
    #: The base URL of the provider serving ``model`` (and ``headers`` carry its key);
    #: None: the shadow client's own (``shadow.base_url``, else the upstream's).
    base_url: str | None = None
    #: The name of that provider (the metrics' ``provider`` label); None: not routed.
    provider: str | None = None
    #: Set when that provider speaks the Messages API: ``body`` is this call's, sent to
    #: ``/v1/messages``, and the answer is read back as a chat completion.
    messages: MessagesCall | None = None
    #: The primary's span when tracing is on: the shadow's span links to it.
    link: SpanContext | None = None


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(slots=True)
class ArmResult:
    """What one arm (primary or shadow) answered, as far as the pair needs it."""

    version: int
    status: int = 0
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None
    #: Seconds, request start to last byte.
    latency: float | None = None
    #: Seconds to the first content event (streams only).
    ttft: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Why the arm failed (``upstream_5xx``, ``timeout``, ``client_disconnected``...).
    error_class: str | None = None
    #: The output text was cut to the sink's ``max_output_chars``.
    truncated: bool = False
    #: What composed the prompt this arm ran (``x-prompt-layers``).
    layers: str | None = None

    @classmethod
    def of(cls, exchange: Exchange) -> ArmResult:
        """A finished exchange (primary or shadow) as its pair records it."""
        answer = exchange.answer
        result = cls(
            version=int(exchange.version or 0),
            status=exchange.status,
            finish_reason=exchange.finish_reason,
            model=exchange.model_answered,
            latency=exchange.duration,
            ttft=exchange.ttfb if exchange.stream else None,
            input_tokens=exchange.input_tokens,
            output_tokens=exchange.output_tokens,
            error_class=exchange.error_class,
            layers=exchange.layers,
        )
        if answer is not None:
            result.text = answer.text
            result.tool_calls = [ToolCall(name, args) for name, args in answer.tool_calls()]
            # `n > 1` answers: the pair compares the first choice, its finish reason too.
            result.finish_reason = answer.finish_reason or result.finish_reason
            result.truncated = answer.truncated
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "text": self.text,
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "finish_reason": self.finish_reason,
            "model": self.model,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 3),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "error_class": self.error_class,
            "truncated": self.truncated,
            "layers": self.layers,
        }
