"""Plain data passed between the request stages. No I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

SLUG_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Route(StrEnum):
    """The bounded set of route names used in logs and metric labels."""

    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    MODELS = "models"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the proxy needs to know about a request body, and the body to send on."""

    route: Route
    body: bytes
    #: The decoded JSON object, for the routes the proxy understands (None otherwise).
    #: Stages that change the request change this dict, then the body is re-encoded once.
    payload: dict[str, Any] | None = None
    model: str | None = None
    stream: bool = False


@dataclass(slots=True)
class Exchange:
    """Everything recorded about one request, filled in stage by stage."""

    request_id: str
    method: str
    route: Route
    started: float
    slug: str | None = None
    version: str | None = None
    arm: str | None = None
    stream: bool = False
    model_requested: str | None = None
    #: The model sent upstream when a prompt's model pin replaced the requested one.
    model_sent: str | None = None
    model_answered: str | None = None
    status: int = 0
    upstream_request_id: str | None = None
    #: Seconds from arrival to the first body byte sent to the client (streams only).
    ttfb: float | None = None
    duration: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error_class: str | None = None
    #: The running rollout of the slug when the request was under one (for the analysis).
    rollout_id: str | None = None
