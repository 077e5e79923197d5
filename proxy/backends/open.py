"""``open_backend``: the backend `registry.store` names, with every part opened."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from proxy.backends.base import Backend, BackendContext, Opener
from proxy.config import Settings, backend_problems
from proxy.preflight import StartupError
from proxy.shadow.metrics import ShadowMetrics


async def open_backend(
    settings: Settings,
    *,
    replica: str,
    pair_metrics: ShadowMetrics | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Backend:
    """Open every part of the configured backend; close it with ``Backend.close``.

    ``pair_metrics`` and ``on_error`` default to counters nobody reads (tools, tests).
    Raises ``StartupError`` (one line) for a combination the backend cannot serve (already
    refused by ``load_config``; checked again for settings built another way).
    """
    config = settings.config
    problems = backend_problems(config)
    if problems:
        raise StartupError("; ".join(problems))
    kind = config.registry.backend
    module = importlib.import_module(kind.module)
    opener: Opener = module.open_backend
    context = BackendContext(
        replica=replica,
        pair_metrics=pair_metrics or ShadowMetrics(CollectorRegistry(auto_describe=True)),
        on_error=on_error or _ignore,
    )
    return await opener(settings, context)


def _ignore(op: str) -> None:
    return None
