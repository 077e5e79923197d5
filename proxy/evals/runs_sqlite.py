"""The eval runs of the embedded store: a SQLite file beside the registry database
(``registry.db`` -> ``registry.evals.db``), as the usage ledger has its own.

Its own file: a run's detail (up to 2 MiB) is never written inside the registry's
transactions, and the registry's backup and restore are not about runs. One connection,
opened on first use and used only on one worker thread, so the event loop never blocks on
the disk; WAL and a busy timeout, so the processes of one machine may share the file.

One table, ``eval_runs``: a row per run with the columns a listing selects and orders on
(slug, candidate, finished_at, id), the run without its detail as JSON (``head``) and the
detail as JSON (``detail``), which only ``get`` reads. An add is one ``BEGIN IMMEDIATE``
transaction: the insert (``OR IGNORE``: idempotent on id) and the deletion of the slug's
runs past ``keep_runs``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypeVar

from proxy.evals.runs import (
    DEFAULT_KEEP_RUNS,
    DEFAULT_MAX_DETAIL_BYTES,
    EvalRun,
    EvalRunsUnavailable,
    RunList,
    check_limit,
    check_store_options,
    decode_run,
    encode_run,
)
from proxy.registry.sqlite_worker import SqliteWorker

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS eval_runs ("
    " id TEXT PRIMARY KEY, slug TEXT NOT NULL, candidate INTEGER NOT NULL,"
    " finished_at REAL NOT NULL, head BLOB NOT NULL, detail BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS eval_runs_slug ON eval_runs (slug, finished_at, id)",
    "CREATE INDEX IF NOT EXISTS eval_runs_candidate"
    " ON eval_runs (slug, candidate, finished_at, id)",
)
_ADD = (
    "INSERT OR IGNORE INTO eval_runs (id, slug, candidate, finished_at, head, detail)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_TRIM = (
    "DELETE FROM eval_runs WHERE slug = ? AND id IN (SELECT id FROM eval_runs WHERE slug = ?"
    " ORDER BY finished_at DESC, id DESC LIMIT -1 OFFSET ?)"
)
_ORDER = " ORDER BY finished_at DESC, id DESC LIMIT ?"


def evals_path(registry_db: Path) -> Path:
    return registry_db.with_name(f"{registry_db.stem}.evals{registry_db.suffix or '.db'}")


class SqliteEvalRunStore:
    def __init__(
        self,
        path: Path,
        *,
        keep_runs: int = DEFAULT_KEEP_RUNS,
        max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
        busy_timeout: float = 5.0,
    ) -> None:
        """Cheap: the file is opened (and created) by the first call, on the worker."""
        check_store_options(keep_runs, max_detail_bytes)
        self._keep_runs = keep_runs
        self._max_detail_bytes = max_detail_bytes
        self._worker = SqliteWorker(
            path, _SCHEMA, EvalRunsUnavailable, what="eval runs", busy_timeout=busy_timeout
        )

    async def add(self, run: EvalRun) -> None:
        encoded = encode_run(run, max_detail_bytes=self._max_detail_bytes)
        row = (run.id, run.slug, run.candidate, run.finished_at, encoded.head, encoded.detail)
        trim = (run.slug, run.slug, self._keep_runs)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_ADD, row)
                conn.execute(_TRIM, trim)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._worker.run(write)

    async def get(self, run_id: str) -> EvalRun | None:
        def read(conn: sqlite3.Connection) -> tuple[bytes, bytes] | None:
            found = conn.execute(
                "SELECT head, detail FROM eval_runs WHERE id = ?", (run_id,)
            ).fetchone()
            return None if found is None else (found[0], found[1])

        found = await self._worker.run(read)
        return None if found is None else decode_run(*found)

    async def list(self, slug: str, *, candidate: int | None = None, limit: int = 50) -> RunList:
        check_limit(limit)
        params: tuple[object, ...]
        if candidate is None:
            query, params = "SELECT head FROM eval_runs WHERE slug = ?" + _ORDER, (slug, limit)
        else:
            query = "SELECT head FROM eval_runs WHERE slug = ? AND candidate = ?" + _ORDER
            params = (slug, candidate, limit)

        def read(conn: sqlite3.Connection) -> list[bytes]:
            return [head for (head,) in conn.execute(query, params)]

        return [decode_run(head) for head in await self._worker.run(read)]

    async def close(self) -> None:
        """Close the file after every call already queued. Idempotent."""
        await self._worker.close()
