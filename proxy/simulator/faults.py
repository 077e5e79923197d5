"""Per-request control: which delays and faults a single request asks for.

Tests and benchmarks steer the simulator through request headers (win) or magic
model names (handy when a client library does not let you set headers).

| header                 | model                  | effect                                   |
|------------------------|------------------------|------------------------------------------|
| x-sim-first-byte-ms    |                        | delay before headers / non-stream body   |
| x-sim-chunk-delay-ms   |                        | delay between SSE events                 |
| x-sim-chunks           |                        | content chunks per streamed answer       |
| x-sim-status: <code>   | sim-status-<code>      | answer with an OpenAI-shaped error       |
| x-sim-retry-after-ms   |                        | retry-after(-ms) on the error response   |
| x-sim-fault: drop      | sim-drop               | abort the TCP connection mid-answer      |
| x-sim-fault: hang      | sim-hang               | never send headers                       |
| x-sim-fault: hang-mid-stream | sim-hang-mid-stream | send first events, then stall        |
| x-sim-stream-error: <code> |                  | /v1/messages: an SSE ``error`` event midway |
|                        | sim-judge*             | answer as a judge: ``{"score", "reason"}`` |
|                        | sim-judge-strict*      | the same, but any noise word scores 0.0  |

The judge models (``proxy.simulator.judge``) score the text after the last user message's
last ``Answer:`` line by its share of ``noise`` directive words; the other controls apply.

A third channel is the request body: a ``[[sim ...]]`` marker in the system or
developer message (chat) or in ``instructions`` (Responses API) steers answer
quality for every request rendered from that prompt, e.g.
``[[sim truncate=0.2 error=0.1 noise=0.3 longer=1.5]]``:

| directive    | range    | effect                                                        |
|--------------|----------|---------------------------------------------------------------|
| truncate=P   | 0..1     | answer cut short with probability P, finish_reason ``length`` |
| error=P      | 0..1     | 500 with probability P (the x-sim-status error path)          |
| noise=P      | 0..1     | each answer word swapped for a random one with probability P  |
| longer=F     | >0..100  | about F times as many answer words                            |

Bad values give a 400 naming the directive. Details: ``proxy.simulator.directives``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .errors import RequestError
from .settings import MAX_CHUNKS, SimulatorSettings

HEADER_FIRST_BYTE_MS: Final = "x-sim-first-byte-ms"
HEADER_CHUNK_DELAY_MS: Final = "x-sim-chunk-delay-ms"
HEADER_CHUNKS: Final = "x-sim-chunks"
HEADER_STATUS: Final = "x-sim-status"
HEADER_RETRY_AFTER_MS: Final = "x-sim-retry-after-ms"
HEADER_FAULT: Final = "x-sim-fault"
HEADER_STREAM_ERROR: Final = "x-sim-stream-error"

MODEL_STATUS_PREFIX: Final = "sim-status-"

# An hour is far beyond any test or benchmark; it stops a typo from parking a request forever.
_MAX_DELAY_MS: Final = 3_600_000.0


class Fault(enum.Enum):
    DROP = "drop"
    HANG = "hang"
    HANG_MID_STREAM = "hang-mid-stream"


_FAULT_BY_MODEL: Final = MappingProxyType({f"sim-{fault.value}": fault for fault in Fault})


@dataclass(frozen=True, slots=True)
class RequestControl:
    first_byte_ms: float
    chunk_delay_ms: float
    chunks: int
    status: int | None
    """Error status to answer with (>= 400), or None for a normal answer."""
    retry_after_ms: int | None
    fault: Fault | None
    stream_error: int | None = None
    """Messages API only: the status whose error type a stream reports midway (>= 400)."""


def parse_control(
    headers: Mapping[str, str], model: str, settings: SimulatorSettings
) -> RequestControl:
    """Combine settings, model-name switches and headers; raise RequestError on bad values."""
    status = _model_status(model)
    fault = _FAULT_BY_MODEL.get(model)
    if (raw := headers.get(HEADER_STATUS)) is not None:
        status = _parse_status(raw)
    if (raw := headers.get(HEADER_FAULT)) is not None:
        fault = _parse_fault(raw)
    return RequestControl(
        first_byte_ms=_header_ms(headers, HEADER_FIRST_BYTE_MS, settings.first_byte_ms),
        chunk_delay_ms=_header_ms(headers, HEADER_CHUNK_DELAY_MS, settings.chunk_delay_ms),
        chunks=_header_chunks(headers, settings.chunks),
        status=status if status is not None and status >= 400 else None,
        retry_after_ms=_header_retry_after(headers),
        fault=fault,
        stream_error=_header_stream_error(headers),
    )


def _model_status(model: str) -> int | None:
    if not model.startswith(MODEL_STATUS_PREFIX):
        return None
    try:
        return _parse_status(model[len(MODEL_STATUS_PREFIX) :])
    except RequestError as exc:
        raise RequestError(exc.message, param="model") from None


def _parse_status(raw: str) -> int:
    try:
        status = int(raw.strip())
    except ValueError:
        status = 0
    if not 100 <= status <= 599:
        raise RequestError(f"{HEADER_STATUS} must be an HTTP status code, got {raw!r}.")
    return status


def _header_stream_error(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_STREAM_ERROR)
    if raw is None:
        return None
    try:
        status = _parse_status(raw)
    except RequestError:
        status = 0
    if status < 400:
        raise RequestError(
            f"{HEADER_STREAM_ERROR} must be an error status (400..599), got {raw!r}."
        )
    return status


def _parse_fault(raw: str) -> Fault | None:
    value = raw.strip().lower()
    if value in ("", "none"):
        return None
    try:
        return Fault(value)
    except ValueError:
        choices = ", ".join(f.value for f in Fault)
        raise RequestError(f"{HEADER_FAULT} must be one of {choices}; got {raw!r}.") from None


def _header_ms(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= _MAX_DELAY_MS:  # also rejects NaN
        raise RequestError(f"{name} must be a number of milliseconds, got {raw!r}.")
    return value


def _header_chunks(headers: Mapping[str, str], default: int) -> int:
    raw = headers.get(HEADER_CHUNKS)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CHUNKS:
        raise RequestError(f"{HEADER_CHUNKS} must be an integer in 1..{MAX_CHUNKS}, got {raw!r}.")
    return value


def _header_retry_after(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_RETRY_AFTER_MS)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RequestError(f"{HEADER_RETRY_AFTER_MS} must be a non-negative integer, got {raw!r}.")
    return value
