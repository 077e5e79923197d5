"""The usage ledger on PostgreSQL: one table, a row per (tenant, minute, slug, variant).

A flush is one statement, whatever it holds: the rows go in as column arrays
(``unnest``) and each is ``INSERT ... ON CONFLICT DO UPDATE`` with every counter added to
the stored one under the row's lock, so replicas never read before they write and never
lose an increment. The rows of the statement go in primary-key order: two replicas
flushing the same minutes queue on a row instead of deadlocking.

A write whose ``COMMIT`` went unanswered (``OutcomeUnknown``) is not raised: the caller
would add the rows again and perhaps count them twice; a few seconds of figures are lost
instead. Any other failure raises, and the caller keeps the rows for its next flush.

A read adds the range up in the server (``GROUP BY slug, variant``) and sends back one row
per pair, whatever the range's length.

Minutes past ``keep_days`` are not written, and each replica deletes a bounded batch of
them now and then after a flush (again at the next flush while there is a backlog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from psycopg import AsyncConnection

from proxy.log import APP_LOGGER
from proxy.pg.migrate import Migration
from proxy.pg.session import DEFAULT_TIMEOUT, OutcomeUnknown, Part, PgSession, Pool
from proxy.usage.counts import FIELDS, MINUTE, Totals, UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES, Added

_log = logging.getLogger(APP_LOGGER)

COMPONENT = "tenant_usage"
MIGRATIONS = (
    Migration(
        1,
        "per-tenant usage by minute",
        (
            "CREATE TABLE tenant_usage ("
            " tenant text NOT NULL,"
            " minute bigint NOT NULL,"
            " slug text NOT NULL,"
            " variant text NOT NULL,"
            " requests bigint NOT NULL,"
            " errors bigint NOT NULL,"
            " input_tokens bigint NOT NULL,"
            " output_tokens bigint NOT NULL,"
            " cost_usd float8 NOT NULL,"
            " PRIMARY KEY (tenant, minute, slug, variant))",
            # The purge finds the oldest minutes of every tenant: the key starts with tenant.
            "CREATE INDEX tenant_usage_minute ON tenant_usage (minute)",
        ),
    ),
)
PART = Part(COMPONENT, MIGRATIONS, "the tenant usage ledger")

#: Rows deleted per purge statement (a few hundred milliseconds of work at most), and how
#: often a replica runs it: a minute ages past the keep every minute, with a few rows per
#: tenant, so one batch a minute keeps up; a full batch means a backlog (a lowered
#: ``keep_days``, a long outage) and the next flush purges again.
_PURGE_LIMIT = 10_000
_PURGE_EVERY_SECONDS = 60.0

_KEY = ("tenant", "minute", "slug", "variant")
_COLUMNS = _KEY + FIELDS
_TYPES = ("text", "int8", "text", "text", "int8", "int8", "int8", "int8", "float8")

_ADD = (
    "INSERT INTO tenant_usage AS t ("
    + ", ".join(_COLUMNS)
    + ") SELECT "
    + ", ".join(f"u.{name}" for name in _COLUMNS)
    + " FROM unnest("
    + ", ".join(f"%({name})s::{kind}[]" for name, kind in zip(_COLUMNS, _TYPES, strict=True))
    + ") AS u("
    + ", ".join(_COLUMNS)
    + ") ORDER BY "
    + ", ".join(f"u.{name}" for name in _KEY)
    + " ON CONFLICT ("
    + ", ".join(_KEY)
    + ") DO UPDATE SET "
    + ", ".join(f"{name} = t.{name} + EXCLUDED.{name}" for name in FIELDS)
)
_READ = (
    "SELECT slug, variant, "
    + ", ".join(f"sum({name})" for name in FIELDS)
    + " FROM tenant_usage WHERE tenant = %(tenant)s AND minute >= %(start)s"
    " AND minute < %(end)s"
)
_GROUP = " GROUP BY slug, variant HAVING sum(requests) > 0"
_READ_ALL = _READ + _GROUP
_READ_SLUG = _READ + " AND slug = %(slug)s" + _GROUP
# As ``proxy.pg.session.purge_expired``, by minute: rows another replica is deleting at the
# same moment are skipped, so purges never wait on each other (nor deadlock).
_PURGE = (
    "DELETE FROM tenant_usage WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM tenant_usage WHERE minute < %(oldest)s ORDER BY minute "
    "LIMIT %(limit)s FOR UPDATE SKIP LOCKED))"
)


class PostgresUsageLedger:
    """``UsageLedger`` on PostgreSQL. The pool is the caller's; this part opens nothing."""

    def __init__(
        self,
        pool: Pool,
        *,
        schema: str,
        keep_days: int,
        clock: Callable[[], float] = time.time,
        op_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """No I/O: the table is made by the first call that reaches the server, or with
        the other parts' by the backend (``proxy.pg.session.prepare_together``)."""
        self.session = PgSession(pool, PART, schema=schema, deadline=op_timeout)
        self._keep_minutes = keep_days * DAY_MINUTES
        self._clock = clock
        # On the ledger's clock (the minutes' own), so a clock driven days ahead purges.
        self._purged_at = float("-inf")

    async def add(self, rows: Mapping[UsageKey, UsageCounts]) -> Added:
        now = self._clock()
        oldest = int(now) // MINUTE - self._keep_minutes
        columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        for key, c in rows.items():
            # Older minutes would only be purged again; all-zero rows add nothing.
            if key.minute < oldest or not c.to_fields():
                continue
            values = (key.tenant, key.minute, key.slug, key.variant, *_counters(c))
            for name, value in zip(_COLUMNS, values, strict=True):
                columns[name].append(value)
        if not columns["tenant"]:
            return Added()

        async def run(conn: AsyncConnection[Any]) -> None:
            await conn.execute(_ADD, columns)

        try:
            await self.session.write(run)
        except OutcomeUnknown as exc:
            # Perhaps added: the caller would add the rows again on an error, so they are
            # given up instead. A few seconds lost, never a minute counted twice.
            _log.warning("tenant usage perhaps not added, not sent again: %s", exc)
            return Added(lost=len(columns["tenant"]))
        if now - self._purged_at >= _PURGE_EVERY_SECONDS or now < self._purged_at:
            # A clock set back purges now rather than when it has caught up again.
            self._purged_at = now
            await self._purge(oldest)
        return Added()

    async def _purge(self, oldest: int) -> None:
        async def run(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute(_PURGE, {"oldest": oldest, "limit": _PURGE_LIMIT})
            return cur.rowcount

        try:
            deleted = await self.session.write(run)
        except Exception as exc:
            # The rows are added: any error out of ``add`` now would make the caller add
            # them again. Whatever failed, the next purge tries again.
            _log.warning("tenant usage: minutes past the keep not deleted yet: %s", exc)
            return
        if deleted >= _PURGE_LIMIT:
            self._purged_at = float("-inf")

    async def read(self, tenant: str, start: int, end: int, slug: str | None = None) -> Totals:
        params: dict[str, Any] = {"tenant": tenant, "start": start, "end": end, "slug": slug}
        query = _READ_ALL if slug is None else _READ_SLUG

        async def run(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        rows = await self.session.read(run)
        totals: Totals = {}
        # sum(bigint) is numeric (a Decimal here): int() keeps it exact.
        for row_slug, variant, requests, errors, input_tokens, output_tokens, cost in rows:
            totals[(row_slug, variant)] = UsageCounts(
                requests=int(requests),
                errors=int(errors),
                input_tokens=int(input_tokens),
                output_tokens=int(output_tokens),
                cost_usd=float(cost),
            )
        return totals

    async def close(self) -> None:
        return None  # the pool is the caller's


def _counters(c: UsageCounts) -> tuple[int, int, int, int, float]:
    """In the order of ``FIELDS``."""
    return c.requests, c.errors, c.input_tokens, c.output_tokens, c.cost_usd
