from multidict import CIMultiDict, CIMultiDictProxy

from proxy.http_headers import client_response_headers, upstream_request_headers


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_and_connection_named_headers_are_stripped() -> None:
    headers = proxy(
        ("Host", "proxy"),
        ("Connection", "keep-alive, X-Foo"),
        ("X-Foo", "1"),
        ("Keep-Alive", "5"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "10"),
        ("Accept-Encoding", "gzip"),
        ("Authorization", "Bearer client"),
        ("OpenAI-Organization", "org"),
        ("X-Stainless-Retry-Count", "1"),
    )
    out = upstream_request_headers(headers, api_key=None)
    assert dict(out) == {
        "Authorization": "Bearer client",
        "OpenAI-Organization": "org",
        "X-Stainless-Retry-Count": "1",
        "Accept-Encoding": "identity",
    }


def test_configured_key_replaces_client_credentials() -> None:
    out = upstream_request_headers(
        proxy(("Authorization", "Bearer client"), ("api-key", "c")), api_key="sk-server"
    )
    assert out.getall("Authorization") == ["Bearer sk-server"]
    assert "api-key" not in out


def test_a_configured_key_drops_every_credential_header_a_provider_reads() -> None:
    # An Anthropic or Google key sent by the client must not reach the configured provider.
    out = upstream_request_headers(
        proxy(("x-api-key", "sk-ant-client"), ("X-Goog-Api-Key", "g-client")),
        api_key="sk-server",
    )
    assert dict(out) == {"Authorization": "Bearer sk-server", "Accept-Encoding": "identity"}


def test_extra_control_headers_can_be_dropped() -> None:
    out = upstream_request_headers(
        proxy(("X-Prompt-Slug", "s")), None, drop=frozenset({"x-prompt-slug"})
    )
    assert "X-Prompt-Slug" not in out


def test_response_headers_keep_provider_metadata() -> None:
    upstream = proxy(
        ("Content-Type", "application/json"),
        ("Content-Length", "3"),
        ("Connection", "close"),
        ("x-request-id", "req_1"),
        ("openai-processing-ms", "12"),
        ("retry-after-ms", "500"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("Set-Cookie", "a=b"),
    )
    out = client_response_headers(upstream)
    assert "Content-Length" not in out
    assert "Connection" not in out
    for name in (
        "x-request-id",
        "openai-processing-ms",
        "retry-after-ms",
        "x-ratelimit-remaining-tokens",
        "Content-Type",
        "Set-Cookie",
    ):
        assert out[name] == upstream[name]


def test_the_console_session_cookie_never_reaches_a_provider() -> None:
    # A browser logged in to the console on the admin port sends its cookie to the data
    # port of the same host as well (cookies are scoped by host, not port).
    client = CIMultiDictProxy(
        CIMultiDict(
            {"Cookie": "theme=dark; promptproxy_console=abc.def; lang=en", "Authorization": "x"}
        )
    )
    out = upstream_request_headers(client, None)
    assert out.getall("Cookie") == ["theme=dark; lang=en"]

    alone = CIMultiDictProxy(CIMultiDict({"Cookie": "promptproxy_console=abc.def"}))
    assert "Cookie" not in upstream_request_headers(alone, "sk-provider")
