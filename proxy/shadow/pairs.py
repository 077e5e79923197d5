"""The pair record (one per shadow call, both halves side by side) and where pairs go.

A pair is redacted once, when it is built: every output text, tool-call name and argument
passes through ``proxy.log.redact``, so a key a model echoes back (or a prompt leaks) never
reaches a sink, a follower or the admin API.

Sinks (``PairSink``) take pairs without blocking (``add``; a full queue or a dead backend
drops and counts, never raises into the caller), serve them back oldest first (``read``)
and stream new ones (``follow``). The store's backend (``proxy.backends``) picks the
implementation: rotated files (embedded), a capped Redis Stream per prompt key, or a
PostgreSQL table capped per key. A pair record names its prompt in ``slug``, by the key's
text (a plain key's is its slug: records written before keys existed read as before).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.log import redact
from proxy.prompt_key import PromptKey
from proxy.shadow.models import ArmResult, ShadowRequest

#: ``follow`` with a ``since`` replays at most this many recorded pairs before going live.
FOLLOW_BACKLOG = 10_000


class SinkUnavailable(Exception):
    """The sink's backend cannot be read now (Redis down); writes never raise this."""


def _arm_dict(arm: ArmResult) -> dict[str, Any]:
    data = arm.to_dict()
    data["text"] = redact(arm.text)
    data["tool_calls"] = [
        {"name": redact(call.name), "arguments": redact(call.arguments)} for call in arm.tool_calls
    ]
    return data


@dataclass(frozen=True, slots=True)
class PairMeta:
    """What a pair needs from its ``ShadowRequest``. A shadow waiting for its primary keeps
    only this, not the request (headers with the provider key, a body up to a MiB)."""

    pair_id: str
    key: PromptKey
    rollout_id: str
    kind: str
    request_id: str
    route: str
    stream: bool
    expect_json: bool = False
    tenant: str | None = None

    @classmethod
    def of(cls, request: ShadowRequest) -> PairMeta:
        return cls(
            pair_id=request.pair_id,
            key=request.key,
            rollout_id=request.rollout_id,
            kind=request.kind.value,
            request_id=request.request_id,
            route=request.route.value,
            stream=request.stream,
            expect_json=request.expect_json,
            tenant=request.tenant,
        )


@dataclass(frozen=True, slots=True)
class Pair:
    pair_id: str
    #: Unix seconds when the pair was recorded (both halves known, or the wait gave up).
    ts: float
    key: PromptKey
    rollout_id: str
    kind: str
    request_id: str
    route: str
    stream: bool
    #: None when the primary never reported within ``pair_wait_seconds``.
    primary: dict[str, Any] | None
    shadow: dict[str, Any]
    expect_json: bool = False
    #: Divergence measures of the two halves (``compare.MEASURES``); None unless both
    #: answered successfully.
    divergence: dict[str, float | None] | None = None
    #: The tenant the primary was answered for (each arm's ``layers`` say what composed it).
    tenant: str | None = None

    @classmethod
    def build(
        cls,
        meta: PairMeta | ShadowRequest,
        primary: ArmResult | None,
        shadow: ArmResult,
        ts: float,
        divergence: dict[str, float | None] | None = None,
    ) -> Pair:
        if isinstance(meta, ShadowRequest):
            meta = PairMeta.of(meta)
        return cls(
            pair_id=meta.pair_id,
            ts=ts,
            key=meta.key,
            rollout_id=meta.rollout_id,
            kind=meta.kind,
            request_id=meta.request_id,
            route=meta.route,
            stream=meta.stream,
            primary=None if primary is None else _arm_dict(primary),
            shadow=_arm_dict(shadow),
            expect_json=meta.expect_json,
            divergence=divergence,
            tenant=meta.tenant,
        )

    @property
    def paired(self) -> bool:
        return self.primary is not None

    def to_dict(self) -> dict[str, Any]:
        # Field order matters: sinks find a key with a byte search on `"slug":` near the start.
        return {
            "pair_id": self.pair_id,
            "ts": self.ts,
            "slug": self.key.text,
            "rollout_id": self.rollout_id,
            "kind": self.kind,
            "request_id": self.request_id,
            "route": self.route,
            "stream": self.stream,
            "primary": self.primary,
            "shadow": self.shadow,
            "expect_json": self.expect_json,
            "divergence": self.divergence,
            "tenant": self.tenant,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class PairSink(Protocol):
    def add(self, pair: Pair) -> None:
        """Queue one pair for writing. Never blocks, never raises: drops and counts."""

    async def read(
        self, key: PromptKey, since: float | None, limit: int, rollout_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded pairs of ``key``, oldest first: the first ``limit`` at or after ``since``
        (unix seconds), or the last ``limit`` when ``since`` is None; only those of
        ``rollout_id`` when given (the limit counts those). Raises ``SinkUnavailable`` when
        the backend cannot be read."""
        ...

    def follow(self, key: PromptKey, since: float | None) -> AsyncIterator[dict[str, Any]]:
        """Pairs recorded since ``since`` (none when None), then new ones as they are
        recorded, until the sink closes. Rides out backend outages instead of raising."""
        ...

    async def close(self) -> None:
        """Write what is queued (bounded wait), then release files or connections.
        Idempotent: the shadow runner closes its sink once its shadows are done, and the
        backend that opened it closes it again with the rest of its parts."""
