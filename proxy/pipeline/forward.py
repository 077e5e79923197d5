"""Stage 5a, forward: send the request to the configured provider over the app's one
pooled ``ClientSession``. Knows nothing of prompts; maps transport failures to
``UpstreamError`` before any byte reached the client.
"""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import UpstreamConfig
from proxy.errors import UpstreamTimeout, UpstreamUnavailable

# aiohttp would otherwise invent these when the client did not send them; a proxy must not.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Content-Type"})


def make_session(config: UpstreamConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=config.max_connections, limit_per_host=0, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Relayed bytes stay as the provider encoded them; we ask for identity anyway.
        auto_decompress=False,
        # A shared jar would hand one client's provider cookies to every other client.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.connect_timeout_seconds,
            sock_read=config.read_timeout_seconds,
        ),
        trust_env=False,
    )


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession, config: UpstreamConfig) -> None:
        self._session = session
        self._base = config.base_url

    async def open(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers arrived.

        ``raw_path_qs`` is the still-encoded path below ``/v1`` with its query string; it is
        appended to the configured base URL only, so no header or body field can pick the host.
        The caller must release the response.
        """
        url = URL(self._base + raw_path_qs, encoded=True)
        try:
            return await self._session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        except TimeoutError:
            raise UpstreamTimeout("The upstream provider did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Could not reach the upstream provider ({type(exc).__name__})."
            ) from None
        except asyncio.CancelledError:
            raise
