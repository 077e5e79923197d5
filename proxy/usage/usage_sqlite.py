"""The usage ledger of the embedded store: a SQLite file beside the registry database
(``registry.db`` -> ``registry.usage.db``), so a restart keeps the figures.

Its own file, as the fleet board has: flushes never queue with registry writes for the
database lock. One connection, opened on first use and used only on one worker thread, so
the event loop never blocks on the disk. A flush is one ``BEGIN IMMEDIATE`` transaction of
upserts (all of it or nothing); a read sums in SQLite. Minutes past ``keep_days`` are
deleted now and then after a flush.

The processes of one machine may share the file (a second proxy on the same store, a
tool): WAL and a busy timeout, as for the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.registry.embedded_schema import enable_wal
from proxy.usage.counts import FIELDS, MINUTE, Totals, UsageCounts, UsageKey
from proxy.usage.ledger import DAY_MINUTES, Added

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tenant_usage ("
    " tenant TEXT NOT NULL, minute INTEGER NOT NULL, slug TEXT NOT NULL,"
    " variant TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,"
    " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL,"
    " PRIMARY KEY (tenant, minute, slug, variant)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS tenant_usage_minute ON tenant_usage (minute)",
)
_ADD = (
    "INSERT INTO tenant_usage (tenant, minute, slug, variant, "
    + ", ".join(FIELDS)
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, minute, slug, variant) "
    "DO UPDATE SET " + ", ".join(f"{name} = {name} + excluded.{name}" for name in FIELDS)
)
_READ = (
    "SELECT slug, variant, "
    + ", ".join(f"sum({name})" for name in FIELDS)
    + " FROM tenant_usage WHERE tenant = ? AND minute >= ? AND minute < ?"
)
#: How often a replica deletes minutes past the keep (a few rows per tenant and minute).
_PURGE_EVERY_SECONDS = 600.0


def _values(c: UsageCounts) -> tuple[int, int, int, int, float]:
    return c.requests, c.errors, c.input_tokens, c.output_tokens, c.cost_usd


def usage_path(registry_db: Path) -> Path:
    return registry_db.with_name(f"{registry_db.stem}.usage{registry_db.suffix or '.db'}")


class SqliteUsageLedger:
    def __init__(
        self,
        path: Path,
        *,
        keep_days: int,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        """Cheap: the file is opened (and created) by the first call, on the worker."""
        self._path = path
        self._keep_minutes = keep_days * DAY_MINUTES
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._purged_at = float("-inf")
        self._closed = False

    # -- on the worker thread -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: writes issue BEGIN IMMEDIATE themselves.
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
            try:
                if enable_wal(conn, self._busy_timeout).lower() == "wal":
                    # A lost last flush on a power cut is a few seconds of figures; an fsync
                    # per flush buys nothing more (the file stays consistent in WAL mode).
                    conn.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _on_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.Error:
            self._drop()  # a new connection on the next call
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- on the event loop ----------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise sqlite3.OperationalError(f"{self._path}: the usage ledger is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_worker, fn)

    async def add(self, rows: Mapping[UsageKey, UsageCounts]) -> Added:
        now_minute = int(self._clock()) // MINUTE
        oldest = now_minute - self._keep_minutes
        values = [
            (key.tenant, key.minute, key.slug, key.variant, *_values(c))
            for key, c in rows.items()
            if key.minute >= oldest and c.to_fields()
        ]
        purge = time.monotonic() - self._purged_at > _PURGE_EVERY_SECONDS
        if not values and not purge:
            return Added()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_ADD, values)
                if purge:
                    conn.execute("DELETE FROM tenant_usage WHERE minute < ?", (oldest,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(write)  # one transaction: all of it, or a raise
        if purge:
            self._purged_at = time.monotonic()
        return Added()

    async def read(self, tenant: str, start: int, end: int, slug: str | None = None) -> Totals:
        query, params = _READ, [tenant, start, end]
        if slug is not None:
            query += " AND slug = ?"
            params.append(slug)
        query += " GROUP BY slug, variant"

        def read(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
            return list(conn.execute(query, params))

        totals: Totals = {}
        for row_slug, variant, *sums in await self._run(read):
            counts = UsageCounts.from_fields(dict(zip(FIELDS, sums, strict=True)))  # type: ignore[arg-type]
            if counts.requests:
                totals[(str(row_slug), str(variant))] = counts
        return totals

    async def close(self) -> None:
        """Close the connection on the worker, after every call already queued. Idempotent."""
        if self._closed:
            return
        self._closed = True
        closed = self._executor.submit(self._drop)
        self._executor.shutdown(wait=False)
        await asyncio.shield(asyncio.wrap_future(closed))
