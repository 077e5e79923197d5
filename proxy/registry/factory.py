"""Builds the configured store: `embedded:PATH` or a Redis URL."""

from __future__ import annotations

from pathlib import Path

from proxy.config import RegistryConfig
from proxy.registry.store import PromptStore

EMBEDDED = "embedded:"


async def open_store(config: RegistryConfig) -> PromptStore:
    if config.store.startswith(EMBEDDED):
        from proxy.registry.embedded_store import EmbeddedStore

        return await EmbeddedStore.open(Path(config.store[len(EMBEDDED) :]))
    from proxy.registry.redis_store import RedisStore

    return RedisStore.from_url(config.store, prefix=config.redis_prefix)


def describe_store(config: RegistryConfig) -> str:
    """For logs and /readyz: the store kind and where, without credentials."""
    if config.store.startswith(EMBEDDED):
        return config.store
    scheme, _, rest = config.store.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
