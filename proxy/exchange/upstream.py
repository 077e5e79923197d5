"""The one HTTP client to the provider, for the primary and the shadow alike.

Each arm has its own ``ClientSession`` and pool (a slow candidate must not take
connections from user traffic), built here from its own limits (``UpstreamLimits.primary``
and ``.shadow``) with the same rules: no cookie jar shared between callers, no environment
proxies, no redirects followed, no invented headers, the URL always the configured base
plus the request's path, and transport failures mapped to ``UpstreamError`` (or
``UpstreamPoolExhausted``) before any byte reached anyone. Knows nothing of prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import ProxyConfig, UpstreamConfig
from proxy.errors import UpstreamPoolExhausted, UpstreamTimeout, UpstreamUnavailable

# aiohttp would otherwise invent these when the client did not send them; a proxy must not.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Content-Type"})


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """Where one arm's calls go and how long they may take."""

    base_url: str
    max_connections: int
    connect_timeout: float
    #: Longest silence between two reads; None: the caller bounds its whole call instead.
    read_timeout: float | None
    #: How long a call may wait for a free pooled connection before its retryable 503;
    #: None: only the caller's own deadline bounds that wait.
    pool_wait: float | None
    #: The primary relays the provider's bytes as they are (and asks for identity anyway);
    #: a shadow reads its answer and nothing else.
    decompress: bool = False

    @classmethod
    def primary(cls, config: UpstreamConfig) -> UpstreamLimits:
        return cls(
            base_url=config.base_url,
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout_seconds,
            read_timeout=config.read_timeout_seconds,
            pool_wait=config.pool_wait_seconds,
        )

    @classmethod
    def shadow(cls, config: ProxyConfig) -> UpstreamLimits:
        """``shadow.base_url``, else the upstream's. The whole shadow call runs under
        ``shadow.timeout_seconds`` (see ``shadow/call.py``); only the connect gets its own,
        shorter limit."""
        shadow = config.shadow
        return cls(
            base_url=shadow.base_url or config.upstream.base_url,
            max_connections=shadow.max_connections,
            connect_timeout=shadow.connect_timeout_seconds,
            read_timeout=None,
            pool_wait=None,
            decompress=True,
        )


def _timeout(limits: UpstreamLimits, *, queued: bool) -> aiohttp.ClientTimeout:
    """``connect`` covers waiting for a free pooled connection *and* opening one;
    ``sock_connect`` bounds the TCP/TLS connect alone. A request that finds the pool full
    may wait ``pool_wait`` in all (a freed connection is reused, so no connect follows);
    any other request keeps its full connect timeout, plus the wait as a bound should the
    pool fill up just before it. Without ``connect`` a request queued for ever (unless its
    caller bounds the whole call)."""
    connect = limits.pool_wait
    if connect is not None and not queued:
        connect += limits.connect_timeout
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect,
        sock_connect=limits.connect_timeout,
        sock_read=limits.read_timeout,
    )


def _session(limits: UpstreamLimits) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=limits.max_connections, limit_per_host=0, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=limits.decompress,
        # A shared jar would hand one client's provider cookies to every other client.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=_timeout(limits, queued=False),
        trust_env=False,
        # Given once here, not with each request: aiohttp rebuilds a per-request set.
        skip_auto_headers=_SKIP_AUTO_HEADERS,
    )


@contextlib.contextmanager
def answer_read_errors() -> Iterator[None]:
    """Reading an answer's body: a provider that stops sending or breaks off is the
    proxy's ``UpstreamError``, as a failure to connect is."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout("The upstream provider stopped sending its answer.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(
            f"The upstream provider broke off its answer ({type(exc).__name__})."
        ) from None


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
    def __init__(self, limits: UpstreamLimits) -> None:
        """Call from a running loop (it opens the ``ClientSession``); ``close`` it."""
        self._session = _session(limits)
        self._base = limits.base_url.rstrip("/")
        self._pool_wait = limits.pool_wait
        self._timeout = _timeout(limits, queued=False)
        self._queued_timeout = _timeout(limits, queued=True)
        connector = self._session.connector
        self.pool = PoolUsage(connector) if connector is not None else None

    async def open(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes,
        base_url: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers arrived.

        ``raw_path_qs`` is the still-encoded path below ``/v1`` with its query string; it is
        appended to a configured base URL only (``base_url``, a provider's, else this
        client's), so no header or body field can pick the host. The caller must release the
        response.
        """
        tail = raw_path_qs if raw_path_qs.startswith("/") else "/" + raw_path_qs
        # Base URLs come rstripped from the config (``provider_url``).
        url = URL((base_url or self._base) + tail, encoded=True)
        # A full pool at the start means any connect timeout below was (at least partly) the
        # wait for a free connection: the proxy's capacity, not the provider's fault.
        pool_wait = self._pool_wait
        queued = pool_wait is not None and self.pool is not None and self.pool.full()
        try:
            return await self._session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                # Only a request that has to queue gets the shorter bound.
                timeout=self._queued_timeout if queued else self._timeout,
            )
        except aiohttp.ConnectionTimeoutError:
            if queued:
                raise UpstreamPoolExhausted(
                    "The proxy has no free connection to the upstream provider "
                    f"(all in use for {pool_wait:g}s). Retry shortly."
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

    async def close(self) -> None:
        await self._session.close()
