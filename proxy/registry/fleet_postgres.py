"""The fleet board in PostgreSQL: one row per replica in ``fleet_replicas`` (component
``fleet``, in the deployment's schema), its report as JSON and the server's time of its
last heartbeat.

Heartbeats are stamped by the server's clock (``clock_timestamp()``), so ages compare across
machines whatever their clocks say. Each heartbeat is one short transaction: an upsert of
its row, and the rows of replicas gone for ``forget_seconds`` dropped. A beat never waits
on a registry write (they lock another table's row) nor on another replica's beat (rows
another beat is dropping are skipped).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from proxy.pg.connect import check_schema_name
from proxy.pg.migrate import Migration
from proxy.pg.session import Part, PgSession, PostgresUnavailable
from proxy.registry.fleet import BoardRead, FleetError, ReplicaBeat

T = TypeVar("T")

COMPONENT = "fleet"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "fleet board",
        (
            """CREATE TABLE fleet_replicas (
                replica text PRIMARY KEY,
                info text NOT NULL,
                beat_at timestamptz NOT NULL
            )""",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the fleet board")


class PostgresBoard:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        schema: str,
        forget_seconds: float,
        op_timeout: float = 1.5,
    ) -> None:
        """No I/O: use ``open``, which also brings the table up to date."""
        check_schema_name(schema)
        self._forget_seconds = forget_seconds
        self.session = PgSession(
            pool,
            PART,
            schema=schema,
            deadline=op_timeout,
            what=f"the fleet board (schema {schema})",
        )

    @classmethod
    async def open(
        cls,
        pool: AsyncConnectionPool,
        *,
        schema: str,
        forget_seconds: float = 3600.0,
        op_timeout: float = 1.5,
    ) -> PostgresBoard:
        """The board on ``pool`` (connections bound to ``schema``); runs its migrations (at
        the first call that reaches the server, if it cannot be reached now).
        ``SchemaTooNew`` if a newer promptproxy wrote the schema; ``FleetError`` if the
        server refuses (permissions, a wrong database)."""
        board = cls(pool, schema=schema, forget_seconds=forget_seconds, op_timeout=op_timeout)
        try:
            await board.session.prepare()
        except PostgresUnavailable as exc:
            raise FleetError(str(exc)) from exc
        return board

    async def publish(self, beat: ReplicaBeat) -> None:
        async def write(conn: AsyncConnection) -> None:
            await conn.execute(
                "INSERT INTO fleet_replicas (replica, info, beat_at) "
                "VALUES (%s, %s, clock_timestamp()) "
                "ON CONFLICT (replica) DO UPDATE "
                "SET info = EXCLUDED.info, beat_at = EXCLUDED.beat_at",
                (beat.replica, beat.to_json().decode()),
            )
            await conn.execute(
                "DELETE FROM fleet_replicas WHERE replica = ANY(ARRAY("
                "SELECT replica FROM fleet_replicas "
                "WHERE beat_at < clock_timestamp() - make_interval(secs => %s) "
                "FOR UPDATE SKIP LOCKED))",
                (self._forget_seconds,),
            )

        await self._call(self.session.write(write))

    async def read(self) -> BoardRead:
        async def read(conn: AsyncConnection) -> tuple[float, list[tuple[str, float]]]:
            cur = await conn.execute(
                "SELECT info, extract(epoch FROM beat_at)::float8 FROM fleet_replicas"
            )
            rows = await cur.fetchall()
            # The clock after the rows: no entry reads as beaten in the future.
            cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
            now = await cur.fetchone()
            assert now is not None
            return float(now[0]), [(str(info), float(at)) for info, at in rows]

        now, rows = await self._call(self.session.read(read))
        entries = []
        for info, at in rows:
            beat = ReplicaBeat.from_json(info)
            if beat is not None:
                entries.append((beat, at))
        return BoardRead(now, entries)

    async def remove(self, replica: str) -> None:
        async def delete(conn: AsyncConnection) -> None:
            await conn.execute("DELETE FROM fleet_replicas WHERE replica = %s", (replica,))

        await self._call(self.session.write(delete))

    async def close(self) -> None:
        """The pool belongs to whoever made it."""

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await call
        except PostgresUnavailable as exc:
            raise FleetError(str(exc)) from exc
