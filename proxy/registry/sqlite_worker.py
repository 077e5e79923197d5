"""``SqliteWorker``: one SQLite file beside the embedded registry, used from the event loop.

One connection, opened on first use and used only on one worker thread, so the event loop
never blocks on the disk; WAL and a busy timeout, so the processes of one machine may share
the file. A failed call drops the connection (the next call opens a new one) and raises the
store's own "unavailable" error; integrity and programming errors are bugs and pass
through as they are. The embedded stores of eval runs and captured calls share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.registry.embedded_schema import enable_wal

T = TypeVar("T")


class SqliteWorker:
    def __init__(
        self,
        path: Path,
        schema: Sequence[str],
        unavailable: Callable[[str], Exception],
        *,
        what: str,
        busy_timeout: float = 5.0,
    ) -> None:
        """Cheap: the file is opened (and created) by the first call, on the worker.
        ``what`` names the store in errors and the worker thread."""
        self.path = path
        self._schema = tuple(schema)
        self._unavailable = unavailable
        self._what = what
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=what)
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._closed = False

    # -- on the worker thread -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: writes issue BEGIN IMMEDIATE themselves.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            try:
                enable_wal(conn, self._busy_timeout)
                for statement in self._schema:
                    conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _on_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug in the store, not an unavailable one
        except (sqlite3.Error, OSError) as exc:
            self._drop()  # a new connection on the next call
            raise self._unavailable(f"{self._what} database {self.path}: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- on the event loop ----------------------------------------------------------------

    def check_open(self) -> None:
        if self._closed:
            raise self._unavailable(f"{self.path}: the {self._what} store is closed")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the worker thread."""
        self.check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_worker, fn)

    async def close(self) -> None:
        """Close the connection on the worker, after every call already queued. Idempotent."""
        if self._closed:
            return
        self._closed = True
        closed = self._executor.submit(self._drop)
        self._executor.shutdown(wait=False)
        await asyncio.shield(asyncio.wrap_future(closed))
