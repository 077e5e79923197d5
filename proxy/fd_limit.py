"""The open-file budget: every client connection and every upstream connection is a file
descriptor, and Python, unlike Go, never raises its soft limit (often 1,024) itself."""

from __future__ import annotations

import logging

from proxy.config import ProxyConfig
from proxy.log import APP_LOGGER

_log = logging.getLogger(APP_LOGGER)
#: Descriptors besides the connections: listeners, store, log, Redis, loop internals.
BASE_BUDGET = 256


def needed(config: ProxyConfig) -> int:
    """A full pool means that many client connections too, plus the shadow pool."""
    return 2 * config.upstream.max_connections + config.shadow.max_connections + BASE_BUDGET


def raise_soft_limit(config: ProxyConfig) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn if the budget still does not
    fit. Returns the soft limit in force (0 where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    budget = needed(config)
    if soft != resource.RLIM_INFINITY and soft < budget:
        _log.warning(
            "open-file limit %d is below the %d descriptors a full upstream pool needs "
            "(2 x upstream.max_connections + shadow.max_connections + %d): raise `ulimit -n` "
            "or lower upstream.max_connections",
            soft,
            budget,
            BASE_BUDGET,
        )
    return int(soft)
