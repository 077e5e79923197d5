"""Data-plane handlers: thin wrappers that find the path parts and call the pipeline."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.pipeline.resolve import slug_key
from proxy.pipeline.resources import PipelineResources
from proxy.pipeline.run import handle
from proxy.prompt_key import InvalidPromptKey
from proxy.web.keys import REQUEST_ID

_V1 = "/v1"


def _raw_tail(request: web.Request, prefix: str) -> str:
    """The still-encoded path and query below ``prefix``, from the parsed target the router
    matched. Not ``request.raw_path``: for an absolute-form target (``GET
    http://host/v1/models``, which HTTP/1.1 servers must accept) that is the whole URL,
    and cutting the prefix off it sent ``/v1p://host/v1/models`` upstream."""
    raw = request.rel_url.raw_path_qs
    if not raw.startswith(prefix + "/"):
        # The router matched the decoded path; a percent-encoded prefix (`/%761/...`) would
        # make the raw cut land elsewhere.
        raise InvalidRequest(
            f"The request path must start with {prefix}/ as plain characters.",
            code="invalid_path",
        )
    return raw[len(prefix) :]


class ProxyRoutes:
    """The two data-plane routes, holding the pipeline they feed (a request would otherwise
    find it through ``request.app``, a chain of aiohttp properties, every time)."""

    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: PipelineResources) -> None:
        self._pipeline = pipeline

    async def v1(self, request: web.Request) -> web.StreamResponse:
        raw_tail = _raw_tail(request, _V1)
        return await handle(
            self._pipeline,
            request,
            request[REQUEST_ID],
            request.match_info["tail"],
            raw_tail,
            url_key=None,
        )

    async def slug_v1(self, request: web.Request) -> web.StreamResponse:
        match = request.match_info
        slug = match["slug"]
        pipeline = self._pipeline
        try:
            # The request's one key (a header naming another is a 400).
            key = slug_key(pipeline.snapshot.current, slug)
        except InvalidPromptKey:
            raise InvalidRequest(
                "The prompt slug in the URL must match [A-Za-z0-9._-]{1,64}.",
                param="slug",
                code="invalid_slug",
            ) from None
        # A valid slug has no characters that percent-encoding changes, so the raw prefix is
        # exactly "/p/" + slug + "/v1".
        raw_tail = _raw_tail(request, f"/p/{slug}{_V1}")
        return await handle(
            pipeline, request, request[REQUEST_ID], match["tail"], raw_tail, url_key=key
        )


def add_routes(app: web.Application, pipeline: PipelineResources) -> None:
    routes = ProxyRoutes(pipeline)
    app.router.add_route("*", "/v1/{tail:.*}", routes.v1)
    app.router.add_route("*", "/p/{slug}/v1/{tail:.*}", routes.slug_v1)
