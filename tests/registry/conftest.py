"""Fixtures for the registry store tests: the same contract runs against every store.

``store_factory`` opens more instances on the *same* backend (same SQLite file, same
redis-server and key prefix, or same PostgreSQL database and schema), which is how "another
replica" is simulated.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.redis_store import RedisStore
from proxy.registry.store import PromptStore
from tests.postgres_server import PostgresServer, postgres_server_fixture
from tests.redis_server import RedisServer, redis_server_fixture
from tests.registry.pg_stores import open_store

redis_server = redis_server_fixture("module")
fresh_redis_server = redis_server_fixture("function")
# One server for the whole registry suite (starting one takes a second or two); each test
# works in a schema of its own in one database.
registry_postgres_server = postgres_server_fixture("session")
fresh_postgres_server = postgres_server_fixture("function")


@pytest.fixture(scope="session")
def registry_postgres_url(registry_postgres_server: PostgresServer) -> str:
    return registry_postgres_server.new_database()


class StoreFactory:
    def __init__(
        self,
        kind: str,
        *,
        db_path: Path | None = None,
        redis_url: str = "",
        postgres_url: str = "",
    ) -> None:
        self.kind = kind
        self.db_path = db_path
        self.redis_url = redis_url
        self.postgres_url = postgres_url
        # A fresh prefix (PostgreSQL: schema) per test isolates tests sharing one server,
        # and proves every key (table, channel) honours it.
        if kind == "postgres":
            self.prefix = f"test_{uuid.uuid4().hex[:8]}"
        else:
            self.prefix = f"test-{uuid.uuid4().hex[:8]}:"
        self._opened: list[PromptStore] = []

    @property
    def location(self) -> str:
        """Where the backend is, for a subprocess: the file path or the server URL."""
        if self.kind == "embedded":
            return str(self.db_path)
        return self.postgres_url if self.kind == "postgres" else self.redis_url

    async def new(self) -> PromptStore:
        store: PromptStore
        if self.kind == "embedded":
            assert self.db_path is not None
            store = await EmbeddedStore.open(self.db_path)
        elif self.kind == "postgres":
            store = await open_store(self.postgres_url, self.prefix)
        else:
            store = RedisStore.from_url(self.redis_url, prefix=self.prefix)
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture(params=["embedded", "redis", "postgres"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    if request.param == "embedded":
        # A nested path: the store must create missing parent directories.
        factory = StoreFactory("embedded", db_path=tmp_path / ".promptproxy" / "registry.db")
    elif request.param == "postgres":
        factory = StoreFactory(
            "postgres", postgres_url=request.getfixturevalue("registry_postgres_url")
        )
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
