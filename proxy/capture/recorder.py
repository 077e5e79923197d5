"""``CaptureRecorder``: the captured exchanges of this replica until the flusher writes them.

An observer of finished exchanges (``proxy.pipeline.record``): for a request the pipeline
sampled (``Exchange.capture``: the client's body), it keeps what a replay needs: the body,
the answer's text, finish reason and tool calls, the version, arm, rollout, layers, tenant,
prompt hash and model. It runs on the request path, so it only appends to a bounded list:
decoding, redaction and the size cap happen in the flusher (``CaptureService``). A call
that failed or was cut has no answer to compare with, and is not kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.exchange.outcome import Exchange


@dataclass(frozen=True, slots=True)
class Pending:
    """A finished captured exchange, as the request path hands it over."""

    at: float
    slug: str
    version: int
    arm: str
    rollout_id: str | None
    layers: str | None
    tenant: str | None
    prompt_hash: str | None
    model: str | None
    body: bytes
    status: int
    text: str
    finish_reason: str | None
    tool_calls: list[tuple[str, str]]
    #: The answer's text or an argument was cut at ``capture.max_bytes``.
    cut: bool


class CaptureRecorder:
    __slots__ = ("_clock", "_max", "_max_bytes", "dropped", "pending", "too_large")

    def __init__(self, clock: Callable[[], float], max_pending: int, max_bytes: int) -> None:
        self._clock = clock
        self._max = max_pending
        self._max_bytes = max_bytes
        self.pending: list[Pending] = []
        #: Captures dropped because the list was full, or the request alone was larger than
        #: a capture may be (the flusher counts them): held until the flush, a body up to
        #: the request limit would hold that much memory per capture.
        self.dropped = 0
        self.too_large = 0

    def finished(self, ex: Exchange) -> None:
        body, answer, key = ex.capture, ex.answer, ex.key
        if body is None or answer is None or key is None or ex.version is None:
            return
        if ex.error_class is not None or not 200 <= ex.status < 300:
            return  # nothing a replay can compare with
        if (answer.finish_reason or ex.finish_reason) is None:
            return  # a stream that ended without saying how: maybe cut, no reference
        if len(self.pending) >= self._max:
            self.dropped += 1
            return
        if len(body) > self._max_bytes:
            self.too_large += 1
            return
        self.pending.append(
            Pending(
                at=self._clock(),
                slug=str(key),
                version=int(ex.version),
                arm=ex.arm or "stable",
                rollout_id=ex.rollout_id,
                layers=ex.layers,
                tenant=ex.tenant,
                prompt_hash=ex.prompt_hash,
                model=ex.model_sent or ex.model_requested,
                body=body,
                status=ex.status,
                text=answer.text,
                finish_reason=answer.finish_reason or ex.finish_reason,
                tool_calls=answer.tool_calls(),
                cut=answer.truncated,
            )
        )

    def take(self) -> list[Pending]:
        taken, self.pending = self.pending, []
        return taken
