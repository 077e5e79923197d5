"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

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

# Recomputed or chosen by the proxy itself rather than copied from the other side.
_REQUEST_DROP = _HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
_RESPONSE_DROP = _HOP_BY_HOP | {"content-length"}

REQUEST_ID_HEADER = "x-promptproxy-request-id"
#: Where providers read a key from: OpenAI (and most), Azure OpenAI, Anthropic, Google.
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key", "x-goog-api-key")
#: The operator console's session cookie (``web/console_session``). Browsers scope cookies
#: by host, not port, so a browser that logged in on the admin port sends it to the data
#: port of the same host too: it must never travel on to a provider.
CONSOLE_COOKIE = "promptproxy_console"


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    return frozenset(
        token.strip().lower()
        for value in headers.getall("connection", ())
        for token in value.split(",")
        if token.strip()
    )


@functools.lru_cache(maxsize=16)
def _dropped(drop: frozenset[str], extra_drop: frozenset[str]) -> frozenset[str]:
    # The callers pass the same few constant sets: their union is made once.
    return drop | extra_drop


def _copy(
    headers: CIMultiDictProxy[str], drop: frozenset[str], extra_drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    # Copied whole in C, then the few dropped names deleted (case-insensitively, every
    # occurrence): five times cheaper than testing each header's lowered name in Python.
    out = CIMultiDict(headers)
    dropped: Iterable[str] = _dropped(drop, extra_drop)
    if "connection" in out:
        # Headers the Connection header names are hop-by-hop for this message only.
        dropped = (*dropped, *_connection_tokens(headers))
    for name in dropped:
        if name in out:
            del out[name]
    return out


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    api_key: str | None,
    drop: frozenset[str] = frozenset(),
    *,
    x_api_key: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: the client's, less hop-by-hop and the proxy's own controls.

    With a configured provider key the client's credentials are replaced, never merged:
    every header a provider reads a key from goes, so a key the client meant for one
    provider never reaches another; it goes as a bearer token, or as ``x-api-key`` (Anthropic).
    We ask for an identity encoding so the proxy can read usage from what it relays.
    """
    out = _copy(client_headers, _REQUEST_DROP, drop)
    if "cookie" in out:
        _drop_console_cookie(out)
    if api_key is not None:
        for name in CREDENTIAL_HEADERS:
            out.popall(name, None)
        if x_api_key:
            out["x-api-key"] = api_key
        else:
            out["Authorization"] = f"Bearer {api_key}"
    out["Accept-Encoding"] = "identity"
    return out


def _drop_console_cookie(headers: CIMultiDict[str]) -> None:
    kept = [
        pair.strip()
        for value in headers.getall("cookie")
        for pair in value.split(";")
        if pair.strip() and pair.split("=", 1)[0].strip() != CONSOLE_COOKIE
    ]
    del headers["cookie"]
    if kept:
        headers["Cookie"] = "; ".join(kept)


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Upstream response headers for the client: everything but hop-by-hop and length."""
    return _copy(upstream_headers, _RESPONSE_DROP)
