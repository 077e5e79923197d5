"""Simulator configuration and the constants every endpoint shares.

Constants are immutable (tuples, ``MappingProxyType``) so the package keeps no
module-level mutable state; anything that changes at runtime lives on the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Process-wide defaults; most of them can be overridden per request via headers."""

    first_byte_ms: float = 0.0
    """Delay before response headers (non-stream: before the body)."""
    chunk_delay_ms: float = 0.0
    """Delay between SSE events."""
    chunks: int = 8
    """Content chunks per streamed answer."""
    api_key: str | None = None
    """When set, ``/v1`` requests without ``Authorization: Bearer <api_key>`` get 401."""
    record_requests: int = 1000
    """Size of the bounded in-memory log of received requests (0 disables)."""
    seed: int | None = None
    """Seed for ``[[sim ...]]`` directive randomness; None draws OS entropy per request.

    With a seed, a run that sends the same requests in the same order gets the same
    answers, which keeps rate tests reproducible.
    """

    def __post_init__(self) -> None:
        # Fail at startup rather than on the first request with a confusing error.
        if self.first_byte_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("simulator delays must be >= 0")
        if not 1 <= self.chunks <= MAX_CHUNKS:
            raise ValueError(f"simulator chunks must be between 1 and {MAX_CHUNKS}")
        if self.record_requests < 0:
            raise ValueError("simulator record_requests must be >= 0")


MAX_CHUNKS: Final = 10_000
"""Upper bound for ``chunks`` so a typo in a header cannot allocate millions of events."""

MAX_N: Final = 128
"""OpenAI caps ``n`` at 128 as well."""

MAX_EMBEDDING_DIMENSIONS: Final = 8192

DEFAULT_EMBEDDING_DIMENSIONS: Final = 16

RESPONSE_STORE_LIMIT: Final = 1000
"""How many Responses API objects ``GET /v1/responses/{id}`` can still find."""

CLIENT_MAX_SIZE: Final = 64 * 1024 * 1024
"""aiohttp's 1 MiB default is smaller than real long-context chat bodies."""

SHUTDOWN_TIMEOUT_S: Final = 2.0
"""A simulator has nothing worth a 60 s graceful drain; keep test teardown quick."""

CREATED_BASE: Final = 1_717_000_000
"""``created`` = this + a value derived from the request digest (deterministic, plausible)."""

SYSTEM_FINGERPRINT: Final = "fp_sim0000001"

OWNED_BY: Final = "promptproxy-simulator"

MODELS: Final = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "sim-model",
)

SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"

JSON_HEADERS: Final = MappingProxyType({"Content-Type": "application/json"})

SSE_HEADERS: Final = MappingProxyType(
    {"Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-cache"}
)

RATE_LIMIT_HEADERS: Final = MappingProxyType(
    {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-tokens": "29999000",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "2ms",
    }
)

EXHAUSTED_RATE_LIMIT_HEADERS: Final = MappingProxyType(
    {
        **RATE_LIMIT_HEADERS,
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "1s",
    }
)

DEFAULT_RETRY_AFTER_MS: Final = 1000
