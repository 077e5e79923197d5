"""The `wait` of admin writes, and the `served` object of their answers.

Every write endpoint takes `?wait=SECONDS` (above 0, at most 60): the answer then comes once
every live replica serves the change, or the wait is over, and its `served` object says
which replicas confirmed. Without it, `served` still says whether the answering process
serves the change (it loads it before answering, unless the store failed just then).
"""

from __future__ import annotations

from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.registry.service import check_wait
from proxy.web.keys import SERVICES


def wait_of(request: web.Request) -> float | None:
    """The `wait` query parameter, checked before anything is written."""
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


async def served(request: web.Request, wait: float | None) -> dict[str, object]:
    return (await request.app[SERVICES].registry.served(wait)).to_dict()
