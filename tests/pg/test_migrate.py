"""Schema migrations of the PostgreSQL backend: once per component, concurrent-safe, versioned."""

from __future__ import annotations

import asyncio

import pytest
from psycopg import AsyncConnection

from proxy.pg.connect import connection_kwargs, new_pool
from proxy.pg.migrate import Migration, SchemaTooNew, migrate
from tests.postgres_server import PostgresServer, postgres_server_fixture

postgres_server = postgres_server_fixture("module")

STEPS = (
    Migration(1, "notes", ("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)",)),
    Migration(2, "note authors", ("ALTER TABLE notes ADD COLUMN author text",)),
)


async def _connect(url: str) -> AsyncConnection:
    return await AsyncConnection.connect(url, **connection_kwargs("test"))  # type: ignore[arg-type]


async def test_replicas_starting_together_migrate_once(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    conns = [await _connect(url) for _ in range(4)]
    try:
        versions = await asyncio.gather(
            *(migrate(c, schema="app", component="notes", steps=STEPS) for c in conns)
        )
        assert versions == [2, 2, 2, 2]
        cur = await conns[0].execute(
            "SELECT version FROM app.schema_versions WHERE component = 'notes'"
        )
        assert await cur.fetchone() == (2,)
        # The tables are in the named schema, and a pool bound to it sees them unqualified.
        pool = new_pool(url, schema="app")
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO notes (body, author) VALUES ('hi', 'ann')")
            cur = await conn.execute("SELECT count(*) FROM notes")
            assert await cur.fetchone() == (1,)
        await pool.close()
    finally:
        for c in conns:
            await c.close()


async def test_an_older_schema_is_brought_up_to_date(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    conn = await _connect(url)
    try:
        assert await migrate(conn, schema="app", component="notes", steps=STEPS[:1]) == 1
        await conn.execute("INSERT INTO app.notes (body) VALUES ('kept')")
        assert await migrate(conn, schema="app", component="notes", steps=STEPS) == 2
        cur = await conn.execute("SELECT body, author FROM app.notes")
        assert await cur.fetchall() == [("kept", None)]
    finally:
        await conn.close()


async def test_a_schema_from_a_newer_build_is_refused(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    conn = await _connect(url)
    try:
        await migrate(conn, schema="app", component="notes", steps=STEPS)
        with pytest.raises(SchemaTooNew, match="notes version 2; this promptproxy knows up to 1"):
            await migrate(conn, schema="app", component="notes", steps=STEPS[:1])
    finally:
        await conn.close()


def test_schema_names_are_checked() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        new_pool("postgresql://x/y", schema='bad"; DROP')
