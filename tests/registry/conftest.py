"""Fixtures for the registry store tests: the same contract runs against both stores.

``store_factory`` opens more instances on the *same* backend (same SQLite file, or same
redis-server and key prefix), which is how "another replica" is simulated.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import PromptStore
from tests.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture("module")
fresh_redis_server = redis_server_fixture("function")


class StoreFactory:
    def __init__(self, kind: str, *, db_path: Path | None = None, redis_url: str = "") -> None:
        self.kind = kind
        self.db_path = db_path
        self.redis_url = redis_url
        # A fresh prefix per test isolates tests sharing one redis-server, and proves every
        # key honours the prefix.
        self.prefix = f"test-{uuid.uuid4().hex[:8]}:"
        self._opened: list[PromptStore] = []

    @property
    def location(self) -> str:
        """Where the backend is, for a subprocess: the file path or the Redis URL."""
        return str(self.db_path) if self.kind == "embedded" else self.redis_url

    async def new(self) -> PromptStore:
        store: PromptStore
        if self.kind == "embedded":
            assert self.db_path is not None
            store = await EmbeddedStore.open(self.db_path)
        else:
            store = RedisStore.from_url(self.redis_url, prefix=self.prefix)
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture(params=["embedded", "redis"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    if request.param == "embedded":
        # A nested path: the store must create missing parent directories.
        factory = StoreFactory("embedded", db_path=tmp_path / ".promptproxy" / "registry.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        factory = StoreFactory("redis", redis_url=server.url)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def store(store_factory: StoreFactory) -> PromptStore:
    return await store_factory.new()
