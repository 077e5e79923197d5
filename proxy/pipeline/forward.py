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
from proxy.errors import UpstreamPoolExhausted, UpstreamTimeout, UpstreamUnavailable

# aiohttp would otherwise invent these when the client did not send them; a proxy must not.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Content-Type"})


def _timeout(config: UpstreamConfig, *, queued: bool) -> aiohttp.ClientTimeout:
    """``connect`` covers waiting for a free pooled connection *and* opening one;
    ``sock_connect`` bounds the TCP/TLS connect alone. A request that finds the pool full
    may wait ``pool_wait_seconds`` in all (a freed connection is reused, so no connect
    follows); any other request keeps its full connect timeout, plus the wait as a bound
    should the pool fill up just before it. Without ``connect`` a request queued for ever."""
    connect = config.pool_wait_seconds
    if not queued:
        connect += config.connect_timeout_seconds
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect,
        sock_connect=config.connect_timeout_seconds,
        sock_read=config.read_timeout_seconds,
    )


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
        timeout=_timeout(config, queued=False),
        trust_env=False,
    )


class PoolUsage:
    """How full a connector's pool is. aiohttp has no public counters for it, so this reads
    two of the connector's attributes (pinned by tests/component/test_upstream_pool.py)."""

    __slots__ = ("_connector", "limit")

    def __init__(self, connector: aiohttp.BaseConnector) -> None:
        self._connector = connector
        self.limit = connector.limit

    def in_use(self) -> int:
        """Connections handed out (or being opened) right now."""
        return len(self._connector._acquired)

    def waiting(self) -> int:
        """Requests waiting for a connection to come free."""
        return sum(len(waiters) for waiters in self._connector._waiters.values())

    def full(self) -> bool:
        return bool(self.limit) and self.in_use() >= self.limit


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession, config: UpstreamConfig) -> None:
        self._session = session
        self._base = config.base_url
        self._pool_wait = config.pool_wait_seconds
        self._timeout = _timeout(config, queued=False)
        self._queued_timeout = _timeout(config, queued=True)
        self.pool = PoolUsage(session.connector) if session.connector is not None else None

    async def open(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers arrived.

        ``raw_path_qs`` is the still-encoded path below ``/v1`` with its query string; it is
        appended to the configured base URL only, so no header or body field can pick the host.
        The caller must release the response.
        """
        url = URL(self._base + raw_path_qs, encoded=True)
        # A full pool at the start means any connect timeout below was (at least partly) the
        # wait for a free connection: the proxy's capacity, not the provider's fault.
        queued = self.pool is not None and self.pool.full()
        try:
            return await self._session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                # Only a request that has to queue gets the shorter bound.
                timeout=self._queued_timeout if queued else self._timeout,
            )
        except aiohttp.ConnectionTimeoutError:
            if queued:
                raise UpstreamPoolExhausted(
                    "The proxy has no free connection to the upstream provider "
                    f"(all in use for {self._pool_wait:g}s). Retry shortly."
                ) from None
            raise UpstreamTimeout(
                "The upstream provider did not accept a connection in time."
            ) from None
        except TimeoutError:
            raise UpstreamTimeout("The upstream provider did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Could not reach the upstream provider ({type(exc).__name__})."
            ) from None
        except asyncio.CancelledError:
            raise
