"""Per-app runtime state: typed keys and the two bounded in-memory stores.

All mutable state hangs off the ``web.Application`` so several simulators can run
in one process (tests start many) without sharing anything.
"""

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from .settings import SimulatorSettings


@dataclass(frozen=True, slots=True)
class ReceivedBody:
    """A request body read once by the middleware and shared with the handler."""

    size: int
    value: Any
    """Parsed JSON, or None when the body was empty or not JSON (see ``valid``)."""
    valid: bool


class RequestLog:
    """The last ``capacity`` requests as JSON-ready dicts, oldest first."""

    __slots__ = ("_entries",)

    def __init__(self, capacity: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)

    @property
    def enabled(self) -> bool:
        return self._entries.maxlen != 0

    def record(self, request: web.BaseRequest, body: ReceivedBody) -> None:
        self._entries.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": _joined_headers(request.headers),
                "body": body.value,
                "body_bytes": body.size,
            }
        )

    def last(self, limit: int | None) -> list[dict[str, Any]]:
        entries = list(self._entries)
        return entries if limit is None else entries[len(entries) - min(limit, len(entries)) :]

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count


def _joined_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    # Repeated headers are joined the way RFC 9110 allows a recipient to combine them.
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class ResponseStore:
    """Responses API objects by id, evicting the oldest beyond ``capacity``."""

    __slots__ = ("_capacity", "_items")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: dict[str, dict[str, Any]] = {}

    def put(self, response_id: str, response: dict[str, Any]) -> None:
        self._items.pop(response_id, None)  # re-insert so a repeat counts as newest
        self._items[response_id] = response
        while len(self._items) > self._capacity:
            del self._items[next(iter(self._items))]

    def get(self, response_id: str) -> dict[str, Any] | None:
        return self._items.get(response_id)


class RandomSource:
    """Hands each steered request its own ``random.Random``.

    Without a seed every request is seeded from ``os.urandom``, so identical requests
    differ the way real sampling does; with one, a seeded generator hands out the
    per-request seeds so the sequence repeats run after run.
    """

    __slots__ = ("_seeds",)

    def __init__(self, seed: int | None) -> None:
        self._seeds = None if seed is None else random.Random(seed)

    def request_rng(self) -> random.Random:
        if self._seeds is None:
            return random.Random(os.urandom(16))
        return random.Random(self._seeds.getrandbits(64))


SETTINGS_KEY = web.AppKey("sim_settings", SimulatorSettings)
REQUEST_LOG_KEY = web.AppKey("sim_request_log", RequestLog)
RESPONSE_STORE_KEY = web.AppKey("sim_response_store", ResponseStore)
MODELS_BODY_KEY = web.AppKey("sim_models_body", bytes)
RANDOM_KEY = web.AppKey("sim_random", RandomSource)

STARTED_KEY = web.RequestKey("sim_started", float)
BODY_KEY = web.RequestKey("sim_body", ReceivedBody)
REQUEST_ID_KEY = web.RequestKey("sim_request_id", str)
