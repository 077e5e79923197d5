"""The `wait` of admin writes, and the `served` object of their answers.

Every write endpoint takes `?wait=SECONDS` (above 0, at most 60): the answer then comes once
every live replica serves the change, or the wait is over, and its `served` object says
which replicas confirmed. Without it, `served` still says whether the answering process
serves the change (it loads it before answering, unless the store failed just then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.registry.service import check_wait
from proxy.web.keys import SERVICES


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float | None
    #: monotonic time just before the write: the reported confirmation time counts from it
    started: float


def wait_of(request: web.Request) -> Wait:
    """The `wait` query parameter, checked before anything is written; call it just
    before the write."""
    return Wait(_seconds(request), time.monotonic())


def _seconds(request: web.Request) -> float | None:
    raw = request.query.get("wait")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(
            "`wait` must be a number of seconds, e.g. wait=5.", param="wait", code="invalid_wait"
        ) from None
    return check_wait(value)


async def served(request: web.Request, wait: Wait) -> dict[str, object]:
    registry = request.app[SERVICES].registry
    return (await registry.served(wait.seconds, wait.started)).to_dict()
