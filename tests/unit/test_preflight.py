"""Which unreachable upstream stops the start (`upstream.check_at_start`), without sockets:
the probe's answer is given."""

from __future__ import annotations

import logging

import pytest

from proxy import preflight
from proxy.config import TokenGrant, is_local_host
from proxy.log import APP_LOGGER
from tests.support import make_settings


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("api.openai.com", False),
        ("10.0.0.7", False),
    ],
)
def test_local_hosts(host: str, local: bool) -> None:
    assert is_local_host(host) is local


async def _refused(host: str, port: int, within: float) -> str:
    return "Connection refused"


@pytest.mark.parametrize(
    ("base_url", "mode", "fatal"),
    [
        ("http://127.0.0.1:9/v1", "auto", True),  # the wrong port on this machine
        ("https://api.openai.com/v1", "auto", False),  # a provider blip: start anyway
        ("https://api.openai.com/v1", "fail", True),
        ("http://127.0.0.1:9/v1", "warn", False),
    ],
)
async def test_an_unreachable_upstream_stops_the_start_only_when_fatal(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    base_url: str,
    mode: str,
    fatal: bool,
) -> None:
    monkeypatch.setattr(preflight, "_connect", _refused)
    config = make_settings(
        **{"upstream.base_url": base_url, "upstream.check_at_start": mode}
    ).config
    if fatal:
        with pytest.raises(preflight.StartupError, match="is unreachable"):
            await preflight.check_upstream(config)
    else:
        with caplog.at_level(logging.WARNING):
            await preflight.check_upstream(config)
        assert "serving anyway" in caplog.text


async def test_off_does_not_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(host: str, port: int, within: float) -> str:
        raise AssertionError("probed")

    monkeypatch.setattr(preflight, "_connect", never)
    config = make_settings(
        **{"upstream.base_url": "http://127.0.0.1:9/v1", "upstream.check_at_start": "off"}
    ).config
    await preflight.check_upstream(config)


def test_a_guessable_admin_token_is_warned_about_by_name_never_by_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    short, strong = "change-me", "0123456789abcdef0123456789abcdef"
    with caplog.at_level(logging.WARNING, logger=APP_LOGGER):
        preflight.warn_weak_tokens(
            (TokenGrant("admin", short, "admin"), TokenGrant("ci", strong, "admin"))
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "'admin' is 9 characters long" in lines[0]
    assert short not in lines[0]
