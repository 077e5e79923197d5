"""``ChangeWatch``: has the registry file changed since we last looked, asked without a
thread hop.

Polling the revision row on the store's worker thread five times a second was most of an
idle proxy's CPU (about 3 of 7 ms per second): each poll is a hand-off to the worker and
back, two context switches and a GIL transfer, whatever the query costs. SQLite answers
"did any other connection commit since I last asked?" itself: ``PRAGMA data_version`` on a
connection of our own changes whenever another connection (another process, or the
store's own worker connection) commits. In WAL mode it reads the shared WAL index, not
the file, and with a zero busy timeout it never waits on a lock: about 3 µs, so it runs on
the event loop. A file replaced or deleted under us (a restore, a lost volume) leaves the
connection on the old inode, where nothing changes any more, so each look also compares
the path's inode (about 2 µs).

Any doubt answers "moved": the first look, a different or missing file, an error from
SQLite (a lock held during WAL recovery, a file that is not a database). The caller then
reads the revision on the worker, which knows how to wait, reopen and report.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


class ChangeWatch:
    __slots__ = ("_conn", "_file", "_path", "_version")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None
        self._version: int | None = None

    def moved(self) -> bool:
        """True unless the file is the one seen last time and no commit landed since.

        Call it *before* reading what it guards: a commit between this look and that read
        is in the read, and one after it moves the next look.
        """
        try:
            found = os.stat(self._path)
        except OSError:
            self._drop()
            return True
        file = (found.st_dev, found.st_ino)
        try:
            if self._conn is None or file != self._file:
                self._drop()
                # ``mode=rw``: never create the file; a missing one is the store's to report.
                self._conn = sqlite3.connect(
                    f"{self._path.resolve().as_uri()}?mode=rw",
                    uri=True,
                    timeout=0,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._file = file
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except (sqlite3.Error, OSError):
            self._drop()
            return True
        version = int(row[0])
        moved = version != self._version
        self._version = version
        return moved

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._file = None
        self._version = None
