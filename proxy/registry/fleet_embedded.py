"""The fleet board for the embedded store: a small SQLite file beside the registry database
(``registry.db`` -> ``registry.fleet.db``), shared by the processes of one machine.

Its own file, so heartbeats (one write per process per second) never queue with registry
writes for the database lock. One connection, kept open and used only on one dedicated
worker thread, so the event loop never blocks and no connection is shared between threads:
a beat is one small write transaction, not an open, a checkpoint and an unlink (closing the
last connection to a WAL file checkpoints it and deletes the ``-wal`` file). Several
processes share the file: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for writes.

A file that disappears (a lost volume, a deleted file) or is replaced (another file renamed
over it) is noticed by the next call, by its inode changing: it removes the old file's
``-wal`` and ``-shm`` (which would otherwise be read into the new one) and reopens the path,
creating the file and its table again if need be. Errors are ``FleetError``, and the next
call starts with a new connection. ``close`` closes the connection on the worker; after it
every call fails with ``FleetError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.registry.embedded_schema import enable_wal
from proxy.registry.fleet import BoardRead, FleetError, ReplicaBeat

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet (
    replica TEXT PRIMARY KEY,
    info    TEXT NOT NULL,
    beat_at REAL NOT NULL
)
"""
#: WAL pages (4 KB each) after which a commit checkpoints the board into the main file
_WAL_PAGES = 100


def board_path(registry_db: Path) -> Path:
    return registry_db.with_name(f"{registry_db.stem}.fleet{registry_db.suffix or '.db'}")


class EmbeddedFleetBoard:
    def __init__(
        self,
        path: Path,
        forget_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 1.0,
    ) -> None:
        """Cheap: the file is opened (and created) by the first call, on the worker."""
        self._path = path
        self._forget = forget_seconds
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._sidecars: dict[Path, tuple[int, int]] = {}  # its -wal and -shm, the same
        self._closed = False

    # -- on the worker thread -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._file != _file_id(self._path):
            self._drop()  # deleted or replaced under us: this connection writes a lost file
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        before = _file_id(self._path)
        # isolation_level=None: writes issue BEGIN IMMEDIATE themselves (a deferred
        # transaction upgraded to a write can fail at once, without the busy timeout).
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            # Retried: several processes opening a fresh file together (proxy workers
            # starting up) can be refused at once, without the busy timeout.
            mode = enable_wal(conn, self._busy_timeout)
            if mode.lower() == "wal":
                # A heartbeat board: in WAL mode NORMAL skips the fsync per commit (only
                # checkpoints sync) and the file stays consistent on a power cut; what it
                # can lose is the last beats, which the next beat writes again. (Not in a
                # rollback-journal mode, where NORMAL can corrupt on a power cut.)
                conn.execute("PRAGMA synchronous=NORMAL")
                # A beat adds one page to the -wal file, which is not deleted while a
                # connection is open: checkpoint every ~100 beats (of all processes), not
                # the default ~1000, and it stays ~400 KB, not 4 MB.
                conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            conn.execute(_SCHEMA)
            # The file seen before connecting: if the path changed while we connected, the
            # next call sees a difference and reopens. None: the file this connect (or
            # another process a moment before) created, which is there now.
            self._file = before if before is not None else _file_id(self._path)
            self._sidecars = {}
            for suffix in ("-wal", "-shm"):
                sidecar = Path(f"{self._path}{suffix}")
                if (found := _file_id(sidecar)) is not None:
                    self._sidecars[sidecar] = found
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(OSError):
            if self._file != _file_id(self._path):
                # Not the file at the path any more. SQLite closes such a connection
                # without checkpointing and leaves its -wal and -shm files, whose pages the
                # next connection to the path would read as the new file's: remove them
                # if they are still this connection's (checked while it holds them open,
                # so their inode numbers cannot have been reused).
                for sidecar, found in self._sidecars.items():
                    if _file_id(sidecar) == found:
                        sidecar.unlink()
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _on_worker(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            try:
                return fn(self._connection())
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                # The table is gone from the file this connection holds (dropped, or a file
                # made again between the check and the open): reopen, which creates it.
                self._drop()
                return fn(self._connection())
        except (sqlite3.Error, OSError) as exc:
            self._drop()  # start afresh on the next call
            raise FleetError(f"{self._path}: {exc}") from None

    # -- on the event loop ----------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise FleetError(f"{self._path}: the fleet board is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_worker, fn)

    async def publish(self, beat: ReplicaBeat) -> None:
        now = self._clock()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO fleet (replica, info, beat_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (replica) DO UPDATE SET info = excluded.info, "
                    "beat_at = excluded.beat_at",
                    (beat.replica, beat.to_json().decode(), now),
                )
                # In the same transaction: a scan of a handful of rows, no page written
                # unless an entry is forgotten.
                conn.execute("DELETE FROM fleet WHERE beat_at < ?", (now - self._forget,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(write)

    async def read(self) -> BoardRead:
        def read(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            return list(conn.execute("SELECT info, beat_at FROM fleet"))

        rows = await self._run(read)
        now = self._clock()
        entries = []
        for info, beat_at in rows:
            beat = ReplicaBeat.from_json(info)
            if beat is not None:
                entries.append((beat, float(beat_at)))
        return BoardRead(now, entries)

    async def remove(self, replica: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM fleet WHERE replica = ?", (replica,))

        await self._run(delete)

    async def close(self) -> None:
        """Close the connection on the worker, after every call already queued, and let the
        worker end. Idempotent; a later call fails with ``FleetError``."""
        if self._closed:
            return
        self._closed = True
        closed = self._executor.submit(self._drop)
        self._executor.shutdown(wait=False)  # the queued close still runs
        # Shielded: a cancelled shutdown still closes the connection.
        await asyncio.shield(asyncio.wrap_future(closed))


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino
