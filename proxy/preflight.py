"""What `serve` checks before it says it is ready, and the one-line errors it stops with.

A busy port or an upstream nobody listens on is a setup mistake. The operator gets one line
naming what failed and the setting to change, and the process exits 1; not a traceback,
and not a "ready" proxy that answers every request with 502.

Whether an unreachable upstream stops the start is `upstream.check_at_start`:

- ``auto`` (default): fatal when the upstream is on this machine (a loopback address, or the
  bundled simulator): nothing outside the process can fix that, it is the wrong port or a
  provider that was not started. A remote provider that does not answer only logs a warning:
  a provider blip while a fleet restarts must not crash-loop every replica, and requests
  get 502 until it answers, exactly as if the blip had come a minute later.
- ``fail``: fatal for any upstream. ``warn``: never fatal. ``off``: no probe.

The probe is one TCP connect (no request, so no key and no cost), bounded by
`upstream.connect_timeout_seconds` and at most `PROBE_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from urllib.parse import urlsplit

from proxy.config import ProxyConfig, TokenGrant, is_local_host, url_port
from proxy.log import APP_LOGGER

_log = logging.getLogger(APP_LOGGER)

PROBE_TIMEOUT_S = 3.0
#: Below this, an admin token is guessable: nothing else slows a guesser down (the admin
#: API and the console's login answer a wrong token at once, by design: docs/console.md).
WEAK_TOKEN_CHARS = 16


class StartupError(Exception):
    """The proxy cannot start; the message is one line for the operator."""


def listen_error(what: str, setting: str, host: str, port: int, exc: OSError) -> StartupError:
    """A listener that could not bind, as one line naming the setting to change."""
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is already in use (another promptproxy, or another program)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "that address is not on this machine"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    else:
        reason = exc.strerror or str(exc)
    return StartupError(f"cannot listen on {host}:{port} for the {what} ({setting}): {reason}")


async def _connect(host: str, port: int, within: float) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {within:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    # We only wanted to know it accepts; a reset on close says nothing more.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _fatal(config: ProxyConfig, host: str) -> bool:
    mode = config.upstream.check_at_start
    if mode == "fail":
        return True
    return mode == "auto" and is_local_host(host)


async def check_upstream(config: ProxyConfig) -> None:
    """Probe each provider once; raise ``StartupError`` when that is fatal (see the
    module)."""
    upstream = config.upstream
    if upstream.check_at_start == "off":
        return
    timeout = min(upstream.connect_timeout_seconds, PROBE_TIMEOUT_S)
    providers = config.provider_list()
    places = [(urlsplit(p.base_url).hostname or "", url_port(p.base_url)) for p in providers]
    # At once: a start-up waits for the slowest probe, not for their sum.
    reasons = await asyncio.gather(*(_connect(host, port, timeout) for host, port in places))
    for provider, (host, port), reason in zip(providers, places, reasons, strict=True):
        if reason is None:
            continue
        where = (
            f"provider {provider.name} ({provider.base_url})"
            if config.providers
            else f"upstream {provider.base_url}"
        )
        check = (
            f"providers[{provider.name}].base_url"
            if config.providers
            else "upstream.base_url (or --upstream)"
        )
        message = (
            f"{where} is unreachable ({host}:{port}: {reason}); "
            f"check {check}, or that the provider is running"
        )
        if _fatal(config, host):
            raise StartupError(message)
        _log.warning(
            "%s; serving anyway (upstream.check_at_start: %s)", message, upstream.check_at_start
        )


def warn_weak_tokens(grants: tuple[TokenGrant, ...]) -> None:
    """One warning per admin token short enough to guess; its name and length, never it.

    A warning, not a refusal: the README's first run uses a short placeholder."""
    for grant in grants:
        if len(grant.token) < WEAK_TOKEN_CHARS:
            _log.warning(
                "admin token %r is %d characters long: the admin API and the console's login "
                "are guarded by its length alone; use at least 32 random characters "
                "(e.g. `openssl rand -hex 32`)",
                grant.name,
                len(grant.token),
            )
