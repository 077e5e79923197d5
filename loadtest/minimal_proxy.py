"""A featureless aiohttp pass-through proxy: the ceiling a Python proxy can reach.

It does only what any reverse proxy must: one pooled ``ClientSession``, method, path,
headers and body forwarded, hop-by-hop headers dropped, status, headers and body relayed,
``text/event-stream`` answers relayed chunk by chunk as they arrive. No parsing, metrics,
logging or error shaping, so the benchmark can show what promptproxy's features cost.

``python loadtest/minimal_proxy.py --port 8080 --upstream http://127.0.0.1:8090/v1``
serves ``/v1/...`` and forwards it to the upstream base URL (``/v1/x`` -> ``{upstream}/x``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp computes the length and Host itself, for each side of the connection.
_DROP = _HOP_BY_HOP | {"host", "content-length"}
# Otherwise aiohttp invents these when the client did not send them.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_PREFIX = "/v1"

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _copy_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _DROP)


async def forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    url = URL(app[UPSTREAM] + request.raw_path[len(_PREFIX) :], encoded=True)
    body = await request.read()
    try:
        upstream = await app[SESSION].request(
            request.method,
            url,
            headers=_copy_headers(request.headers),
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.Response(status=502, text=f"upstream unreachable: {type(exc).__name__}\n")
    async with upstream:
        headers = _copy_headers(upstream.headers)
        if upstream.content_type != "text/event-stream":
            return web.Response(status=upstream.status, body=await upstream.read(), headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    # Same pool and timeouts as promptproxy, so only the per-request work differs.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600),
        trust_env=False,
    )
    app[SESSION] = session
    yield
    await session.close()


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", _PREFIX + "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(build_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Minimal aiohttp pass-through proxy.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8090/v1")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
