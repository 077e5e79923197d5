"""The fleet board for the embedded store: a small SQLite file beside the registry database
(``registry.db`` -> ``registry.fleet.db``), shared by the processes of one machine.

Its own file, so heartbeats (one write per process per second) never queue with registry
writes for the database lock. Each call opens its own connection on a worker thread: a
handful of calls a second, and no connection is ever shared between threads. A file that
disappears (a lost volume, a deleted file) is created again by the next call.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from proxy.registry.fleet import BoardRead, FleetError, ReplicaBeat

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet (
    replica TEXT PRIMARY KEY,
    info    TEXT NOT NULL,
    beat_at REAL NOT NULL
)
"""


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
        self._path = path
        self._forget = forget_seconds
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        if self._ready and not self._path.exists():
            self._ready = False  # deleted since: make it again
        if not self._ready:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        if not self._ready:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._ready = True
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()
        try:
            return fn(conn)
        finally:
            conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                try:
                    return self._call(fn)
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    # Replaced under us by an empty file (another process got to it first,
                    # or it was deleted and made again between the check and the open).
                    self._ready = False
                    return self._call(fn)
            except (sqlite3.Error, OSError) as exc:
                raise FleetError(f"{self._path}: {exc}") from None

        return await asyncio.to_thread(call)

    async def publish(self, beat: ReplicaBeat) -> None:
        now = self._clock()

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(
                    "INSERT INTO fleet (replica, info, beat_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (replica) DO UPDATE SET info = excluded.info, "
                    "beat_at = excluded.beat_at",
                    (beat.replica, beat.to_json().decode(), now),
                )
                conn.execute("DELETE FROM fleet WHERE beat_at < ?", (now - self._forget,))

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
            with conn:
                conn.execute("DELETE FROM fleet WHERE replica = ?", (replica,))

        await self._run(delete)

    async def close(self) -> None:
        """Nothing is held open between calls."""
