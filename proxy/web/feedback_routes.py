"""``POST /v1/feedback``: a downstream outcome for an answer, by its request id.

Body: ``{"request_id": "<x-promptproxy-request-id>", "name": "escalated", "value": 1}``.
Answers 200 with the slug, version and arm the outcome was attributed to (``recorded:
false`` on a repeat), 400 for a bad body, 404 ``request_not_found`` for an unknown or
expired id.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.web.keys import SERVICES

#: Feedback is a few fields; anything larger is not feedback.
_MAX_BODY = 4096


async def post_feedback(request: web.Request) -> web.Response:
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise InvalidRequest(f"A feedback body is at most {_MAX_BODY} bytes.")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    unknown = sorted(set(body) - {"request_id", "name", "value"})
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0]!r}.", param=unknown[0])
    for field in ("request_id", "name", "value"):
        if field not in body:
            raise InvalidRequest(f"`{field}` is required.", param=field)
    result = await request.app[SERVICES].feedback.record(
        body["request_id"], body["name"], body["value"]
    )
    return web.Response(body=orjson.dumps(result), content_type="application/json")


def add_routes(app: web.Application) -> None:
    # Before the /v1 catch-all, which would forward it to the provider.
    app.router.add_post("/v1/feedback", post_feedback)
