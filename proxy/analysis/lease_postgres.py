"""The analysis lease on PostgreSQL: one row per prompt key with its holder and an expiry
(the ``slug`` column holds the key's text, as the Redis lease's name does).

A row, not a session advisory lock, because the Redis lease's behaviour is the yardstick
and a session lock is tied to a connection, not to a replica that is alive and ticking:

- **A SIGSTOPped (frozen) holder.** Its connection stays open and the kernel keeps
  answering for it, so a session lock would stay held for as long as the process is
  stopped (hours, until TCP keepalives give up): no analysis at all. A row expires
  ``lease_seconds`` after the last renewal, as the Redis key does, and the frozen replica,
  back, finds the lease taken (the analyser asks again before it acts).
- **A killed connection** (``pg_terminate_backend``, a restart, a proxy in front of the
  server recycling connections) would release a session lock at once while its holder still
  believes it leads until it next looks: two leaders. A row does not care which connection
  renews it: the holder renews on a fresh pooled connection at its next tick and keeps it.
- **Pool economy.** A session lock needs a connection kept out of the pool for the whole
  lease; a row is one short statement per tick on any pooled connection.
- **SIGKILL and SIGTERM** behave as with Redis: the row outlives a killed holder by
  ``lease_seconds``; a replica stopping gracefully deletes its row and another takes over at
  its next tick (0.5 s).

Expiry is judged by the server's clock (``clock_timestamp()``), as Redis judges its keys',
so clock skew between replicas never makes two holders. Take-or-renew is one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement: the row lock makes concurrent
attempts queue, and exactly one of them sees the row free.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from proxy.pg.migrate import Migration
from proxy.pg.session import Part, PgSession, Pool
from proxy.prompt_key import PromptKey

COMPONENT = "analysis_lease"
#: A renewal is one short statement: past a second the server is in trouble, and the
#: analyser's tick (0.5 s) should learn it rather than wait.
LEASE_CALL_TIMEOUT = 1.0
MIGRATIONS = (
    Migration(
        1,
        "analysis leases",
        (
            "CREATE TABLE analysis_leases ("
            " slug text PRIMARY KEY,"
            " holder text NOT NULL,"
            " expires_at timestamptz NOT NULL)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the analysis lease")

_HOLD = (
    "INSERT INTO analysis_leases AS l (slug, holder, expires_at) "
    "VALUES (%(slug)s, %(holder)s, clock_timestamp() + %(ms)s * interval '1 millisecond') "
    "ON CONFLICT (slug) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at "
    "WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp() "
    "RETURNING holder"
)
_HOLDER = "SELECT holder FROM analysis_leases WHERE slug = %s AND expires_at > clock_timestamp()"
_RELEASE = "DELETE FROM analysis_leases WHERE slug = %s AND holder = %s"


class PostgresLease:
    """``Lease`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        replica: str,
        seconds: float,
        op_timeout: float = LEASE_CALL_TIMEOUT,
    ) -> None:
        """``seconds``: ``analysis.lease_seconds``. ``op_timeout`` bounds every call (keep it well
        under ``seconds``: a renewal that comes back later than that is moot). No I/O: the table is
        made by the first call that reaches the server, or with the other parts' by the backend
        (``proxy.pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._replica = replica
        self._ms = int(seconds * 1000)

    @property
    def replica(self) -> str:
        return self._replica

    async def hold(self, key: PromptKey) -> bool:
        params = {"slug": key.text, "holder": self._replica, "ms": self._ms}

        async def run(conn: AsyncConnection[Any]) -> bool:
            cur = await conn.execute(_HOLD, params)
            return await cur.fetchone() is not None

        return await self.session.write(run)

    async def holder(self, key: PromptKey) -> str | None:
        async def run(conn: AsyncConnection[Any]) -> str | None:
            cur = await conn.execute(_HOLDER, (key.text,))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self.session.read(run)

    async def release(self, key: PromptKey) -> None:
        async def run(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_RELEASE, (key.text, self._replica))

        await self.session.write(run)

    async def close(self) -> None:
        return None
