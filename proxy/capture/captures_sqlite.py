"""The captures of the embedded store: a SQLite file beside the registry database
(``registry.db`` -> ``registry.captures.db``), as the usage ledger and the eval runs have
their own.

Its own file: captures are written by a background flush many times a minute, never inside
the registry's transactions, and the registry's backup and restore are not about them. One
connection, opened on first use and used only on one worker thread, so the event loop
never blocks on the disk; WAL and a busy timeout, so the processes of one machine may share
the file.

One table, ``captures``: a row per capture with the columns a read selects and orders on
(slug, at, id) and the capture itself as JSON (``data``). An add is one ``BEGIN IMMEDIATE``
transaction, so a batch is written whole or not at all: the inserts (``OR IGNORE``:
idempotent on id), the deletion of every capture past ``keep_hours`` (any slug's: a slug no
longer captured is emptied by the next add of another) and of each added slug's captures
past ``keep_per_slug``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from proxy.capture.records import (
    DEFAULT_KEEP_HOURS,
    DEFAULT_KEEP_PER_SLUG,
    DEFAULT_MAX_BYTES,
    Capture,
    CaptureList,
    CapturesUnavailable,
    check_read,
    check_store_options,
    decode,
    encode_batch,
    expired_before,
)
from proxy.registry.sqlite_worker import SqliteWorker

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS captures ("
    " id TEXT PRIMARY KEY, slug TEXT NOT NULL, at REAL NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS captures_slug ON captures (slug, at, id)",
    # For the deletion of expired captures of every slug.
    "CREATE INDEX IF NOT EXISTS captures_at ON captures (at)",
)
_ADD = "INSERT OR IGNORE INTO captures (id, slug, at, data) VALUES (?, ?, ?, ?)"
_EXPIRE = "DELETE FROM captures WHERE at < ?"
_TRIM = (
    "DELETE FROM captures WHERE slug = ? AND id IN (SELECT id FROM captures WHERE slug = ?"
    " ORDER BY at DESC, id DESC LIMIT -1 OFFSET ?)"
)
_READ = "SELECT data FROM captures WHERE slug = ? AND at >= ? AND at < ? ORDER BY at, id LIMIT ?"
_COUNT = "SELECT count(*) FROM captures WHERE slug = ? AND at >= ?"


def captures_path(registry_db: Path) -> Path:
    return registry_db.with_name(f"{registry_db.stem}.captures{registry_db.suffix or '.db'}")


class SqliteCaptureStore:
    def __init__(
        self,
        path: Path,
        *,
        keep_per_slug: int = DEFAULT_KEEP_PER_SLUG,
        keep_hours: float = DEFAULT_KEEP_HOURS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Cheap: the file is opened (and created) by the first call, on the worker.
        ``clock`` is what retention by age reads (tests pass their own)."""
        check_store_options(keep_per_slug, keep_hours, max_bytes)
        self._keep_per_slug = keep_per_slug
        self._keep_hours = keep_hours
        self._max_bytes = max_bytes
        self._clock = clock
        self._worker = SqliteWorker(
            path, _SCHEMA, CapturesUnavailable, what="captures", busy_timeout=busy_timeout
        )

    def _oldest_kept(self) -> float:
        return expired_before(self._clock(), self._keep_hours)

    async def add(self, captures: Sequence[Capture]) -> None:
        encoded = encode_batch(captures, max_bytes=self._max_bytes)
        # A closed store refuses before the batch is checked further.
        self._worker.check_open()
        if not encoded:
            return
        oldest = self._oldest_kept()
        rows = [
            (e.capture.id, e.capture.slug, e.capture.at, e.data)
            for e in encoded
            if e.capture.at >= oldest
        ]
        slugs = sorted({e.capture.slug for e in encoded})

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_ADD, rows)
                conn.execute(_EXPIRE, (oldest,))
                for slug in slugs:
                    conn.execute(_TRIM, (slug, slug, self._keep_per_slug))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._worker.run(write)

    async def read(
        self, slug: str, *, since: float, until: float | None = None, limit: int = 1000
    ) -> CaptureList:
        check_read(since, until, limit)
        params = (
            slug,
            max(since, self._oldest_kept()),
            float("inf") if until is None else until,
            limit,
        )

        def read(conn: sqlite3.Connection) -> list[bytes]:
            return [data for (data,) in conn.execute(_READ, params)]

        return [decode(data) for data in await self._worker.run(read)]

    async def count(self, slug: str, *, since: float) -> int:
        check_read(since, None, 1)
        params = (slug, max(since, self._oldest_kept()))

        def count(conn: sqlite3.Connection) -> int:
            (found,) = conn.execute(_COUNT, params).fetchone()
            return int(found)

        return await self._worker.run(count)

    async def close(self) -> None:
        """Close the file after every call already queued. Idempotent."""
        await self._worker.close()
