"""Versioned schema migrations for the PostgreSQL backend, one version line per component.

Each part of the backend (the registry, the fleet board, the analysis tables, ...) owns its
tables and their migrations, so parts can evolve without one shared list. The applied
version of every component is a row of ``schema_versions``. Replicas that start together
serialise on a transaction-scoped advisory lock, so a migration runs once; a database
written by a newer promptproxy (a version above what this build knows) is refused rather
than misread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

#: One lock for every migration of every schema: migrations are rare and short.
_LOCK_KEY = 0x70726F6D  # "prom"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


class SchemaTooNew(Exception):
    """The database holds a schema version this build does not know."""


async def migrate(
    conn: AsyncConnection, *, schema: str, component: str, steps: Sequence[Migration]
) -> int:
    """Bring ``component`` in ``schema`` up to the last of ``steps``; its version after."""
    for index, step in enumerate(steps, start=1):
        if step.version != index:
            raise ValueError(f"{component} migrations must be numbered 1..n in order")
    target = len(steps)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_versions ("
                " component text PRIMARY KEY,"
                " version integer NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema))
        )
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_versions WHERE component = %s").format(
                sql.Identifier(schema)
            ),
            (component,),
        )
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > target:
            raise SchemaTooNew(
                f"the PostgreSQL schema {schema!r} holds {component} version {current}; this "
                f"promptproxy knows up to {target}: upgrade promptproxy, or use another schema"
            )
        if current == target:
            return current
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for step in steps[current:]:
            for statement in step.statements:
                await conn.execute(statement.encode())
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.schema_versions (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, "
                "applied_at = now()"
            ).format(sql.Identifier(schema)),
            (component, target),
        )
    return target
